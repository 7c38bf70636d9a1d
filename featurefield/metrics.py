"""Image, feature, mask and correspondence metrics used by ``featurefield eval``.

* :func:`psnr` (and :func:`psnr_from_mse`, what training logs), :func:`ssim` (torchmetrics) on ``[H, W, 3]`` images in [0, 1].
* :class:`Lpips`: torchmetrics LPIPS; its backbone needs ImageNet weights from the torch hub cache,
  which cannot be downloaded here, so when they are absent the metric reports
  ``"unavailable (reason)"`` instead of failing or inventing a number.
* :func:`feature_fidelity`: mean cosine similarity and relative L2 between rendered and teacher features;
  :func:`content_regions` splits a teacher grid into object interior, silhouette and background cells.
* :func:`mask_iou`, :func:`confusion_matrix` / :func:`miou` (semantic mIoU), :func:`pck`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def _nchw(img: Tensor) -> Tensor:
    """``[H, W, 3]`` or ``[N, H, W, 3]`` -> ``[N, 3, H, W]`` float32."""
    img = img.float()
    if img.dim() == 3:
        img = img[None]
    return img.permute(0, 3, 1, 2).contiguous()


def psnr_from_mse(mse: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of a mean squared error of images in [0, 1] (0-d tensor in, 0-d out;
    no host sync, so a training step can log it)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (``[H, W, 3]`` or ``[N, H, W, 3]``; ``pred`` is
    clamped to [0, 1] first)."""
    return float(psnr_from_mse(((pred.float().clamp(0, 1) - target.float().to(pred.device)) ** 2).mean()))


def ssim(pred: Tensor, target: Tensor) -> float:
    """Structural similarity (Gaussian window 11, sigma 1.5) for images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(_nchw(pred).clamp(0, 1), _nchw(target), data_range=1.0))


#: torchvision checkpoint each LPIPS backbone needs in ``<torch hub dir>/checkpoints``.
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


class Lpips:
    """LPIPS (lower is better) that never downloads: unavailable when the backbone weights are absent.

    Attributes:
        available: whether the metric can be computed.
        reason: why not (empty when available).
    """

    def __init__(self, net: str = "alex", device: torch.device | str = "cpu") -> None:
        self.net, self.device = net, torch.device(device)
        self.model = None
        self.reason = ""
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        weights = hub / LPIPS_BACKBONES[net]
        if not weights.is_file():
            self.reason = f"{net} ImageNet backbone weights not found at {weights}; put the torchvision checkpoint there"
            return
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.model = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).to(self.device).eval()
        except Exception as err:  # broken weights file or torchvision/torchmetrics mismatch
            self.reason = f"cannot build LPIPS ({type(err).__name__}: {err})"

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> float | None:
        """LPIPS of ``[H, W, 3]`` images in [0, 1]; ``None`` when unavailable."""
        if self.model is None:
            return None
        self.model.reset()
        return float(self.model(_nchw(pred).clamp(0, 1).to(self.device), _nchw(target).to(self.device)))

    def describe(self) -> str:
        return "available" if self.available else f"unavailable ({self.reason})"


def feature_fidelity(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """How close rendered features are to the teacher's.

    Args:
        pred, target: ``[D, h, w]`` features on the same grid.
        mask: optional ``[h, w]`` bool: only these positions count.
    Returns:
        ``{"cosine": mean per-position cosine similarity, "rel_l2": ||pred - target|| / ||target||}``
        (Frobenius norms over the counted positions).
    """
    p = pred.float().flatten(1)
    t = target.float().to(p.device).flatten(1)
    if mask is not None:
        keep = mask.flatten().to(p.device)
        p, t = p[:, keep], t[:, keep]
    if p.shape[1] == 0:
        return {"cosine": float("nan"), "rel_l2": float("nan")}
    cos = cosine_map(p, t).mean()
    rel = (p - t).norm() / t.norm().clamp_min(1e-12)
    return {"cosine": float(cos), "rel_l2": float(rel)}


REGIONS = ("interior", "silhouette", "background")


def content_regions(coverage: Tensor, grid: tuple[int, int]) -> Tensor:
    """Class the cells of a teacher grid by how much scene content covers them.

    Args:
        coverage: ``[H, W]`` in [0, 1]: the image's content (ground-truth alpha, or depth > 0).
        grid: the teacher's ``(h, w)``.
    Returns:
        ``[h, w]`` int64 region ids, indices into :data:`REGIONS`: 0 interior (the cell and its 8
        neighbours fully covered), 2 background (the cell and its neighbours empty), 1 silhouette (the
        rest). A teacher's features spill past object outlines (patches, convolutions); a field that
        stops sharply at the object loses its fidelity in the silhouette cells.
    """
    cov = F.interpolate(coverage.float()[None, None], size=grid, mode="area")
    full = -F.max_pool2d(-cov, 3, 1, 1)[0, 0] >= 0.99  # min over the 3 x 3 neighbourhood
    empty = F.max_pool2d(cov, 3, 1, 1)[0, 0] <= 0.01
    regions = torch.ones(grid, dtype=torch.int64, device=coverage.device)
    regions[full] = 0
    regions[empty] = 2
    return regions


def cosine_map(pred: Tensor, target: Tensor) -> Tensor:
    """Per-position cosine similarity ``[...]`` of two ``[D, ...]`` feature maps (e.g. ``[D, h, w]``)."""
    return F.cosine_similarity(pred.float(), target.float().to(pred.device), dim=0, eps=1e-8)


def mask_iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two ``[H, W]`` bool masks (1.0 when both are empty)."""
    a, b = a.bool(), b.bool().to(a.device)
    union = (a | b).sum()
    if union == 0:
        return 1.0
    return float((a & b).sum()) / float(union)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``[C, C]`` int64 counts, rows = ground truth, columns = prediction, of ``[H, W]`` label maps."""
    pred = pred.flatten().long()
    target = target.flatten().long().to(pred.device)
    keep = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def miou(confusion: Tensor) -> tuple[float, list[float]]:
    """Mean IoU over classes present in the ground truth or the prediction.

    Returns:
        ``(mIoU, per-class IoU)`` with ``nan`` for classes absent from both.
    """
    cm = confusion.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    present = ~torch.isnan(iou)
    mean = float(iou[present].mean()) if present.any() else float("nan")
    return mean, [float(x) for x in iou]


def pck(pred_uv: Tensor, true_uv: Tensor, image_size: tuple[int, int],
        thresholds: tuple[float, ...] = (0.01, 0.02, 0.05)) -> dict[str, float]:
    """Percentage of correct keypoints.

    A prediction is correct when it lies within ``alpha * max(H, W)`` pixels of the truth.

    Args:
        pred_uv, true_uv: ``[M, 2]`` pixel positions. image_size: ``(H, W)``.
    Returns:
        ``{"pck@0.01": fraction, ...}`` (``nan`` when ``M == 0``).
    """
    err = (pred_uv.float() - true_uv.float().to(pred_uv.device)).norm(dim=-1)
    size = max(image_size)
    return {f"pck@{a:g}": float((err <= a * size).float().mean()) if len(err) else float("nan") for a in thresholds}
