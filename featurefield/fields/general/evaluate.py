"""Evaluating a generalizable field on held-out instances of its category.

* **Novel views from one image:** each instance's view 0 is the input; the next views are rendered
  and compared with the ground truth (PSNR over the image; feature cosine to the teacher's features of
  the true view on the object's pixels).
* **2D keypoint transfer (PCK):** random pairs of views of two different held-out instances; the
  keypoints visible in both are transferred from A to B by nearest neighbour among B's object pixels
  (the true mask, the same for every source) and counted correct within ``alpha`` times the image's
  larger side (``pck``) or the object's bounding box's larger side (``pck_bbox``).
* **3D keypoint transfer:** A's visible keypoints are lifted to 3D with A's rendered depth and matched
  in B's ``R^3`` volume (from B's single view); the error is the distance to B's true 3D keypoint (world
  units; the objects span about 1.5), with ``pck3d@0.1`` the share within 0.1. Sources: the distilled and
  the NeRF-intermediate features (the 2D teacher has no 3D counterpart).
* **Part segmentation (mIoU):** each held-out target view is segmented by label transfer from ``K``
  labelled views of training instances; IoU per part accumulated over targets, on the object's pixels,
  averaged over parts.

Each metric is reported for the three descriptor sources of :mod:`.queries`: the 2D teacher's own
features, the rendered distilled features and the rendered NeRF-intermediate features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from featurefield.errors import FeatureFieldError
from featurefield.fields.general.queries import (
    SOURCES,
    segment_parts,
    teacher_map,
    transfer_keypoints,
    transfer_keypoints_3d,
)
from featurefield.fields.general.rendering import render_view


class _Maps:
    """Descriptor maps of single views, each computed once: ``maps(i, v) -> {source: [H, W, C]}``."""

    def __init__(self, run, data, sources) -> None:
        self.run, self.data, self.sources = run, data, sources
        self.cache: dict[tuple[int, int], dict] = {}

    def __call__(self, i: int, v: int) -> dict:
        if (i, v) not in self.cache:
            fld = self.run.field
            inst = self.data.instance(i, views=[v])
            img = inst["rgb"][0].permute(2, 0, 1)
            out = {"parts": inst["parts"][0], "mask": inst["depth"][0] > 0, "uv": inst["uv"][0], "visible": inst["visible"][0]}
            need = tuple(s for s in self.sources if s != "teacher")
            if need:
                cond = fld.encode(img[None].to(fld.device), inst["cameras"])
                r = render_view(fld, cond, inst["cameras"], need=need)
                for s in need:
                    out[s] = F.normalize(r[s].float(), dim=-1)
            if "teacher" in self.sources:
                out["teacher"] = teacher_map(self.run.teacher(), img.to(fld.device))
            self.cache[(i, v)] = out
        return self.cache[(i, v)]


@torch.no_grad()
def novel_view_metrics(run, data, instances: list[int], targets: int = 4, with_teacher: bool = True) -> dict:
    """PSNR of views ``1..targets`` rendered from view 0 alone, and feature cosine to the teacher there."""
    from featurefield.metrics import psnr

    fld = run.field
    psnrs, cosines = [], []
    for i in instances:
        inst = data.instance(i, views=list(range(min(data.views, targets + 1))))
        cond = fld.encode(inst["rgb"][:1].permute(0, 3, 1, 2).to(fld.device), inst["cameras"][0])
        for v in range(1, len(inst["rgb"])):
            r = render_view(fld, cond, inst["cameras"][v], need=("rgb", "feature"))
            psnrs.append(psnr(r["rgb"].cpu(), inst["rgb"][v]))
            if with_teacher:
                t = teacher_map(run.teacher(), inst["rgb"][v].permute(2, 0, 1).to(fld.device))
                mask = (inst["depth"][v] > 0).to(fld.device)
                cos = (F.normalize(r["feature"].float(), dim=-1) * t).sum(-1)[mask]
                cosines.append(float(cos.mean()) if cos.numel() else float("nan"))
    out = {"novel_view_psnr": float(np.mean(psnrs)), "novel_views": len(psnrs)}
    if cosines:
        out["novel_view_feature_cosine"] = float(np.nanmean(cosines))
    return out


@torch.no_grad()
def keypoint_pck(maps: _Maps, data, instances: list[int], pairs: int, rng: np.random.Generator,
                 alphas=(0.05, 0.1)) -> dict:
    """PCK of 2D keypoint transfer between views of different instances (see module doc)."""
    errors: dict[str, list[float]] = {s: [] for s in maps.sources}
    scales_img, scales_box = [], []
    used = tries = 0
    while used < pairs and tries < pairs * 5:
        tries += 1
        i, j = rng.choice(instances, 2, replace=False)
        va, vb = int(rng.integers(data.views)), int(rng.integers(data.views))
        A, B = maps(int(i), va), maps(int(j), vb)
        both = (A["visible"] & B["visible"]).nonzero().squeeze(1)
        if both.numel() == 0:
            continue
        used += 1
        ys, xs = B["mask"].nonzero(as_tuple=True)
        box = float(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
        for s in maps.sources:
            mask_b = B["mask"].to(B[s].device)
            uv, _ = transfer_keypoints(A[s], A["uv"][both].to(A[s].device), B[s], mask_b)
            errors[s] += (uv.cpu() - B["uv"][both]).norm(dim=-1).tolist()
        scales_img += [float(max(B["mask"].shape))] * both.numel()
        scales_box += [box] * both.numel()
    out = {"pck_pairs": used, "pck_keypoints": len(scales_img)}
    img, box = np.array(scales_img), np.array(scales_box)
    for s, err in errors.items():
        err = np.array(err)
        for a in alphas:
            out[f"pck@{a}/{s}"] = float((err <= a * img).mean()) if len(err) else float("nan")
            out[f"pck_bbox@{a}/{s}"] = float((err <= a * box).mean()) if len(err) else float("nan")
    return out


@torch.no_grad()
def keypoint_transfer_3d(run, data, instances: list[int], pairs: int, rng: np.random.Generator, resolution: int = 32,
                         sources=("feature", "descriptor")) -> dict:
    """3D keypoint transfer error between different instances, each seen in one view (see module doc)."""
    fld = run.field
    errors: dict[str, list[float]] = {s: [] for s in sources}
    used = tries = 0
    while used < pairs and tries < pairs * 5:
        tries += 1
        i, j = (int(x) for x in rng.choice(instances, 2, replace=False))
        va, vb = int(rng.integers(data.views)), int(rng.integers(data.views))
        A, B = data.instance(i, views=[va]), data.instance(j, views=[vb])
        vis = A["visible"][0].nonzero().squeeze(1)
        if vis.numel() == 0:
            continue
        used += 1
        cond_a = fld.encode(A["rgb"].permute(0, 3, 1, 2).to(fld.device), A["cameras"])
        cond_b = fld.encode(B["rgb"].permute(0, 3, 1, 2).to(fld.device), B["cameras"])
        for s in sources:
            xyz, _ = transfer_keypoints_3d(fld, cond_a, A["cameras"], A["uv"][0, vis].to(fld.device), cond_b, resolution,
                                           source=s)
            errors[s] += (xyz.cpu() - B["keypoints"][vis]).norm(dim=-1).tolist()
    out: dict = {"kp3d_pairs": used}
    for s, err in errors.items():
        err = np.array(err)
        out[f"kp3d_error/{s}"] = float(err.mean()) if len(err) else float("nan")
        out[f"pck3d@0.1/{s}"] = float((err <= 0.1).mean()) if len(err) else float("nan")
    return out


@torch.no_grad()
def part_miou(maps: _Maps, data, targets: list[int], references: list[int], shots=(1, 5),
              rng: np.random.Generator | None = None) -> dict:
    """Part mIoU by label transfer from ``K`` labelled training views (see module doc)."""
    rng = rng or np.random.default_rng(0)
    parts = len(data.parts)
    out = {}
    gen = torch.Generator().manual_seed(0)
    for k in shots:
        refs = [(int(r), int(rng.integers(data.views))) for r in rng.choice(references, min(k, len(references)), replace=False)]
        target_views = [(int(t), int(rng.integers(data.views))) for t in targets]
        for s in maps.sources:
            inter = np.zeros(parts)
            union = np.zeros(parts)
            ref_maps = [maps(*r) for r in refs]
            for t in target_views:
                T = maps(*t)
                dev = T[s].device
                pred = segment_parts([m[s] for m in ref_maps], [m["parts"].to(dev) for m in ref_maps], T[s],
                                     T["mask"].to(dev), generator=gen).cpu()
                gt = T["parts"]
                on = T["mask"]
                for p in range(1, parts):
                    a, b = (pred == p) & on, (gt == p) & on
                    inter[p] += float((a & b).sum())
                    union[p] += float((a | b).sum())
            valid = union[1:] > 0
            out[f"miou@{k}/{s}"] = float((inter[1:][valid] / union[1:][valid]).mean()) if valid.any() else float("nan")
    return out


def evaluate_general(run, data=None, instances: int = 20, pairs: int = 40, shots=(1, 5), seed: int = 0,
                     sources=SOURCES, novel_views: int = 4, split: str = "test", pairs_3d: int = 10,
                     resolution_3d: int = 32) -> dict:
    """All metrics of the module doc on the held-out (``test``) instances of the run's category.

    Args:
        run: a :class:`~featurefield.fields.general.run.GeneralRun`. data: the category (default: the run's).
        instances: held-out instances used (at most). pairs: keypoint pairs (at least; more are drawn
            where a pair shares no visible keypoint). shots: the ``K`` labelled views for part transfer.
        sources: descriptor sources compared. novel_views: rendered views per instance for PSNR.
    """
    data = data or run.data()
    rng = np.random.default_rng(seed)
    test = data.split(split)[:instances]
    if len(test) < 2:
        raise FeatureFieldError(f"{data.path}: evaluation needs at least 2 {split} instances; generate more")
    train_ids = data.split("train")
    out = {"category": data.category, "test_instances": len(test), "step": run.step}
    out.update(novel_view_metrics(run, data, test, novel_views, with_teacher="teacher" in sources))
    maps = _Maps(run, data, tuple(sources))
    out.update(keypoint_pck(maps, data, test, pairs, rng))
    out.update(part_miou(maps, data, test, train_ids, shots, rng))
    if pairs_3d:
        out.update(keypoint_transfer_3d(run, data, test, pairs_3d, rng, resolution_3d,
                                        tuple(s for s in sources if s != "teacher")))
    return out
