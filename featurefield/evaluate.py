"""Evaluate a trained run: ``featurefield eval RUN`` writes ``RUN/eval/metrics.json`` and prints a table.

Protocol (all on the held-out test views, at the scene's image size):

* **Image quality.** PSNR, SSIM (torchmetrics) and LPIPS (AlexNet; reported as
  ``"unavailable (reason)"`` when its ImageNet backbone weights are not on disk; never downloaded)
  between the render and the ground-truth image composited on the scene's background.
* **Feature fidelity**, per teacher: mean per-position cosine similarity and relative L2
  (``||rendered - teacher|| / ||teacher||``) between the field's features decoded on the teacher's
  grid and the teacher's features of the real test image; where the scene has alpha or depth, also
  the cosine over object-interior, silhouette and background cells (:func:`content_regions`). A field
  trained with a 2D model of the teacher's spill past outlines (``--splat.feature-spill``) is compared
  through it; ``cosine_without_spill`` gives its features without that model. Each field reads its
  render at the grid as it was trained (``teacher_sampling``): cell means for the Gaussian field,
  cell centres for the NeRF field (trained on the teacher grid's bilinear interpolant), which also
  reports ``cosine_area_averaged``.
* **SAM masks** (runs with the ``sam`` teacher and its prompt decoder present): the same box prompts
  go to the SAM decoder twice, once with the field's rendered features and once with the teacher's
  features of the real image; we report the IoU between the two masks, and each mask's IoU with the
  ground truth the box came from. Boxes come from the alpha mask (one per view, e.g. lego) or, on
  scenes with instance labels (the demo scene), from every instance except background and ground
  covering at least 0.5% of the image.
* **Correspondence PCK**: keypoint transfer from each test view to the next one (nearest neighbour
  of rendered features, :mod:`featurefield.query.correspondence`), truth from depth and poses: the
  scene's depth maps when it has them, else the field's rendered depth. PCK at 1%, 2%, 5% of the
  longest image side.
* **Semantic mIoU** (scenes with semantic labels): a nearest-class-mean probe per feature source,
  fitted on the same train views and labels. The 2D teacher's probe: the mean L2-normalized teacher
  feature of each class over the train views (labels resampled to the feature grid by nearest
  neighbour), applied to the teacher's features of the real test images on its grid, upsampled
  (nearest) to the image size. The field's probe: the same class means of the field's own rendered
  features of those train views, applied to its rendered test-view features at full image
  resolution (a 3D field can be read at any resolution; the 2D teacher cannot). Both are scored
  against the ground truth with one confusion matrix over all test views. Labels come from the demo
  scene or from files (:mod:`featurefield.data.labels`): only labelled views count, unlabelled pixels
  (the files' ignore value) are left out, and a class no labelled train pixel shows cannot be
  predicted (it scores 0 where it appears; ``classes_not_in_train`` names it).

Where a run loses PSNR: the table names the lowest-scoring views, and ``featurefield eval RUN --worst N``
(or :func:`save_view_pictures`) draws each of the N worst as ground truth | render | error | opacity |
depth, one PNG a view.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.errors import FeatureFieldError
from featurefield.metrics import REGIONS, Lpips, confusion_matrix, content_regions, cosine_map, feature_fidelity, mask_iou, miou, psnr, ssim
from featurefield.run import Run, load_run


def _spread(views: list[int], max_views: int | None) -> list[int]:
    if not max_views or len(views) <= max_views:
        return list(views)
    return [views[int(i)] for i in np.linspace(0, len(views) - 1, max_views).round()]


def _labels_to_grid(labels: Tensor, grid: tuple[int, int]) -> Tensor:
    return F.interpolate(labels[None, None].float(), size=tuple(grid), mode="nearest")[0, 0].long()


def _upsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()


def _nearest_prototype(feats: Tensor, protos: Tensor, present: Tensor) -> Tensor:
    """``[h, w]`` class index of the most similar prototype for ``[D, h, w]`` features."""
    f = F.normalize(feats.float().flatten(1), dim=0)
    s = protos.to(f) @ f  # [C, h*w]
    s[~present.to(s.device)] = -3.0
    return s.argmax(0).reshape(feats.shape[-2:])


def _field_features(run: Run, teachers: list[str], view: int) -> dict[str, Tensor]:
    """The field's decoded features ``[D, H, W]`` per teacher at a scene view, at full image resolution (one render)."""
    cam = run.normalization.cameras_to_canonical(run.scene().cameras[[view]]).to(run.device)
    r = run.field.render(cam, background=run.background, features=True, colour=False)
    return {t: run.field.decode(r, t, (int(cam.height[0]), int(cam.width[0]))).float() for t in teachers}


@torch.no_grad()
def class_prototypes(run: Run, teachers: list[str], num_classes: int, max_views: int = 8,
                     source: str = "teacher") -> dict[str, tuple[Tensor, Tensor]]:
    """Mean normalized feature per class over train views, per teacher: ``[C, D]`` and ``[C]`` bool present.

    ``source`` is ``"teacher"`` (the 2D teacher's features of the images) or ``"field"`` (the field's
    rendered features, one render a view for every teacher): each segmenter is a nearest-class-mean probe
    fitted on its own features of the same train views and labels. Only labelled train views are used;
    unlabelled pixels (-1) and values past ``num_classes`` are left out, and a class that no such pixel
    shows is not ``present`` (never predicted).
    """
    scene = run.scene()
    views = _spread(scene.labelled_views(run.view_indices("train")), max_views)
    if not views:
        raise FeatureFieldError(f"{run.path}: no train view has a semantic label map; label some (README: Labels)")
    sums: dict[str, Tensor] = {}
    counts = {t: torch.zeros(num_classes) for t in teachers}
    cached = {t: run.feature_rows(t, views) for t in teachers} if source == "teacher" else None  # batched, read per view
    for k, v in enumerate(views):
        truth = scene.semantic(v)
        feats = ({t: torch.from_numpy(cached[t].read(k)).float() for t in teachers} if cached is not None
                 else _field_features(run, teachers, v))
        for t, f in feats.items():
            labels = _labels_to_grid(truth, f.shape[-2:]).flatten().cpu()
            fn = F.normalize(f.flatten(1), dim=0).T.cpu()  # [h*w, D]
            keep = (labels >= 0) & (labels < num_classes)
            sums.setdefault(t, torch.zeros(num_classes, fn.shape[1])).index_add_(0, labels[keep], fn[keep])
            counts[t] += torch.bincount(labels[keep], minlength=num_classes).float()
    return {t: (F.normalize(sums[t] / counts[t].clamp_min(1)[:, None], dim=-1), counts[t] > 0) for t in teachers}


def _sam_boxes(scene, view: int, min_area: float = 0.005, max_boxes: int = 6) -> tuple[list[Tensor], list[Tensor], str]:
    """Box prompts and their ground-truth masks for one view (alpha, else instances)."""
    from featurefield.query.prompts import box_from_mask

    alpha = scene.alpha(view)
    if alpha is not None:
        m = alpha > 0.5
        box = box_from_mask(m)
        return ([box], [m], "alpha") if box is not None else ([], [], "alpha")
    inst = scene.instance(view)
    if inst is None:
        return [], [], "none"
    boxes, masks = [], []
    ids, counts = torch.unique(inst, return_counts=True)
    for i, c in sorted(zip(ids.tolist(), counts.tolist()), key=lambda x: -x[1]):
        if i < 0 or i in scene.background_instances or c < min_area * inst.numel():
            continue
        m = inst == i
        boxes.append(box_from_mask(m))
        masks.append(m)
        if len(boxes) >= max_boxes:
            break
    return boxes, masks, "instances"


def _grid_points(height: int, width: int, n: int = 3) -> Tensor:
    """``[n * n, 2]`` (x, y) pixels of an even grid over the image, away from its border."""
    xs = (torch.arange(n) + 0.5) / n * width
    ys = (torch.arange(n) + 0.5) / n * height
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)


def _coverage(scene, view: int) -> Tensor | None:
    """``[H, W]`` scene content of a view in [0, 1]: ground-truth alpha, else depth > 0, else None."""
    alpha = scene.alpha(view)
    if alpha is not None:
        return alpha.reshape(alpha.shape[0], alpha.shape[1]).float()
    if scene.depths is not None:
        return (scene.depth(view) > 0).float()
    return None


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


@torch.no_grad()
def evaluate_run(run: Run | str | Path, splits: str = "test", max_views: int | None = None, *, lpips: bool = True,
                 pck_pairs: int = 4, pck_points: int = 256, match_side: int = 128, prompt_decoder=None,
                 semantic_train_views: int = 8, progress: bool = True, device: str = "auto") -> dict:
    """All metrics of a run (see module docstring); a JSON-able dict.

    The mask IoUs of prompts are made with the first teacher that decodes prompts (``prompt_decoder``: its
    decoder, default loaded from the run's weights) and stored under that teacher's name.
    """
    from rich.progress import track

    from featurefield.query.correspondence import evaluate_pair
    from featurefield.query.prompts import box_from_mask, prompt_mask
    from featurefield.query.selection import surface_depth

    if not isinstance(run, Run):
        run = load_run(run, device=device)
    scene = run.scene()
    views = _spread(run.view_indices(splits), max_views)
    if not views:
        raise FeatureFieldError(f"{run.path}: the {splits!r} split has no views to evaluate")
    cams = run.normalization.cameras_to_canonical(scene.cameras[views]).to(run.device)
    fld, teachers = run.field, run.teacher_names
    out: dict = {"run": str(run.path), "step": run.step, "split": splits, "views": len(views), "device": str(run.device)}

    lp = Lpips("alex", run.device) if lpips else None
    img = {"psnr": [], "ssim": [], "lpips": []}
    fid = {t: {"cosine": [], "rel_l2": []} for t in teachers}
    by_region = {t: torch.zeros(2, len(REGIONS), dtype=torch.float64) for t in teachers}  # cosine sums, cells
    depths: list[Tensor] = []
    depth_source = "scene" if scene.depths is not None else "rendered"

    # prompts decoded on the rendered and the teacher's features (a teacher with a prompt decoder, optional)
    prompting = next((t for t in teachers if t in run.prompt_teachers), None)
    sam: dict | None = None
    if prompting is not None:
        if prompt_decoder is None:
            try:
                prompt_decoder = run.prompt_decoder(teacher=prompting)
            except (FeatureFieldError, ImportError) as err:
                sam = {"unavailable": f"unavailable ({err})"}
        if sam is None:
            sam = {"rendered_vs_teacher": [], "rendered_vs_gt": [], "teacher_vs_gt": [], "teacher_box": [], "gt": None}

    # semantic segmentation (scenes with labels): probes fitted on labelled train views, scored on labelled eval views
    sem, sem_missing = {}, None
    ncls = len(scene.class_names) if scene.class_names else 0
    labelled_train = scene.labelled_views(run.view_indices("train"))
    if scene.semantics is not None and ncls and teachers:
        if not labelled_train or not scene.labelled_views(views):
            which = "train" if not labelled_train else f"evaluated ({splits})"
            sem_missing = f"unavailable (no {which} view has a semantic label map)"
        else:
            by_teacher = class_prototypes(run, teachers, ncls, semantic_train_views, source="teacher")
            by_field = class_prototypes(run, teachers, ncls, semantic_train_views, source="field")
            for t in teachers:
                (protos, present), (f_protos, f_present) = by_teacher[t], by_field[t]
                sem[t] = {"protos": protos, "present": present, "field_protos": f_protos, "field_present": f_present,
                          "field": torch.zeros(ncls, ncls, dtype=torch.int64),
                          "teacher": torch.zeros(ncls, ncls, dtype=torch.int64)}

    # the teachers' features of every evaluated view as one cached set (batched extraction of what is missing;
    # the trainer's final evaluation of the same views already wrote it), read one view at a time
    targets = {t: run.feature_rows(t, views) for t in teachers}
    it = track(range(len(views)), description="evaluate", transient=True) if progress else range(len(views))
    for k in it:
        v, cam = views[k], cams[k]
        r = fld.render(cam, background=run.background, features=bool(teachers))
        gt = scene.image(v).to(run.device)
        img["psnr"].append(psnr(r.rgb, gt))
        img["ssim"].append(ssim(r.rgb, gt))
        if lp is not None and lp.available:
            img["lpips"].append(lp(r.rgb, gt))
        H, W = gt.shape[:2]
        gt_labels = scene.semantic(v) if sem else None  # None: the view is unlabelled
        if k <= pck_pairs:  # the views of the correspondence pairs below
            if depth_source == "scene":
                d = scene.depth(v).float() * run.normalization.scale
                depths.append(torch.where(d > 0, d, torch.full_like(d, float("inf"))).to(run.device))
            else:
                depths.append(surface_depth(r))
        for t in teachers:
            target = torch.from_numpy(targets[t].read(k)).to(run.device, torch.float32)
            pred = fld.decode(r, t, tuple(target.shape[-2:]), as_teacher=True).float()
            for key, val in feature_fidelity(pred, target).items():
                fid[t][key].append(val)
            if fld.models_teacher_spill(t):  # the field's own features, without the 2D spill model
                plain = fld.decode(r, t, tuple(target.shape[-2:]), as_teacher=True, spill=False).float()
                fid[t].setdefault("cosine_without_spill", []).append(feature_fidelity(plain, target)["cosine"])
            if fld.teacher_sampling != "area":  # beside it, the same render averaged over each cell
                plain = fld.decode(r, t, tuple(target.shape[-2:])).float()
                fid[t].setdefault("cosine_area_averaged", []).append(feature_fidelity(plain, target)["cosine"])
            coverage = _coverage(scene, v)
            if coverage is not None:
                regions = content_regions(coverage.to(run.device), tuple(target.shape[-2:]))
                cos = cosine_map(pred, target).double()
                by_region[t][0].index_add_(0, regions.flatten().cpu(), cos.flatten().cpu())
                by_region[t][1].index_add_(0, regions.flatten().cpu(), torch.ones(cos.numel(), dtype=torch.float64))
            if t == prompting and sam is not None and "unavailable" not in sam:
                boxes, gts, gt_source = _sam_boxes(scene, v)
                sam["gt"] = gt_source
                # without masks to draw boxes from, the same point prompts on both: rendered vs teacher only
                prompts = [{"box": box} for box in boxes] or [{"points": p[None]} for p in _grid_points(H, W)]
                rendered = fld.decode(r, t, run.teacher(t).feature_grid(H, W)).float()
                for j, prompt in enumerate(prompts):
                    mr, _ = prompt_mask(prompt_decoder, rendered, (H, W), **prompt)
                    mt, _ = prompt_mask(prompt_decoder, target, (H, W), **prompt)
                    sam["rendered_vs_teacher"].append(mask_iou(mr, mt))
                    # a single point is ambiguous (SAM picks one of three masks by its own score), so beside it the
                    # box around the teacher's mask, prompted on both: the unambiguous kind of prompt lego's boxes are
                    teacher_box = None if boxes else box_from_mask(mt)
                    if teacher_box is not None:
                        mrb, _ = prompt_mask(prompt_decoder, rendered, (H, W), box=teacher_box)
                        mtb, _ = prompt_mask(prompt_decoder, target, (H, W), box=teacher_box)
                        sam["teacher_box"].append(mask_iou(mrb, mtb))
                    if boxes:
                        sam["rendered_vs_gt"].append(mask_iou(mr, gts[j]))
                        sam["teacher_vs_gt"].append(mask_iou(mt, gts[j]))
            if t in sem and gt_labels is not None:
                s = sem[t]
                full = fld.decode(r, t, (H, W)).float()  # the field is read at full resolution
                pred_f = _nearest_prototype(full, s["field_protos"], s["field_present"])
                pred_t = _nearest_prototype(target, s["protos"], s["present"])
                s["field"] += confusion_matrix(pred_f, gt_labels, ncls)
                s["teacher"] += confusion_matrix(_upsample_labels(pred_t, (H, W)), gt_labels, ncls)

    out["image"] = {"psnr": _mean(img["psnr"]), "ssim": _mean(img["ssim"]),
                    "lpips": _mean(img["lpips"]) if img["lpips"] else (lp.describe() if lp else "not computed"),
                    "psnr_per_view": {int(v): round(float(p), 3) for v, p in zip(views, img["psnr"])}}
    out["features"] = {t: {k: _mean(v) for k, v in d.items()} for t, d in fid.items()}
    for t, (sums, cells) in by_region.items():
        if cells.sum() > 0:
            out["features"][t]["cosine_by_region"] = {
                name: {"cosine": float(sums[i] / cells[i]) if cells[i] else float("nan"),
                       "share": float(cells[i] / cells.sum())} for i, name in enumerate(REGIONS)}
    if sam is not None:
        if "unavailable" in sam:
            out[prompting] = sam
        else:
            out[prompting] = {"prompts": len(sam["rendered_vs_teacher"]), "gt": sam["gt"],
                              "prompt": "boxes" if sam["rendered_vs_gt"] else "points (3 x 3 grid)",
                              "mask_iou_rendered_vs_teacher": _mean(sam["rendered_vs_teacher"])}
            if sam["teacher_box"]:
                out[prompting]["mask_iou_rendered_vs_teacher_box_of_teacher_mask"] = _mean(sam["teacher_box"])
            if sam["rendered_vs_gt"]:
                out[prompting].update({"iou_rendered_vs_gt": _mean(sam["rendered_vs_gt"]),
                                       "iou_teacher_vs_gt": _mean(sam["teacher_vs_gt"])})

    # correspondence PCK between consecutive evaluated views
    if teachers and len(views) > 1 and pck_pairs > 0:
        gen = torch.Generator().manual_seed(0)
        pairs = list(range(min(pck_pairs, len(views) - 1)))
        out["pck"] = {}
        for t in teachers:
            scores: dict[str, list[tuple[float, int]]] = {}
            total = 0
            for k in pairs:
                res, n = evaluate_pair(fld, cams[k], cams[k + 1], t, depths[k], depths[k + 1], pck_points, match_side,
                                       run.background, gen)
                total += n
                for key, val in res.items():
                    scores.setdefault(key, []).append((val, n))
            entry = {key: (sum(v * n for v, n in vals if n) / total if total else float("nan")) for key, vals in scores.items()}
            out["pck"][t] = {**entry, "pairs": len(pairs), "points": total, "depth": depth_source}
    if sem_missing is not None:
        out["semantic"] = {t: {"unavailable": sem_missing} for t in teachers}
    if sem:
        out["semantic"] = {}
        for t, s in sem.items():
            fm, fper = miou(s["field"])
            tm, tper = miou(s["teacher"])
            out["semantic"][t] = {"field_miou": fm, "teacher_miou": tm, "classes": list(scene.class_names),
                                  "field_per_class": fper, "teacher_per_class": tper,
                                  "train_views": min(semantic_train_views, len(labelled_train)),
                                  "views": len(scene.labelled_views(views)), "pixels": int(s["field"].sum()),
                                  "classes_not_in_train": [n for n, p in zip(scene.class_names, s["field_present"]) if not p]}
    return out


def worst_views(metrics: dict, n: int) -> list[tuple[int, float]]:
    """The ``n`` lowest-PSNR views of an :func:`evaluate_run` result, worst first, as ``(view, psnr)``."""
    per_view = metrics["image"]["psnr_per_view"]
    return sorted(((int(v), float(p)) for v, p in per_view.items()), key=lambda vp: vp[1])[:n]


def view_picture(run: Run, view: int) -> tuple[np.ndarray, float]:
    """One view of the run's scene: ground truth | render | error | opacity | depth, and the render's PSNR.

    The error is the per-pixel mean absolute colour difference, coloured from 0 to 0.25 (turbo: dark blue
    where render and truth agree). Returns ``([H + caption, 5 W + padding, 3]`` uint8, PSNR in dB).
    """
    from featurefield.viz import depth_image, heatmap, side_by_side

    scene = run.scene()
    cam = run.normalization.cameras_to_canonical(scene.cameras[[view]]).to(run.device)[0]
    with torch.no_grad():
        r = run.field.render(cam, background=run.background, features=False)
    gt = scene.image(view).to(run.device)
    H, W = gt.shape[:2]
    rgb = r.rgb.reshape(H, W, 3).clamp(0, 1)
    alpha = r.alpha.reshape(H, W).float()
    error = (rgb - gt).abs().mean(-1)
    db = psnr(rgb, gt)
    picture = side_by_side([gt, rgb, heatmap(error, 0.0, 0.25), alpha,
                            depth_image(r.depth.reshape(H, W), alpha)],
                           labels=[f"view {view}", f"render {db:.2f} dB", "|error| 0-0.25", "opacity", "depth"])
    return picture, db


def save_view_pictures(run: Run, views: list[int], folder: Path) -> list[Path]:
    """:func:`view_picture` of each view saved as ``folder/view_NNNN.png``; returns the paths in order."""
    from featurefield.viz import save_png

    return [save_png(Path(folder) / f"view_{v:04d}.png", view_picture(run, v)[0]) for v in views]
