"""The ``clip`` teacher: dense per-patch CLIP features from any open_clip ViT (default ViT-L-14-336/openai).

Dense path (F3RM): the image runs through the vision transformer with the positional embedding
resized (bicubic) to the image's patch grid; the patch tokens (class token dropped) go through
``ln_post`` and the projection ``proj`` into the joint image-text space and are L2-normalized.
``dense="maskclip"`` instead takes the last block's value path (MaskCLIP: ``out_proj(v(ln_1(x)))``,
no query-key attention, no residual, no MLP), which localizes better.

Resolution (``tiling``):

* ``"interpolate"`` (default): one pass over the whole image resized so its shorter side is
  ``resolution`` pixels (default: the model's input size, 336), rounded to whole patches. One
  forward; attention cost grows with the square of the token count.
* ``"sliding"``: the same resized image cut into overlapping windows of the model's input size
  (stride half a window); each window runs at the resolution the model was trained at and the
  overlapping features are averaged. More forwards, each at the native size.

Both give the same feature grid ``(round(H' / p), round(W' / p))``; ``bench/teacher_clip.py``
measures their cost.

Weights are never downloaded: ``pretrained`` is an open_clip tag whose checkpoint is already in
open_clip's/Hugging Face's cache, or a checkpoint file (``weights=PATH``); ``pretrained=None`` (or
``"random"``) builds a randomly initialised model of the same architecture.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.errors import FeatureFieldError
from featurefield.teachers.base import PatchGridTeacher, register_teacher
from featurefield.teachers.weights import RANDOM_WEIGHTS_ID, seeded_random_init

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _find_cached_checkpoint(model: str, tag: str) -> Path | None:
    """The on-disk checkpoint of open_clip ``(model, tag)`` if some cache holds it, else ``None``."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        raise FeatureFieldError(f"clip: open_clip has no pretrained tag {tag!r} for {model!r}; "
                                f"known: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}")
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            for name in names:
                hit = try_to_load_from_cache(repo, name)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
    url = cfg.get("url", "")
    if url:
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return cached
    return None


def _load_open_clip(model: str, pretrained: str | None, weights: str | Path | None):
    """Build an open_clip model offline. Returns ``(model, mean, std, weights_id)``."""
    import open_clip

    if model not in open_clip.list_models():
        raise FeatureFieldError(f"clip: unknown open_clip model {model!r}; see open_clip.list_models()")
    mean, std = OPENAI_MEAN, OPENAI_STD
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FeatureFieldError(f"{path}: CLIP checkpoint not found; pass an existing open_clip checkpoint file")
        ckpt, weights_id = str(path), f"file:{path.resolve()}:{path.stat().st_size}"
    elif pretrained in (None, "", "random", "none"):
        ckpt, weights_id = None, RANDOM_WEIGHTS_ID
    else:
        from open_clip.pretrained import get_pretrained_cfg

        cfg = get_pretrained_cfg(model, pretrained)
        found = _find_cached_checkpoint(model, pretrained)
        if found is None:
            raise FeatureFieldError(
                f"clip: weights for {model} / {pretrained} are not on disk (looked in the Hugging Face cache for "
                f"{cfg.get('hf_hub') or '-'} and ~/.cache/clip); featurefield never downloads at run time: fetch them "
                f"once with open_clip.create_model({model!r}, pretrained={pretrained!r}) on a machine with network, "
                f"or pass weights=PATH to a checkpoint file"
            )
        mean, std = tuple(cfg.get("mean") or mean), tuple(cfg.get("std") or std)
        ckpt, weights_id = str(found), f"{model}/{pretrained}"
    try:
        if ckpt is None:  # random on purpose: open_clip's root-logger warning that it is random says nothing new
            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.ERROR))
            try:
                with seeded_random_init():
                    net = open_clip.create_model(model, pretrained=None)
            finally:
                root.setLevel(level)
        else:
            net = open_clip.create_model(model, pretrained=ckpt)
    except (RuntimeError, OSError, KeyError) as err:
        raise FeatureFieldError(f"{ckpt}: cannot load it as {model} ({err}); pass a matching checkpoint") from err
    return net.eval(), mean, std, weights_id


def interpolate_pos_embed(pos: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a ViT positional embedding.

    Args:
        pos: ``[1 + gh * gw, C]`` (class position first).
        grid: ``(gh, gw)`` of ``pos``.
        new_grid: target ``(h, w)``.
    Returns:
        ``[1 + h * w, C]``.
    """
    if tuple(grid) == tuple(new_grid):
        return pos
    cls, patch = pos[:1], pos[1:]
    c = patch.shape[-1]
    patch = patch.reshape(1, grid[0], grid[1], c).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=new_grid, mode="bicubic", align_corners=False)
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(-1, c).to(pos.dtype)])


class ClipTeacher(PatchGridTeacher):
    """Dense CLIP features ``[N, D, h, w]`` (L2-normalized) and text embeddings ``[T, D]``.

    Args:
        model: open_clip model name (a ViT).
        pretrained: open_clip tag found in a local cache, or ``None``/``"random"`` for random weights.
        weights: checkpoint file (overrides ``pretrained``).
        dense: ``"tokens"`` (patch tokens through ln_post + proj) or ``"maskclip"``.
        tiling: ``"interpolate"`` or ``"sliding"`` (see the module doc).
        resolution: shorter image side in pixels fed to the model (default: the model's input size).
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        max_batch: images (or windows) per forward.
    """

    name = "clip"
    has_text = True

    def __init__(self, model: str = "ViT-L-14-336", pretrained: str | None = "openai", weights: str | Path | None = None,
                 dense: str = "tokens", tiling: str = "interpolate", resolution: int | None = None,
                 precision: str = "auto", max_batch: int = 16, device: str | torch.device | None = None) -> None:
        if dense not in ("tokens", "maskclip"):
            raise FeatureFieldError(f"clip: dense must be 'tokens' or 'maskclip', not {dense!r}")
        if tiling not in ("interpolate", "sliding"):
            raise FeatureFieldError(f"clip: tiling must be 'interpolate' or 'sliding', not {tiling!r}")
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise FeatureFieldError(f"clip: unknown precision {precision!r}")
        self.model_name = model
        self.model, self.mean, self.std, self.weights_id = _load_open_clip(model, pretrained, weights)
        visual = self.model.visual
        if not hasattr(visual, "conv1") or not hasattr(visual, "positional_embedding"):
            raise FeatureFieldError(f"clip: {model} is not a plain ViT; dense features need an open_clip VisionTransformer")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.patch = int(visual.conv1.kernel_size[0])
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dim = int(visual.proj.shape[1]) if visual.proj is not None else int(visual.conv1.out_channels)
        self.dense, self.tiling, self.precision = dense, tiling, precision
        self.resolution = int(resolution or self.input_size)
        self.max_batch = max(1, int(max_batch))
        self.device = torch.device("cpu")
        self.calls = 0
        if device is not None:
            self.to(device)

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "auto": torch.bfloat16}.get(self.precision)
        enabled = self.device.type == "cuda" and dtype is not None
        return torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=enabled)

    def settings(self) -> dict:
        prec = "fp32" if self.device.type != "cuda" or self.precision == "fp32" else ("fp16" if self.precision == "fp16" else "bf16")
        return {"name": self.name, "dim": self.dim, "model": self.model_name, "weights": self.weights_id,
                "dense": self.dense, "tiling": self.tiling, "resolution": self.resolution, "precision": prec}

    # ------------------------------------------------------------------ the dense forward
    def dense_tokens(self, x: Tensor) -> Tensor:
        """Per-patch embeddings of normalized images.

        Args:
            x: ``[B, 3, H, W]`` normalized, ``H`` and ``W`` multiples of the patch size.
        Returns:
            ``[B, h * w, D]`` projected patch features (not normalized), row-major patch order.
        """
        v = self.model.visual
        b = x.shape[0]
        x = v.conv1(x)  # [B, C, h, w]
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], 1)
        g0 = self.input_size // self.patch
        x = x + interpolate_pos_embed(v.positional_embedding, (g0, g0), (gh, gw)).to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        last = len(blocks) if self.dense == "tokens" else len(blocks) - 1
        for blk in blocks[:last]:
            x = blk(x)
        if self.dense == "maskclip":
            blk = blocks[-1]
            attn = blk.attn
            y = blk.ln_1(x)
            c = y.shape[-1]
            v_w, v_b = attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:] if attn.in_proj_bias is not None else None
            x = attn.out_proj(F.linear(y, v_w, v_b))
        x = v.ln_post(x[:, 1:])
        if v.proj is not None:
            x = x @ v.proj
        return x

    def _forward_grid(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalized -> ``[B, D, H/p, W/p]`` float32 (unnormalized)."""
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        out = []
        for chunk in x.split(self.max_batch):
            self.calls += 1
            with self._autocast():
                tok = self.dense_tokens(chunk)
            out.append(tok.float().transpose(1, 2).reshape(len(chunk), -1, h, w))
        return torch.cat(out)

    def _window_starts(self, size: int, window: int) -> list[int]:
        if size <= window:
            return [0]
        stride = max(self.patch, (window // 2) // self.patch * self.patch)
        starts = list(range(0, size - window + 1, stride))
        if starts[-1] != size - window:
            starts.append(size - window)
        return starts

    @torch.no_grad()
    def extract(self, images: Tensor) -> Tensor:
        n, _, H, W = images.shape
        rh, rw = self.resized_size(H, W)
        x = images.to(self.device).float()
        if (rh, rw) != (H, W):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.tiling == "interpolate":
            feats = self._forward_grid(x)
        else:
            win, p = self.input_size, self.patch
            ys, xs = self._window_starts(rh, win), self._window_starts(rw, win)
            wh, ww = min(win, rh), min(win, rw)
            crops = torch.stack([x[:, :, y:y + wh, x0:x0 + ww] for y in ys for x0 in xs], 1).flatten(0, 1)
            tiles = self._forward_grid(crops).reshape(n, len(ys) * len(xs), self.dim, wh // p, ww // p)
            feats = torch.zeros(n, self.dim, rh // p, rw // p, device=x.device)
            count = torch.zeros(1, 1, rh // p, rw // p, device=x.device)
            k = 0
            for y in ys:
                for x0 in xs:
                    feats[:, :, y // p:(y + wh) // p, x0 // p:(x0 + ww) // p] += tiles[:, k]
                    count[:, :, y // p:(y + wh) // p, x0 // p:(x0 + ww) // p] += 1
                    k += 1
            feats = feats / count
        return F.normalize(feats, dim=1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        import open_clip

        tokens = open_clip.get_tokenizer(self.model_name)(list(texts)).to(self.device)
        with self._autocast():
            emb = self.model.encode_text(tokens)
        return F.normalize(emb.float(), dim=-1)

    @classmethod
    def describe(cls, weights=None) -> dict:
        found = None
        try:
            found = _find_cached_checkpoint("ViT-L-14-336", "openai")
        except Exception:  # open_clip missing or unusual install: just report absent
            pass
        return {"dim": 768, "has_text": True, "weights": found is not None,
                "where": str(found) if found else "not cached (ViT-L-14-336/openai); pass weights=PATH or pretrained=random"}

    @classmethod
    def fetch_weights(cls, target=None, timeout: float = 600.0):
        raise FeatureFieldError(
            f"featurefield does not download {cls.name} weights; run open_clip.create_model(MODEL, pretrained=TAG) once on a machine with "
            "network (it fills the Hugging Face cache, which featurefield reads offline), or pass weights=PATH to a "
            "checkpoint file"
        )


register_teacher("clip")(ClipTeacher)
