"""Queries of a generalizable field from single images, without per-scene training.

Every query works on *descriptor maps*: per-pixel vectors of one image, from one of three sources:

* ``"teacher"``: the 2D teacher's features of the image itself (upsampled to the image), the baseline;
* ``"feature"``: the distilled features rendered by the field from the image's own encoding;
* ``"descriptor"``: the NeRF-intermediate activations rendered the same way (FeatureNeRF's NeRF features).

All vectors are L2-normalized, so nearest neighbours are by cosine similarity. 2D keypoint transfer
goes through the 3D volume: each image is encoded, its field rendered at its own camera, and points
matched there; 3D transfer matches a lifted 3D point against the other object's 64^3 volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields.general.model import Conditioning, GeneralField
from featurefield.fields.general.rendering import feature_volume, render_rays, render_view

SOURCES = ("teacher", "feature", "descriptor")


@torch.no_grad()
def teacher_map(teacher, image: Tensor) -> Tensor:
    """The teacher's features of ``image [3, H, W]`` resized to ``[H, W, D]`` (bilinear), L2-normalized."""
    H, W = image.shape[-2:]
    f = teacher.extract(image[None].float())
    f = F.interpolate(f.float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    return F.normalize(f.permute(1, 2, 0), dim=-1)


@torch.no_grad()
def descriptor_map(field: GeneralField, image: Tensor, camera: Cameras, source: str, teacher=None,
                   cond: Conditioning | None = None) -> tuple[Tensor, Tensor]:
    """Per-pixel descriptors of one image and the rendered object mask.

    Args:
        field: the field. image: ``[3, H, W]`` RGB in [0, 1]. camera: its camera (one).
        source: one of :data:`SOURCES`. teacher: needed for ``"teacher"``. cond: the image's encoding, if known.
    Returns:
        ``desc [H, W, C]`` L2-normalized and ``alpha [H, W]`` (the rendered opacity; ones for ``"teacher"``).
    """
    if source not in SOURCES:
        raise FeatureFieldError(f"unknown descriptor source {source!r}; expected one of {', '.join(SOURCES)}")
    if source == "teacher":
        if teacher is None:
            raise FeatureFieldError("descriptor source 'teacher' needs the run's teacher")
        d = teacher_map(teacher, image.to(field.device))
        return d, torch.ones(d.shape[:2], device=d.device)
    cond = cond or field.encode(image[None].to(field.device), camera)
    out = render_view(field, cond, camera, need=(source,))
    return F.normalize(out[source].float(), dim=-1), out["alpha"]


def sample_map(desc: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples ``[K, C]`` of a map ``[H, W, C]`` at pixel positions ``uv [K, 2]`` (centres at +0.5)."""
    H, W, _ = desc.shape
    grid = torch.stack([2 * uv[:, 0] / W - 1, 2 * uv[:, 1] / H - 1], -1).to(desc)[None, None]
    return F.grid_sample(desc.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0, :, 0].T


def match_points(queries: Tensor, desc: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest neighbours of ``queries [K, C]`` among the masked pixels of ``desc [H, W, C]``.

    Returns:
        ``uv [K, 2]`` pixel centres of the matches and their cosine ``[K]``.
    """
    H, W, C = desc.shape
    idx = mask.reshape(-1).nonzero().squeeze(1)
    if idx.numel() == 0:
        idx = torch.arange(H * W, device=desc.device)
    sim = F.normalize(queries.float(), dim=-1) @ desc.reshape(-1, C)[idx].float().T  # [K, M]
    best, arg = sim.max(1)
    pix = idx[arg]
    uv = torch.stack([pix % W, pix // W], -1).float() + 0.5
    return uv, best


def transfer_keypoints(desc_a: Tensor, uv_a: Tensor, desc_b: Tensor, mask_b: Tensor) -> tuple[Tensor, Tensor]:
    """2D keypoint transfer: keypoints ``uv_a [K, 2]`` of image A to image B through their descriptor maps.

    Args:
        desc_a, desc_b: ``[H, W, C]`` maps (:func:`descriptor_map`). mask_b: ``[H, W]`` bool, where B's
            object is (the rendered ``alpha > 0.5``, or a known mask).
    Returns:
        ``uv_b [K, 2]`` and the match cosine ``[K]``.
    """
    return match_points(sample_map(desc_a, uv_a), desc_b, mask_b)


@torch.no_grad()
def lift_points(field: GeneralField, cond: Conditioning, camera: Cameras, uv: Tensor) -> Tensor:
    """3D points ``[K, 3]`` seen at pixels ``uv [K, 2]`` of ``camera``: the rendered (expected) ray depth."""
    camera = camera.to(field.device)
    o, d = camera.rays_at(torch.zeros(len(uv), dtype=torch.int64, device=field.device), uv.to(field.device))
    out = render_rays(field, cond, o[None], d[None], need=())
    return o + out["depth"][0, :, None] / out["alpha"][0, :, None].clamp_min(1e-6) * d


@torch.no_grad()
def transfer_keypoints_3d(field: GeneralField, cond_a: Conditioning, camera_a: Cameras, uv_a: Tensor,
                          cond_b: Conditioning, resolution: int = 64, occupancy: float = 0.5,
                          source: str = "descriptor") -> tuple[Tensor, Tensor]:
    """3D keypoint transfer: keypoints at pixels ``uv_a [K, 2]`` of image A to 3D points on object B.

    A's keypoints are lifted to 3D with A's rendered depth and described there (``source``: the NeRF
    features, ``"descriptor"``, or the distilled ones, ``"feature"``); B's candidates are the cells of its
    ``resolution^3`` volume whose occupancy ``1 - exp(-sigma * cell)`` exceeds ``occupancy``.

    Returns:
        ``xyz_b [K, 3]`` (world) and the match cosine ``[K]``.
    """
    if source not in ("descriptor", "feature"):
        raise FeatureFieldError(f"3D keypoint transfer matches 3D features: source 'descriptor' or 'feature', not {source!r}")
    pts = lift_points(field, cond_a, camera_a, uv_a)
    qa = field(pts[None], torch.zeros_like(pts)[None], cond_a, need=(source,))[source][0]
    vol = feature_volume(field, cond_b, resolution, need=(source,))
    cell = 2 * field.config.bound / resolution
    occ = 1 - torch.exp(-vol["sigma"] * cell)
    keep = occ.reshape(-1) > occupancy
    if not keep.any():  # an empty field: fall back to the densest cells
        keep = occ.reshape(-1) >= occ.reshape(-1).topk(min(64, occ.numel())).values[-1]
    cands = F.normalize(vol[source].reshape(-1, qa.shape[-1])[keep].float(), dim=-1)
    sim = F.normalize(qa.float(), dim=-1) @ cands.T
    best, arg = sim.max(1)
    return vol["points"].reshape(-1, 3)[keep][arg], best


def segment_parts(ref_desc: list[Tensor], ref_labels: list[Tensor], desc: Tensor, mask: Tensor,
                  max_refs: int = 20000, generator: torch.Generator | None = None) -> Tensor:
    """Part segmentation by label transfer: each masked pixel takes the label of its nearest labelled pixel.

    Args:
        ref_desc: ``K`` descriptor maps ``[H, W, C]`` of labelled images; ref_labels: their ``[H, W]``
            int labels (0 = background, not used as a reference).
        desc: ``[H, W, C]`` of the image to segment; mask: ``[H, W]`` bool, its object pixels.
        max_refs: at most this many labelled pixels (a random subset) are searched.
    Returns:
        ``[H, W]`` int64 labels (0 outside ``mask``).
    """
    C = desc.shape[-1]
    feats = torch.cat([d.reshape(-1, C)[lab.reshape(-1) > 0] for d, lab in zip(ref_desc, ref_labels)])
    labels = torch.cat([lab.reshape(-1)[lab.reshape(-1) > 0] for lab in ref_labels]).to(desc.device)
    if len(feats) == 0:
        raise FeatureFieldError("part segmentation: the labelled images have no labelled pixels")
    if len(feats) > max_refs:
        keep = torch.randperm(len(feats), generator=generator)[:max_refs].to(feats.device)
        feats, labels = feats[keep], labels[keep]
    out = torch.zeros(mask.shape, dtype=torch.int64, device=desc.device)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    for s in range(0, len(idx), 8192):
        rows = idx[s:s + 8192]
        sim = desc.reshape(-1, C)[rows].float() @ feats.float().T
        out.view(-1)[rows] = labels[sim.argmax(1)]
    return out


def orbit_cameras(camera: Cameras, n: int) -> Cameras:
    """``n`` cameras circling the origin at ``camera``'s distance and elevation (z up), starting at its azimuth,
    with its intrinsics: the novel views to render from one image."""
    import math

    from featurefield.cameras import look_at

    eye = camera.centers[0].cpu()
    r = float(eye.norm())
    az0, el = math.atan2(float(eye[1]), float(eye[0])), math.asin(max(-1.0, min(1.0, float(eye[2]) / r)))
    az = torch.tensor([az0 + 2 * math.pi * k / n for k in range(n)])
    eyes = torch.stack([az.cos() * math.cos(el), az.sin() * math.cos(el), torch.full_like(az, math.sin(el))], -1) * r
    c2w = look_at(eyes, torch.zeros(3))
    return Cameras(c2w=c2w, fx=camera.fx[0].cpu(), fy=camera.fy[0].cpu(), cx=camera.cx[0].cpu(), cy=camera.cy[0].cpu(),
                   width=int(camera.width[0]), height=int(camera.height[0]))
