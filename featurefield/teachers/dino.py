"""The ``dino`` teacher: DINOv2 patch features through timm, at stride 14, for any image size.

The image is resized so its shorter side is ``resolution`` pixels (default 518, the DINOv2 input
size), both sides rounded to whole 14-pixel patches; timm's ``dynamic_img_size`` interpolates the
positional embedding to that grid. Features are the final-norm patch tokens (class and register
tokens dropped), ``[N, D, H'/14, W'/14]``; optionally L2-normalized.

Weights are never downloaded: ``weights=PATH`` (a timm/DINOv2 checkpoint file), or the model's
checkpoint already in the Hugging Face cache, or ``pretrained=None``/``"random"`` for random init.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.errors import FeatureFieldError
from featurefield.teachers.base import PatchGridTeacher, register_teacher
from featurefield.teachers.weights import RANDOM_WEIGHTS_ID, seeded_random_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cached_hub_file(model: str, tag: str | None) -> tuple[str, Path | None]:
    """``(hf_hub_id, cached checkpoint or None)`` for timm model ``model[.tag]``."""
    import timm

    name = f"{model}.{tag}" if tag else model
    cfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        return "", None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return hub, None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub, fname)
        if isinstance(hit, str) and Path(hit).is_file():
            return hub, Path(hit)
    return hub, None


class DinoTeacher(PatchGridTeacher):
    """DINOv2 dense features ``[N, D, h, w]`` at stride 14.

    Args:
        model: timm model name (``vit_small_patch14_dinov2``, ``vit_base_patch14_dinov2``, ...).
        pretrained: ``"auto"`` (the timm default tag, from the local cache), a timm tag, or
            ``None``/``"random"`` for random init.
        weights: checkpoint file (overrides ``pretrained``).
        resolution: shorter image side in pixels fed to the model.
        normalize: L2-normalize each feature vector.
        precision: ``"auto"`` (bf16 autocast on CUDA), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        max_batch: images per forward.
    """

    name = "dino"
    has_text = False

    def __init__(self, model: str = "vit_small_patch14_dinov2", pretrained: str | None = "auto",
                 weights: str | Path | None = None, resolution: int = 518, normalize: bool = False,
                 precision: str = "auto", max_batch: int = 16, device: str | torch.device | None = None) -> None:
        import timm

        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise FeatureFieldError(f"dino: unknown precision {precision!r}")
        if not timm.is_model(model):
            raise FeatureFieldError(f"dino: unknown timm model {model!r}; e.g. vit_small_patch14_dinov2")
        kwargs = dict(num_classes=0, dynamic_img_size=True)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FeatureFieldError(f"{path}: DINO checkpoint not found; pass an existing timm checkpoint file")
            net = timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
            self.weights_id = f"file:{path.resolve()}:{path.stat().st_size}"
        elif pretrained in (None, "", "random", "none"):
            with seeded_random_init():
                net = timm.create_model(model, pretrained=False, **kwargs)
            self.weights_id = RANDOM_WEIGHTS_ID
        else:
            tag = None if pretrained == "auto" else pretrained
            hub, found = _cached_hub_file(model, tag)
            if found is None:
                raise FeatureFieldError(
                    f"dino: weights for {model}{'.' + tag if tag else ''} are not on disk (looked in the Hugging Face "
                    f"cache for {hub or 'no hub id'}); featurefield never downloads at run time: fetch them once with "
                    f"timm.create_model({model!r}, pretrained=True) on a machine with network, or pass weights=PATH"
                )
            net = timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=str(found)), **kwargs)
            self.weights_id = f"{model}/{hub}"
        self.model = net.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model_name = model
        self.patch = int(self.model.patch_embed.patch_size[0])
        self.dim = int(self.model.num_features)
        self.prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        self.resolution, self.normalize, self.precision = int(resolution), bool(normalize), precision
        self.max_batch = max(1, int(max_batch))
        self.device = torch.device("cpu")
        self.calls = 0
        if device is not None:
            self.to(device)

    def settings(self) -> dict:
        prec = "fp32" if self.device.type != "cuda" or self.precision == "fp32" else ("fp16" if self.precision == "fp16" else "bf16")
        return {"name": self.name, "dim": self.dim, "model": self.model_name, "weights": self.weights_id,
                "resolution": self.resolution, "normalize": self.normalize, "precision": prec}

    def patch_tokens(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalized -> ``[B, h * w, D]`` final-norm patch tokens (row-major)."""
        return self.model.forward_features(x)[:, self.prefix:]

    @torch.no_grad()
    def extract(self, images: Tensor) -> Tensor:
        n, _, H, W = images.shape
        rh, rw = self.resized_size(H, W)
        h, w = rh // self.patch, rw // self.patch
        x = images.to(self.device).float()
        if (rh, rw) != (H, W):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "auto": torch.bfloat16}.get(self.precision)
        out = []
        for chunk in x.split(self.max_batch):
            self.calls += 1
            with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=self.device.type == "cuda" and dtype is not None):
                tok = self.patch_tokens(chunk)
            out.append(tok.float().transpose(1, 2).reshape(len(chunk), -1, h, w))
        feats = torch.cat(out)
        return F.normalize(feats, dim=1) if self.normalize else feats

    @classmethod
    def describe(cls, weights=None) -> dict:
        found = None
        try:
            _, found = _cached_hub_file("vit_small_patch14_dinov2", None)
        except Exception:  # timm missing or unusual install: report absent
            pass
        return {"dim": 384, "has_text": False, "weights": found is not None,
                "where": str(found) if found else "not cached (vit_small_patch14_dinov2); pass weights=PATH or pretrained=random"}

    @classmethod
    def fetch_weights(cls, target=None, timeout: float = 600.0):
        raise FeatureFieldError(
            f"featurefield does not download {cls.name} weights; run timm.create_model(MODEL, pretrained=True) once on a machine with "
            "network (it fills the Hugging Face cache, which featurefield reads offline), or pass weights=PATH to a "
            "checkpoint file"
        )


register_teacher("dino")(DinoTeacher)
