"""Pictures of features, depth, heatmaps and masks; PNG and video writers.

Everything here returns ``uint8`` numpy arrays ``[H, W, 3]`` ready to save, and accepts torch
tensors or numpy arrays. Feature pictures use a :class:`PCABasis`: fit it once (e.g. on several
views) and reuse it, so the same feature gets the same colour in every picture and frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError, warn
from featurefield.io import atomic_path

# ---------------------------------------------------------------------------------------------- colour maps
#: Anchor colours (position, RGB 0-255) of the colour maps, linearly interpolated into 256-entry tables.
_ANCHORS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    # a rainbow close to Google's "turbo": dark blue -> cyan -> green -> yellow -> red -> dark red
    "turbo": [(0.0, (48, 18, 59)), (0.1, (70, 107, 227)), (0.2, (62, 156, 254)), (0.3, (24, 214, 203)),
              (0.4, (50, 241, 151)), (0.5, (164, 252, 60)), (0.6, (225, 221, 55)), (0.7, (254, 165, 49)),
              (0.8, (239, 90, 17)), (0.9, (194, 36, 3)), (1.0, (122, 4, 3))],
    # perceptually uniform purple -> teal -> yellow, close to matplotlib's "viridis"
    "viridis": [(0.0, (68, 1, 84)), (0.125, (71, 45, 123)), (0.25, (59, 82, 139)), (0.375, (44, 114, 142)),
                (0.5, (33, 145, 140)), (0.625, (40, 174, 128)), (0.75, (94, 201, 98)), (0.875, (173, 220, 48)),
                (1.0, (253, 231, 37))],
    "gray": [(0.0, (0, 0, 0)), (1.0, (255, 255, 255))],
}
_LUTS: dict[str, np.ndarray] = {}


def colormap(name: str = "turbo") -> np.ndarray:
    """A colour lookup table ``[256, 3]`` uint8 (``turbo``, ``viridis`` or ``gray``)."""
    if name not in _ANCHORS:
        raise FeatureFieldError(f"unknown colour map {name!r}; choose one of {', '.join(_ANCHORS)}")
    if name not in _LUTS:
        pos = np.array([p for p, _ in _ANCHORS[name]])
        rgb = np.array([c for _, c in _ANCHORS[name]], dtype=np.float64)
        x = np.linspace(0, 1, 256)
        lut = np.stack([np.interp(x, pos, rgb[:, c]) for c in range(3)], -1)
        _LUTS[name] = np.round(lut).astype(np.uint8)
    return _LUTS[name]


def _numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32 if x.is_floating_point() else x.dtype).numpy()
    return np.asarray(x)


def heatmap(values, vmin: float | None = None, vmax: float | None = None, cmap: str = "turbo") -> np.ndarray:
    """Colour a scalar map (on its device, if a tensor).

    Args:
        values: ``[H, W]`` numbers; NaN/inf pixels come out black.
        vmin, vmax: the values mapped to the two ends of the colour map (default: finite min and max).
        cmap: ``turbo``, ``viridis`` or ``gray``.
    Returns:
        ``[H, W, 3]`` uint8.
    """
    v = _torch(values)
    if v.ndim != 2:
        raise FeatureFieldError(f"heatmap expects a [H, W] map, got shape {tuple(v.shape)}")
    finite = torch.isfinite(v)
    some = bool(finite.any())
    lo = float(v[finite].min()) if vmin is None and some else float(vmin or 0.0)
    hi = float(v[finite].max()) if vmax is None and some else float(1.0 if vmax is None else vmax)
    out = _colours((torch.where(finite, v, lo) - lo) / max(hi - lo, 1e-12), cmap)
    out[~finite] = 0
    return out.cpu().numpy()


def _colours(scaled: Tensor, cmap: str) -> Tensor:
    """``[..., 3]`` uint8 colours of ``scaled`` values (clamped to [0, 1]) from ``cmap``'s table, on their device."""
    lut = torch.from_numpy(colormap(cmap)).to(scaled.device)
    return lut[torch.round(scaled.clamp(0, 1) * 255).long()]


def _torch(x) -> Tensor:
    """``x`` as a float32 tensor, on its own device if it is one (depth pictures are coloured where they are)."""
    if isinstance(x, Tensor):
        return x.detach().float()
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


# torch.quantile's input limit; larger maps are sampled evenly for their percentiles
_QUANTILE_MAX = 16_000_000


def depth_range(depth, alpha=None) -> tuple[float, float]:
    """Robust ``(near, far)`` (1st/99th percentiles) of the valid pixels of a ``[H, W]`` depth map."""
    d = _torch(depth)
    d = d.reshape(d.shape[:2])
    valid = torch.isfinite(d) & (d > 0)
    pick = valid if alpha is None else valid & (_torch(alpha).to(d.device).reshape(d.shape) > 0.5)
    if not bool(pick.any()):
        pick = valid
    if not bool(pick.any()):
        return 0.0, 1.0
    values = d[pick]
    if values.numel() > _QUANTILE_MAX:
        values = values[:: -(-values.numel() // _QUANTILE_MAX)]
    near, far = torch.quantile(values, torch.tensor([0.01, 0.99], device=values.device)).tolist()
    return float(near), float(far)


def depth_image(depth, alpha=None, cmap: str = "turbo", background: Sequence[int] = (255, 255, 255),
                near: float | None = None, far: float | None = None) -> np.ndarray:
    """Colour a depth map, near warm and far cool, scaled to robust percentiles of the valid pixels.

    Computed with torch on the map's device (a GPU render is coloured there: 1-megapixel frames for the
    viewer), then copied to the host.

    Args:
        depth: ``[H, W]`` (or ``[H, W, 1]``) depth; pixels with depth <= 0 or not finite are background.
        alpha: optional ``[H, W]`` opacity in [0, 1]; the picture is composited onto ``background`` by it.
        near, far: fixed depth range (e.g. :func:`depth_range` of a reference map, to compare two
            pictures); default: robust percentiles of this map.
    Returns:
        ``[H, W, 3]`` uint8.
    """
    d = _torch(depth)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    valid = torch.isfinite(d) & (d > 0)
    a = torch.ones_like(d) if alpha is None else _torch(alpha).to(d.device).reshape(d.shape).clamp(0, 1)
    if near is None or far is None:
        auto = depth_range(d, a)
        near = auto[0] if near is None else near
        far = auto[1] if far is None else far
    inv = torch.where(valid, (far - d) / max(far - near, 1e-12), 0.0)  # near -> 1 (red), far -> 0 (blue)
    rgb = _colours(inv, cmap).float()  # [H, W, 3]
    a = torch.where(valid, a, 0.0)[..., None]
    bg = torch.tensor(background, dtype=torch.float32, device=d.device)
    out = rgb * a + bg * (1 - a)
    return out.round().to(torch.uint8).cpu().numpy()


#: label colours: 0 (background) white, then distinct hues
LABEL_PALETTE = np.array([[255, 255, 255], [150, 120, 90], [230, 60, 60], [60, 170, 80], [70, 110, 230], [240, 200, 40],
                          [170, 80, 200], [60, 200, 210], [240, 130, 40], [120, 120, 120]], dtype=np.uint8)


def labels_image(labels) -> np.ndarray:
    """``[H, W]`` integer labels -> ``[H, W, 3]`` uint8 with :data:`LABEL_PALETTE` (0 is white; it repeats after 9);
    negative labels (unlabelled) are black."""
    lab = _numpy(labels).astype(np.int64)
    out = LABEL_PALETTE[np.mod(lab, len(LABEL_PALETTE))]
    out[lab < 0] = 0
    return out


def distinct_colours(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 colours, no two alike: :data:`LABEL_PALETTE`'s hues first (white skipped), then hues a golden
    angle apart at alternating brightness (a legend of many segments needs each colour once)."""
    import colorsys

    out = [tuple(int(c) for c in col) for col in LABEL_PALETTE[1:n + 1]]
    k = 0
    while len(out) < n:
        h = (0.13 + k * 0.618034) % 1.0
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95 if k % 2 else 0.7))
        if rgb not in out:
            out.append(rgb)
        k += 1
    return np.asarray(out, dtype=np.uint8).reshape(n, 3)


def legend_picture(picture, colours, lines: Sequence[str], marks: Sequence[tuple[float, float] | None] | None = None,
                   scale: int = 1) -> np.ndarray:
    """A picture with a legend beside it: one row per entry, a swatch of ``colours[i]`` (``[N, 3]`` uint8) and
    ``lines[i]``; ``marks[i]`` (x, y in the picture's pixels, or None) gets entry ``i``'s number drawn there.
    ``scale``: the picture is enlarged this many times (nearest) first. ``[H, W, 3]`` uint8."""
    from PIL import Image, ImageDraw

    pic = Image.fromarray(to_uint8(picture)[..., :3].copy())
    if scale > 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pic)
    for i, mark in enumerate(marks or []):
        if mark is not None:
            x, y = mark[0] * scale, mark[1] * scale
            text = f"{i:02d}"
            box = draw.textbbox((x, y), text, anchor="mm")
            draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(255, 255, 255))
            draw.text((x, y), text, fill=(0, 0, 0), anchor="mm")
    if not lines:
        return np.asarray(pic)
    row, pad = 14, 6
    width = pad + 12 + 6 + max((int(draw.textlength(line)) for line in lines), default=0) + pad
    height = max(pic.height, pad * 2 + row * len(lines))
    canvas = Image.new("RGB", (pic.width + width, height), (255, 255, 255))
    canvas.paste(pic, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        x, y = pic.width + pad, pad + i * row
        draw.rectangle((x, y + 1, x + 11, y + 11), fill=tuple(int(c) for c in colours[i]), outline=(0, 0, 0))
        draw.text((x + 18, y), line, fill=(0, 0, 0))
    return np.asarray(canvas)


def draw_keypoints(rgb, uv, radius: int = 4, numbers: bool = True) -> np.ndarray:
    """Numbered dots at pixel positions ``uv [M, 2]`` (x, y) on ``rgb [H, W, 3]``, keypoint ``i`` in the
    colour :data:`LABEL_PALETTE` gives label ``i + 2`` (white and brown skipped), so that the same index
    has the same colour in two pictures. ``[H, W, 3]`` uint8."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(to_uint8(rgb)[..., :3].copy())
    draw = ImageDraw.Draw(canvas)
    colours = LABEL_PALETTE[2:]
    for i, (x, y) in enumerate(_numpy(uv).reshape(-1, 2).tolist()):
        colour = tuple(int(c) for c in colours[i % len(colours)])
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0))
        if numbers:
            draw.text((x + radius + 1, y - radius - 1), str(i), fill=colour)
    return np.asarray(canvas)


def overlay_mask(rgb, mask, color: Sequence[int] = (255, 40, 40), opacity: float = 0.5, outline: bool = True) -> np.ndarray:
    """Tint the pixels of ``mask`` with ``color`` and draw the mask's outline.

    Args:
        rgb: ``[H, W, 3]`` uint8 (floats in [0, 1] are accepted).
        mask: ``[H, W]`` bool (or a probability, thresholded at 0.5).
    Returns:
        ``[H, W, 3]`` uint8.
    """
    img = to_uint8(rgb).astype(np.float64)
    m = _numpy(mask)
    m = m > 0.5 if m.dtype != bool else m
    if m.shape != img.shape[:2]:
        raise FeatureFieldError(f"overlay_mask: mask {m.shape} and image {img.shape[:2]} differ in size")
    col = np.asarray(color, dtype=np.float64)
    img[m] = img[m] * (1 - opacity) + col * opacity
    if outline:
        pad = np.pad(m, 1, mode="edge")
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        img[m & ~inner] = col
    return np.round(img).astype(np.uint8)


def to_uint8(image) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1|3|4]`` image (uint8, or float in [0, 1]) -> ``[H, W, 3|4]`` uint8.

    A tensor is converted on its device, so a GPU render is not copied to the host as floats.
    """
    t = image.detach() if isinstance(image, Tensor) else torch.from_numpy(np.array(image))
    if t.dtype != torch.uint8:
        t = (t.float() * 255).clamp_(0, 255).round_().to(torch.uint8)
    a = t.cpu().numpy()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise FeatureFieldError(f"expected an image [H, W], [H, W, 3] or [H, W, 4], got shape {a.shape}")
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------------- PCA
@dataclass
class PCABasis:
    """A linear map from features to 3 colour channels: ``colour = ((x - mean) @ components - lo) / (hi - lo)``.

    Attributes:
        mean: ``[D]`` feature mean.
        components: ``[D, k]`` principal directions, strongest first (sign fixed so colours are stable).
        lo, hi: ``[k]`` robust (1st and 99th percentile) range of the projections, mapped to 0 and 255.
    """

    mean: Tensor
    components: Tensor
    lo: Tensor
    hi: Tensor

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def project(self, features: Tensor) -> Tensor:
        """``[..., D]`` features -> ``[..., k]`` projections (unscaled)."""
        x = features.to(torch.float32)
        return (x - self.mean.to(x)) @ self.components.to(x)

    def colors(self, features: Tensor) -> Tensor:
        """``[..., D]`` features -> ``[..., 3]`` colours in [0, 1] (extra channels are zero when k < 3)."""
        p = self.project(features)
        c = ((p - self.lo.to(p)) / (self.hi - self.lo).to(p).clamp_min(1e-8)).clamp(0, 1)
        if c.shape[-1] < 3:
            c = torch.cat([c, c.new_zeros(*c.shape[:-1], 3 - c.shape[-1])], -1)
        return c[..., :3]

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "components": self.components.tolist(),
                "lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @staticmethod
    def from_dict(d: dict) -> PCABasis:
        try:
            return PCABasis(*(torch.tensor(d[k], dtype=torch.float32) for k in ("mean", "components", "lo", "hi")))
        except (KeyError, TypeError, ValueError) as err:
            raise FeatureFieldError(f"broken PCA basis record ({err}); delete the file to refit it") from err


def fit_pca(features, k: int = 3, max_samples: int = 200_000, percentiles: tuple[float, float] = (1.0, 99.0)) -> PCABasis:
    """Fit the top-``k`` principal directions of feature vectors.

    Args:
        features: ``[M, D]`` features (any float dtype; non-finite rows are ignored).
        k: number of components (3 for RGB pictures).
        max_samples: at most this many rows are used (an evenly spaced, deterministic subset).
        percentiles: the projection range mapped to the colour range.
    Returns:
        A :class:`PCABasis` with ``components [D, k]`` (zero columns when ``D < k``).
    """
    x = torch.as_tensor(_numpy(features) if not isinstance(features, Tensor) else features)
    x = x.detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise FeatureFieldError(f"fit_pca expects [M, D] features with M >= 2, got shape {tuple(x.shape)}")
    x = x[torch.isfinite(x).all(1)]
    if x.shape[0] < 2:
        raise FeatureFieldError("fit_pca: fewer than two finite feature vectors")
    if x.shape[0] > max_samples:
        x = x[torch.linspace(0, x.shape[0] - 1, max_samples).round().long()]
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    comps = vecs.flip(1)[:, : min(k, x.shape[1])]
    # fix each direction's sign (largest-magnitude entry positive) so refits give the same colours
    big = comps.abs().argmax(0)
    sign = torch.sign(comps[big, torch.arange(comps.shape[1])])
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    if comps.shape[1] < k:
        comps = torch.cat([comps, comps.new_zeros(comps.shape[0], k - comps.shape[1])], 1)
    proj = xc @ comps
    q = torch.tensor([percentiles[0] / 100, percentiles[1] / 100], dtype=torch.float64)
    sub = proj[torch.linspace(0, proj.shape[0] - 1, min(proj.shape[0], 100_000)).round().long()]
    lo, hi = torch.quantile(sub, q, dim=0)
    hi = torch.maximum(hi, lo + 1e-6)
    return PCABasis(mean.float(), comps.float(), lo.float(), hi.float())


def pca_image(features, basis: PCABasis | None = None) -> np.ndarray:
    """A colour picture of a feature map.

    Args:
        features: ``[D, h, w]`` features.
        basis: the basis to use (fit on this map when ``None``); reuse one basis for stable colours.
    Returns:
        ``[h, w, 3]`` uint8.
    """
    f = torch.as_tensor(_numpy(features) if not isinstance(features, Tensor) else features).detach().cpu()
    if f.ndim != 3:
        raise FeatureFieldError(f"pca_image expects [D, h, w] features, got shape {tuple(f.shape)}")
    flat = f.flatten(1).T.float()  # [h*w, D]
    if basis is None:
        basis = fit_pca(flat, k=3)
    elif basis.dim != flat.shape[1]:
        raise FeatureFieldError(f"PCA basis is for {basis.dim}-dim features, got {flat.shape[1]}-dim features")
    rgb = basis.colors(flat).reshape(f.shape[1], f.shape[2], 3)
    return (rgb * 255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------- layout
def side_by_side(images: Sequence, labels: Sequence[str] | None = None, pad: int = 4,
                 background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """Put pictures in a row, each scaled (nearest) to the tallest height, with an optional caption.

    Args:
        images: ``[H_i, W_i]`` or ``[H_i, W_i, 3|4]`` pictures (uint8 or float in [0, 1]).
        labels: one caption per picture, drawn above it.
    Returns:
        ``[H, W, 3]`` uint8.
    """
    from PIL import Image, ImageDraw

    if not images:
        raise FeatureFieldError("side_by_side needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise FeatureFieldError(f"side_by_side: {len(images)} images but {len(labels)} labels")
    pics = [to_uint8(im)[..., :3] for im in images]
    height = max(p.shape[0] for p in pics)
    scaled = []
    for p in pics:
        if p.shape[0] != height:
            w = max(1, round(p.shape[1] * height / p.shape[0]))
            p = np.asarray(Image.fromarray(p).resize((w, height), Image.NEAREST))
        scaled.append(p)
    caption = 14 if labels else 0
    width = sum(p.shape[1] for p in scaled) + pad * (len(scaled) + 1)
    canvas = Image.new("RGB", (width, height + caption + 2 * pad), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for i, p in enumerate(scaled):
        canvas.paste(Image.fromarray(p), (x, pad + caption))
        if labels:
            draw.text((x, pad), str(labels[i]), fill=(0, 0, 0))
        x += p.shape[1] + pad
    return np.asarray(canvas)


# ---------------------------------------------------------------------------------------------- files
def save_png(path: str | Path, image) -> Path:
    """Write a picture (uint8 or float in [0, 1]; grey, RGB or RGBA) to ``path`` atomically; returns ``path``."""
    from PIL import Image

    path = Path(path)
    arr = to_uint8(image)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def _ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).exists()
    except Exception:  # noqa: BLE001 - any failure to find the binary means "no ffmpeg"
        return False


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width and height (H.264 with yuv420p needs them) by repeating the last row/column."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path: str | Path, frames: Sequence, fps: int = 30) -> Path:
    """Write frames as an MP4 (H.264 through imageio-ffmpeg), atomically.

    Falls back to an animated GIF next to ``path`` (same name, ``.gif``) with a warning when ffmpeg
    is not available.

    Args:
        path: output file, normally ``*.mp4``.
        frames: ``[H, W, 3]`` pictures of one size (uint8 or float in [0, 1]).
        fps: frames per second.
    Returns:
        The path actually written.
    """
    path = Path(path)
    pics = [to_uint8(f)[..., :3] for f in frames]
    if not pics:
        raise FeatureFieldError(f"{path}: no frames to write")
    if any(p.shape != pics[0].shape for p in pics):
        raise FeatureFieldError(f"{path}: frames differ in size; every frame must be {pics[0].shape}")
    if path.suffix.lower() != ".gif" and _ffmpeg_available():
        import imageio.v2 as imageio

        try:
            with atomic_path(path, suffix=path.suffix or ".mp4") as tmp, imageio.get_writer(
                    tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                    macro_block_size=1) as writer:
                for p in pics:
                    writer.append_data(_even(p))
            return path
        except Exception as err:  # noqa: BLE001 - a broken ffmpeg install falls back to GIF below
            warn(f"{path}: writing MP4 failed ({err}); writing a GIF instead")
    elif path.suffix.lower() != ".gif":
        warn(f"{path}: ffmpeg is not available (pip install imageio-ffmpeg); writing a GIF instead")
    from PIL import Image

    gif = path.with_suffix(".gif")
    with atomic_path(gif, suffix=".gif") as tmp:
        ims = [Image.fromarray(p) for p in pics]
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=max(1, round(1000 / fps)), loop=0)
    return gif
