"""``featurefield demo``: the whole pipeline on the built-in demo scene, one HTML report.

Stages (each one a library call, so the demo doubles as an example):

1. generate the procedural tabletop (:func:`featurefield.data.demo_scene.make_demo_scene`);
2. pick the teacher: ``sam`` where its weights are found (``--weights``, ``$FEATUREFIELD_WEIGHTS``,
   the user cache; with ``--fetch-weights`` first fetched into the cache when missing), else DINOv2
   with random weights, which is said on the console and in the report;
3. train a field (:func:`featurefield.train.train`), which extracts and caches the teacher features;
4. render the test views: RGB, depth and a PCA picture of the rendered features next to the ground
   truth and the teacher's own features (one PCA basis for both, so colours compare);
5. queries on the first test view, using the ground-truth instance map to pick an object: a SAM box
   prompt on the *rendered* features (sam only), a feature-similarity query from one clicked pixel,
   and a 3D selection lifted from the object's mask, re-rendered alone and deleted from another view;
6. evaluate (:func:`featurefield.evaluate.evaluate_run`) and write ``OUTPUT/report.html`` with the
   pictures (PNG files in ``OUTPUT/images``) and the metrics table; ``OUTPUT/metrics.json`` holds the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.commands.options import Device, opt
from featurefield.errors import FeatureFieldError
from featurefield.io import atomic_write_json, jsonable, resolve_device
from featurefield.stopping import TrainingStopped
from featurefield.teachers import DEFAULT_TEACHER, TeacherSpec

#: Training steps of the demo on CPU (keeps the default run within a few minutes on 2 cores).
CPU_STEPS = 520
#: Training steps of the demo on CUDA.
CUDA_STEPS = 7000

@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    output: Path
    report: Path
    run: Path
    teacher: str
    fallback: str | None
    metrics: dict
    images: list[Path] = field(default_factory=list)


#: the demo's teacher where the one asked for has no weights: DINOv2's architecture with random weights
FALLBACK_TEACHER = TeacherSpec("dino", {"pretrained": "random", "resolution": 224})


def choose_teacher(teacher: str, weights: Path | None = None, fetch: bool = False) -> tuple[TeacherSpec, str | None]:
    """The teacher spec to train with, and why it differs from the one asked for (``None`` if it does not).

    A teacher whose weights files are not found (``--weights``, ``$FEATUREFIELD_WEIGHTS``, the user cache: teachers
    with :attr:`~featurefield.teachers.base.Teacher.weights_folder`) falls back to :data:`FALLBACK_TEACHER`; with
    ``fetch``, its weights are first fetched (``featurefield weights NAME``) unless ``$HF_HUB_OFFLINE`` is set.
    """
    from featurefield.teachers import teacher_class

    spec = TeacherSpec.parse(teacher, weights)
    cls = teacher_class(spec.name)

    def present() -> bool:  # unknown (None) counts as present: the teacher says for itself when it loads
        return cls.describe(spec.options.get("weights"))["weights"] is not False

    # only weights found as files on disk (--weights) are looked for; a teacher whose weights come from its own
    # library's cache (or that runs with random weights) loads them, or says why, itself
    if not cls.weights_folder or present():
        return spec, None
    why = f"get them with `featurefield weights {spec.name}`"
    if fetch and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        why = "not fetched: $HF_HUB_OFFLINE is set"
    elif fetch:
        try:
            cls.fetch_weights(timeout=180.0)
        except FeatureFieldError as err:
            why = f"fetching them failed: {err}"
        if present():
            return spec, None
    prompts = f", and the {spec.name.upper()} box prompt is skipped" if cls.has_prompts else ""
    reason = (f"{spec.name.upper()} weights were not found (looked in --weights, $FEATUREFIELD_WEIGHTS and the user "
              f"cache; {why}). This demo uses DINOv2 with RANDOM weights instead: the pipeline runs end to end, but "
              f"its features carry no learned meaning{prompts}.")
    return TeacherSpec(FALLBACK_TEACHER.name, dict(FALLBACK_TEACHER.options), spec.weight), reason


def _uint8(img: Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _upsample(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    H, W = size
    return np.asarray(Image.fromarray(picture).resize((W, H), Image.NEAREST))


def _draw_box(img: np.ndarray, box: Tensor, color=(255, 220, 0)) -> np.ndarray:
    out = img.copy()
    H, W = out.shape[:2]
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = min(int(np.ceil(float(box[2]))) - 1, W - 1), min(int(np.ceil(float(box[3]))) - 1, H - 1)
    out[y0, x0:x1 + 1] = color
    out[y1, x0:x1 + 1] = color
    out[y0:y1 + 1, x0] = color
    out[y0:y1 + 1, x1] = color
    return out


def _iou(a: Tensor, b: Tensor) -> float:
    a, b = a.bool().cpu(), b.bool().cpu()
    union = (a | b).sum()
    return float((a & b).sum()) / float(union) if union > 0 else float("nan")


def _similarity(features: Tensor, uv: tuple[float, float], size: tuple[int, int]) -> Tensor:
    """Cosine similarity ``[H, W]`` of every position of ``features [D, h, w]`` to the one under pixel ``uv``."""
    _, h, w = features.shape
    H, W = size
    f = F.normalize(features.float(), dim=0)
    x = min(int(uv[0] * w / W), w - 1)
    y = min(int(uv[1] * h / H), h - 1)
    sim = torch.einsum("dhw,d->hw", f, f[:, y, x])
    return F.interpolate(sim[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]


def _pick_object(instances: Tensor) -> tuple[int, Tensor]:
    """The object instance (id >= 2) covering the most pixels of a view, and its mask."""
    ids, counts = torch.unique(instances, return_counts=True)
    objects = [(int(c), int(i)) for i, c in zip(ids, counts) if int(i) >= 2]
    if not objects:
        raise FeatureFieldError("demo: the first test view shows no object; try another --seed")
    _, best = max(objects)
    return best, instances == best


def _inner_pixel(mask: Tensor) -> tuple[float, float]:
    """A pixel well inside ``mask``: the one farthest from its border (a cheap distance transform)."""
    m = mask.float()[None, None]
    depth = torch.zeros_like(m)
    cur = m
    for _ in range(max(mask.shape)):
        if cur.sum() == 0:
            break
        depth += cur
        cur = -F.max_pool2d(-cur, 3, 1, 1)  # erode
    flat = int(depth.flatten().argmax())
    y, x = divmod(flat, mask.shape[1])
    return x + 0.5, y + 0.5


class _Pictures:
    """PNG files of the report, written as they are made into ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.written = folder, []

    def save(self, stem: str, picture: np.ndarray) -> str:
        """Write ``picture`` as ``stem.png``; returns its path relative to the report."""
        from featurefield import viz

        self.written.append(viz.save_png(self.folder / f"{stem}.png", picture))
        return f"{self.folder.name}/{stem}.png"


@dataclass
class _TestViews:
    """What stage 4 rendered: report rows, per-view numbers, and what the queries reuse."""

    rows: list
    per_view: list  # [view, PSNR, feature cosine]
    renders: dict  # scene view -> Render
    cameras: object  # canonical test cameras
    teacher_features: Tensor  # [V, D, h, w] the teacher's features of the test views


@dataclass
class _Queries:
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def _prepare_output(output: Path, overwrite: bool) -> tuple[Path, Path]:
    """``(run folder, picture folder)`` inside ``output``, emptied with ``overwrite``, else refused when used."""
    run_dir, image_dir = output / "run", output / "images"
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FeatureFieldError(f"{output}: already holds a demo run; pass --overwrite to replace it or choose another --output")
        shutil.rmtree(run_dir)
    if overwrite and image_dir.exists():
        shutil.rmtree(image_dir)
    output.mkdir(parents=True, exist_ok=True)
    return run_dir, image_dir


def _train(scene, run_dir: Path, field: str, spec: TeacherSpec, steps: int, seed: int, device, cache_dir,
           progress: bool):
    """Stage 3: train the field on the scene with the teacher; returns the loaded run."""
    from featurefield.fields.registry import field_spec
    from featurefield.train import TrainConfig, train

    field_config = field_spec(field).config_class()()
    if getattr(field_config, "feature_loss", None) == "l1":
        # L1 + cosine where a field offers it (the Gaussian field): on this scene (520 CPU steps) feature cosine
        # 0.850 vs 0.825 with L1 alone, and semantic mIoU 0.582 vs 0.566, beating the 2D teacher's 0.572
        # (BENCHMARKS.md, "CPU demo"); with the learnt background map (the default since), cosine 0.889 vs 0.881
        field_config = dataclasses.replace(field_config, feature_loss="l1+cos")
    return train(scene, run_dir, field=field, teachers=[spec], field_config=field_config,
                 config=TrainConfig(steps=steps, seed=seed, device=str(device), cache_dir=cache_dir, progress=progress,
                                    checkpoint_every=max(steps, 1), log_every=max(1, min(100, steps // 10))))


def _render_test_views(run, scene, name: str, pictures: _Pictures) -> _TestViews:
    """Stage 4: each test view rendered beside its truth, depth, labels and PCA pictures of the features."""
    from featurefield import viz
    from featurefield.eval_report import ERROR_MAX
    from featurefield.metrics import psnr
    from featurefield.report import colour_stops

    fld, bg, scale = run.field, run.background, run.normalization.scale
    save = pictures.save
    test_views = list(scene.split["test"])
    cams = run.normalization.cameras_to_canonical(scene.cameras[test_views]).to(run.device)
    teacher_feats = run.features(name, test_views).float()  # [V, D, h, w]
    grid = tuple(teacher_feats.shape[-2:])
    basis = viz.fit_pca(teacher_feats.permute(0, 2, 3, 1).reshape(-1, teacher_feats.shape[1]))
    rows, per_view, renders = [], [], {}
    with torch.no_grad():
        for k, v in enumerate(test_views):
            r = renders[v] = fld.render(cams[k], background=bg, features=True)
            gt = scene.image(v)
            size_hw = tuple(gt.shape[:2])
            pred_feats = fld.decode(r, name, grid).float().cpu()  # the field's own
            # compared as `featurefield eval` does: through what the teacher sees (its background, spill)
            seen = fld.decode(r, name, grid, as_teacher=True).float().cpu()
            cos = float(F.cosine_similarity(seen, teacher_feats[k], dim=0).mean())
            db = psnr(r.rgb.cpu(), gt)
            per_view.append([v, db, cos])
            err = (r.rgb.cpu().clamp(0, 1) - gt).abs().mean(-1)
            near, far = viz.depth_range(scene.depth(v))  # one colour scale for true and rendered depth
            bar = colour_stops(viz.colormap("turbo"))
            rows.append((f"test view {v}: PSNR {db:.2f} dB, feature cosine {cos:.3f}", [
                (save(f"view{v:03d}_gt", _uint8(gt)), "ground truth"),
                (save(f"view{v:03d}_rgb", _uint8(r.rgb)), "rendered RGB"),
                (save(f"view{v:03d}_error", viz.heatmap(err, 0.0, ERROR_MAX)), "|error|, mean over RGB",
                 (0.0, ERROR_MAX, bar)),
                (save(f"view{v:03d}_depth_gt", viz.depth_image(scene.depth(v), near=near, far=far)), "true depth",
                 (near, far, bar)),
                (save(f"view{v:03d}_depth", viz.depth_image(r.depth[..., 0].cpu() / scale, r.alpha[..., 0].cpu(),
                                                            near=near, far=far)), "rendered depth", (near, far, bar)),
                (save(f"view{v:03d}_instances", viz.labels_image(scene.instance(v))), "true instances"),
                (save(f"view{v:03d}_pca_teacher", _upsample(viz.pca_image(teacher_feats[k], basis), size_hw)),
                 f"{name} features of the image (PCA)"),
                (save(f"view{v:03d}_pca_rendered", _upsample(viz.pca_image(pred_feats, basis), size_hw)),
                 f"rendered {name} features (PCA)"),
                (save(f"view{v:03d}_pca_seen", _upsample(viz.pca_image(seen, basis), size_hw)),
                 "the same as compared with the teacher: with what it sees through empty space (PCA)"),
            ]))
    return _TestViews(rows, per_view, renders, cams, teacher_feats)


def _box_prompt(run, scene, name: str, views: _TestViews, v0: int, box, gt_mask, obj_class: str,
                pictures: _Pictures, out: _Queries):
    """Stage 5a: SAM's box prompt on the rendered features and on the real image's; returns the rendered
    mask (``None`` when skipped) for the 3D selection to lift."""
    from featurefield import viz
    from featurefield.query.prompts import prompt_mask, prompt_view

    save, rgb0 = pictures.save, _uint8(views.renders[v0].rgb)
    H, W = gt_mask.shape
    try:
        decoder = run.prompt_decoder("the box prompt needs", teacher=name)
        mask_r, score, _ = prompt_view(run.field, views.cameras[0], decoder, box=box, teacher=name,
                                       background=run.background)
        mask_t, _ = prompt_mask(decoder, views.teacher_features[0].to(run.device), (H, W), box=box)
    except FeatureFieldError as err:
        out.notes.append(f"SAM box prompt skipped: {err}")
        return None
    out.metrics["sam box prompt: IoU rendered mask vs truth"] = _iou(mask_r, gt_mask)
    out.metrics["sam box prompt: IoU teacher mask vs truth"] = _iou(mask_t, gt_mask)
    out.metrics["sam box prompt: IoU rendered vs teacher mask"] = _iou(mask_r, mask_t)
    image0 = _uint8(scene.image(v0))
    out.rows.append((f"SAM box prompt around the {obj_class} (from the true instance map)", [
        (save("query_box_truth", _draw_box(viz.overlay_mask(image0, gt_mask.numpy(), (60, 200, 60)), box)),
         "true mask + box"),
        (save("query_box_rendered", _draw_box(viz.overlay_mask(rgb0, mask_r.cpu().numpy()), box)),
         f"mask from rendered features (score {score:.2f})"),
        (save("query_box_teacher", _draw_box(viz.overlay_mask(image0, mask_t.cpu().numpy(), (70, 110, 230)), box)),
         "mask from the image's own SAM features"),
    ]))
    return mask_r.cpu()


def _similarity_query(run, name: str, views: _TestViews, v0: int, gt_mask, obj_class: str, pictures: _Pictures,
                      out: _Queries) -> None:
    """Stage 5b: feature similarity to one clicked pixel inside the object."""
    from featurefield import viz

    H, W = gt_mask.shape
    rgb0 = _uint8(views.renders[v0].rgb)
    click = _inner_pixel(gt_mask)
    feats0 = run.field.decode(views.renders[v0], name, tuple(views.teacher_features.shape[-2:])).float().cpu()
    sim = _similarity(feats0, click, (H, W))
    thresh = 0.5 * (float(sim.median()) + 1.0)
    sim_mask = sim >= thresh
    out.metrics[f"{name} similarity query: IoU vs truth"] = iou = _iou(sim_mask, gt_mask)
    marked = rgb0.copy()
    cx, cy = int(click[0]), int(click[1])
    marked[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2] = (255, 0, 255)
    failed = f" (IoU {iou:.2f} with the true {obj_class})" if iou < 0.3 else ""  # mostly not the object
    out.rows.append((f"{name} feature similarity to one pixel of the {obj_class}{failed}", [
        (pictures.save("query_click", marked), f"clicked pixel ({cx}, {cy})"),
        (pictures.save("query_similarity", viz.heatmap(sim, float(sim.median()), 1.0)),
         f"cosine similarity ({float(sim.median()):.2f}..1)"),
        (pictures.save("query_similarity_mask", viz.overlay_mask(rgb0, sim_mask.numpy())), f"similarity >= {thresh:.2f}"),
    ]))


def _selection_3d(run, scene, views: _TestViews, v0: int, v1: int, obj: int, obj_class: str, lift_mask,
                  lift_source: str, pictures: _Pictures, out: _Queries) -> None:
    """Stage 5c: lift a mask of view ``v0`` to 3D, render the selection alone and deleted from view ``v1``."""
    from featurefield import viz
    from featurefield.query.selection import lift_masks, render_selection, spread_views

    fld, bg = run.field, run.background
    H, W = lift_mask.shape
    cam0 = views.cameras[0]
    cam1 = run.normalization.cameras_to_canonical(scene.cameras[[v1]]).to(run.device)
    # one view's mask leaves the object's back and inside behind: the true masks of training views around it too
    train_views = list(scene.split["train"])
    train_cams = run.normalization.cameras_to_canonical(scene.cameras[train_views]).to(run.device)
    around = [k for k in spread_views(train_cams, _object_centre(fld, cam0, lift_mask), 5, start=cam0.centers[0])
              if (scene.instance(train_views[k]) == obj).any()]
    sel, points = lift_masks(fld, [cam0, *(train_cams[[k]] for k in around)],
                             [lift_mask.to(run.device), *((scene.instance(train_views[k]) == obj).to(run.device)
                                                          for k in around)], max_points=100_000)
    out.metrics["3D selection: points selected"] = len(sel)
    gt1 = scene.instance(v1) == obj
    uv, z = cam1.project(points["xyz"][sel.keep.to(points["xyz"].device)].float(), 0)
    u, vv = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    ok = (z > 0) & (u >= 0) & (u < W) & (vv >= 0) & (vv < H)
    if ok.any():
        out.metrics[f"3D selection: share of selected points on the {obj_class} in view {v1}"] = float(
            gt1.to(u.device)[vv[ok], u[ok]].float().mean())
    try:
        only = render_selection(fld, cam1, points, sel.keep, background=bg)
        rest = render_selection(fld, cam1, points, sel.keep, invert=True, background=bg)
    except FeatureFieldError as err:
        out.notes.append(f"3D selection rendering skipped: {err}")
        return
    out.metrics[f"3D selection: IoU of the selection's silhouette vs truth in view {v1}"] = _iou(
        only.alpha[..., 0].cpu() > 0.5, gt1)
    rgb0 = _uint8(views.renders[v0].rgb)
    out.rows.append((f"3D selection lifted from {lift_source} in view {v0} (and the true masks of {len(around)} "
                     f"training views around it), seen from view {v1}", [
        (pictures.save("selection_mask", viz.overlay_mask(rgb0, lift_mask.numpy())), f"mask in view {v0}"),
        (pictures.save("selection_truth", viz.overlay_mask(_uint8(scene.image(v1)), gt1.numpy(), (60, 200, 60))),
         f"true {obj_class} in view {v1}"),
        (pictures.save("selection_only", _uint8(only.rgb)), "selection rendered alone"),
        (pictures.save("selection_deleted", _uint8(rest.rgb)), "scene with the selection deleted"),
    ]))


def _queries(run, scene, name: str, views: _TestViews, pictures: _Pictures) -> _Queries:
    """Stage 5: queries on the first test view, about the object covering most of it (true instance map).

    The 3D selection is also shown from a second view: another test view when there is one, else the view a
    third of the ring away.
    """
    from featurefield.query.prompts import box_from_mask

    out = _Queries()
    test_views = list(scene.split["test"])
    v0 = test_views[0]
    v1 = test_views[len(test_views) // 2] if len(test_views) > 1 else (v0 + max(1, len(scene) // 3)) % len(scene)
    obj, gt_mask = _pick_object(scene.instance(v0))
    obj_class = scene.metadata["instance_classes"][obj]
    box = box_from_mask(gt_mask, margin=2.0)
    with torch.no_grad():
        lifted = None
        if name in run.prompt_teachers:
            lifted = _box_prompt(run, scene, name, views, v0, box, gt_mask, obj_class, pictures, out)
        else:
            out.notes.append(f"SAM box prompt skipped: the run's teacher ({name}) decodes no prompts; the 3D "
                             "selection lifts the true instance mask instead.")
        _similarity_query(run, name, views, v0, gt_mask, obj_class, pictures, out)
        if lifted is None:
            lifted, source = gt_mask, "the true instance mask"
        else:
            source = "the SAM mask of the rendered features"
        _selection_3d(run, scene, views, v0, v1, obj, obj_class, lifted, source, pictures, out)
    return out


def _evaluate(run, per_view: list, progress: bool) -> tuple[dict, str | None]:
    """Stage 6: ``featurefield eval``'s metrics of the test views, and a note when they could not be computed."""
    try:
        from featurefield.evaluate import evaluate_run

        metrics = jsonable(evaluate_run(run, "test", progress=progress))
    except ImportError as err:  # evaluate is optional for the demo: fall back to our own PSNR
        note = f"featurefield.evaluate is unavailable ({err}); the table shows the demo's own PSNR only"
        return {"image": {"psnr": float(np.mean([p for _, p, _ in per_view]))}}, note
    metrics.pop("run", None)
    return metrics, None


def _object_centre(field, camera, mask) -> torch.Tensor:
    """``[3]``: the mean 3D point of the rendered surface inside ``mask`` ``[H, W]`` at ``camera``."""
    import torch

    from featurefield.query.correspondence import unproject
    from featurefield.query.selection import surface_depth

    depth = surface_depth(field.render(camera, features=False))
    ys, xs = torch.nonzero(mask.to(depth.device).bool() & torch.isfinite(depth), as_tuple=True)
    if not len(xs):
        return camera.centers[0] + camera.c2w[0, :3, 2]
    uv = torch.stack([xs.float() + 0.5, ys.float() + 0.5], -1)
    return unproject(camera, uv, depth[ys, xs]).mean(0)


def _orbit_video(run, path: Path, frames: int = 48) -> Path | None:
    """An orbit of the run's colour as an MP4 at ``path`` (None where no video could be written)."""
    import torch

    from featurefield import viz
    from featurefield.camera_paths import orbit_path

    cams = orbit_path(run.cameras("train"), frames=frames).to(run.device)
    with torch.no_grad():
        pictures = [_uint8(run.field.render(cams[k], background=run.background, features=False).rgb)
                    for k in range(len(cams))]
    written = viz.write_video(path, pictures, fps=24)
    return written if written.suffix == ".mp4" else None


def _write_report(output: Path, run_dir: Path, subtitle: str, fallback: str | None, eval_note: str | None,
                  metrics: dict, views: _TestViews, queries: _Queries, name: str, width: int,
                  timings: dict, orbit: Path | None = None) -> Path:
    """Stage 7: ``OUTPUT/report.html``, pictures first: a strip (ground truth, render, feature PCA, SAM mask,
    the ``orbit`` video), the figures in plain words, the training curves, the test views and queries with
    colour bars, the raw tables folded."""
    from featurefield.eval_report import eval_headlines
    from featurefield.report import Headline, Report, flatten_metrics, read_curves, verdict

    report = Report("featurefield demo", subtitle)
    if fallback:
        report.note(fallback, level="warning")
    first = views.rows[0][1]  # ground truth, render, error, depths, instances, PCA of the image, PCA rendered
    strip = [first[0][:2], first[1][:2], (first[7][0], f"rendered {name} features (PCA)")]
    box = next((items for title, items in queries.rows if title.startswith("SAM box prompt")), None)
    if box:
        strip.append((box[1][0], "SAM mask from the rendered features"))
    if orbit is not None:
        strip.append((orbit.name, "orbit (video)"))
    report.strip(strip)
    headlines = eval_headlines(metrics)
    iou = queries.metrics.get(f"{name} similarity query: IoU vs truth")
    if iou is not None:
        headlines.append(Headline("Finding an object by its features", f"{iou:.2f}", verdict(iou, 0.6, 0.3),
                                  "overlap (IoU) of the pixels most like one clicked pixel with the true object"))
    report.headline(headlines)
    if eval_note:
        report.note(eval_note, level="warning")
    curves = read_curves(run_dir / "metrics.jsonl")
    if curves:
        report.charts(curves, title="Training")
    report.heading("Test views")
    report.paragraph("Each row: ground truth, the field's render, its error, depth (true and rendered), the true "
                     "instance labels, and PCA pictures of the teacher's features of the real image and of the "
                     "features rendered by the field (one PCA basis for both, so equal colours mean equal features).")
    for title, items in views.rows:
        report.images(items, title=title, width=width)
    report.heading("Queries")
    for text in queries.notes:
        report.note(text)
    for title, items in queries.rows:
        report.images(items, title=title, width=width, failed="(IoU " in title)
    report.fold("All the numbers: metrics, queries, per view, timings")
    report.table(flatten_metrics(metrics), headers=("metric (test views)", "value"), css_id="metrics")
    report.table([(k, v) for k, v in queries.metrics.items()], headers=("query", "value"), title="Queries")
    report.table(views.per_view, headers=("test view", "PSNR (dB)", f"{name} feature cosine"), title="Per view")
    report.table([(k, round(v, 2)) for k, v in timings.items()], headers=("stage", "seconds"), title="Timings")
    report.unfold()
    report.paragraph(f"Run folder: {run_dir} (open it in the browser with `featurefield view {run_dir}`; reload it with "
                     f"featurefield.run.load_run, or use `featurefield render`, `featurefield query`, `featurefield eval` on it).")
    return report.write(output / "report.html")


def run_demo(output: Path = Path("featurefield-demo"), field: str = "splat", teacher: str = DEFAULT_TEACHER,
             steps: int | None = None, size: int = 128, views: int = 32, device: str = "auto", seed: int = 0,
             weights: Path | None = None, cache_dir: Path | None = None, overwrite: bool = False,
             progress: bool = True, fetch_weights: bool = False) -> DemoResult:
    """Run the demo pipeline (see module docstring) and return what it wrote."""
    from rich.console import Console

    from featurefield.data.demo_scene import make_demo_scene

    console = Console(stderr=True)
    output = Path(output)
    run_dir, image_dir = _prepare_output(output, overwrite)
    dev = resolve_device(device)
    steps = steps or (CUDA_STEPS if dev.type == "cuda" else CPU_STEPS)
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()

    def lap(stage: str) -> float:
        nonlocal t
        now = time.perf_counter()
        timings[stage], t = now - t, now
        return timings[stage]

    console.print(f"[bold]featurefield demo[/bold]: {size}x{size} tabletop, {views} views, seed {seed}, "
                  f"{field} field, device {dev}")
    scene = make_demo_scene(seed=seed, size=size, views=views)
    console.print(f"scene generated in {lap('scene'):.1f} s: {len(scene.split['train'])} train / "
                  f"{len(scene.split['test'])} test views, objects: "
                  + ", ".join(o["class"] for o in scene.metadata["objects"]))

    spec, fallback = choose_teacher(teacher, weights, fetch=fetch_weights)
    if fallback:
        console.print(f"[bold yellow]warning:[/bold yellow] {fallback}")
    name = spec.name
    t = time.perf_counter()

    try:
        run = _train(scene, run_dir, field, spec, steps, seed, dev, cache_dir, progress)
    except TrainingStopped as err:  # the demo has no --resume: say what its own command line offers
        raise TrainingStopped(err.signum, err.what, f"run `featurefield demo` again with --overwrite to start over "
                              f"(or `featurefield train {field} demo:{seed} --output {run_dir} --resume` to finish the "
                              "training alone)") from err
    lap("train (features + fit)")
    summary = json.loads((run_dir / "metrics.json").read_text())
    if "feature_seconds" in summary:
        timings["teacher features"] = float(summary["feature_seconds"])
    console.print(f"trained {steps} steps in {timings['train (features + fit)']:.1f} s")

    image_dir.mkdir(parents=True, exist_ok=True)
    pictures = _Pictures(image_dir)
    test = _render_test_views(run, scene, name, pictures)
    lap("render test views")
    queries = _queries(run, scene, name, test, pictures)
    lap("queries")
    metrics, eval_note = _evaluate(run, test.per_view, progress)
    lap("evaluate")
    timings["total"] = time.perf_counter() - t0
    record = {"scene": {"seed": seed, "size": size, "views": views}, "field": field, "teacher": spec.to_dict(),
              "teacher_asked": teacher, "fallback": fallback, "steps": steps, "device": str(dev),
              "evaluate": metrics, "queries": queries.metrics,
              "per_view": [dict(zip(("view", "psnr", "cosine"), p)) for p in test.per_view], "timings_s": timings}
    atomic_write_json(output / "metrics.json", jsonable(record))

    subtitle = (f"Built-in tabletop scene (seed {seed}, {size}x{size}, {views} views) · {field} field · "
                f"teacher {name} · {steps} steps on {dev}")
    orbit = _orbit_video(run, output / "orbit.mp4")
    report_path = _write_report(output, run_dir, subtitle, fallback, eval_note, metrics, test, queries, name,
                                max(size, 128), timings, orbit)
    console.print(f"[bold green]wrote[/bold green] {report_path} ({len(pictures.written)} pictures) in "
                  f"{timings['total']:.0f} s; explore the run with `featurefield view {run_dir}`")
    if fallback:
        console.print("[bold yellow]note:[/bold yellow] the teacher was DINOv2 with random weights (SAM weights missing)")
    return DemoResult(output, report_path, run_dir, name, fallback, record, pictures.written)


def demo_command(
    output: Annotated[Path, opt("FOLDER")] = Path("featurefield-demo"),
    field: Annotated[str, opt("FIELD")] = "splat",
    teacher: Annotated[str, opt("NAME")] = DEFAULT_TEACHER,
    steps: Annotated[int | None, opt("INT", "520 on the CPU, 7000 on CUDA")] = None,
    size: Annotated[int, opt("PIXELS")] = 128,
    views: int = 32,
    device: Device = "auto",
    seed: int = 0,
    weights: Annotated[Path | None, opt("PATH", "$FEATUREFIELD_WEIGHTS, else the user cache")] = None,
    cache_dir: Annotated[Path | None, opt("FOLDER", "$FEATUREFIELD_CACHE, else the user cache")] = None,
    overwrite: bool = False,
    fetch_weights: bool = False,
) -> int:
    """Run the whole pipeline on the built-in demo scene and write OUTPUT/report.html (downloads nothing unless --fetch-weights).

    Args:
        output: folder for the report, its pictures and the run (OUTPUT/run).
        field: splat (3D Gaussians) or nerf (hash grids).
        teacher: the teacher to distill; sam falls back to DINOv2 with random weights where its weights are missing.
        steps: training steps.
        size: image side of the demo scene, in pixels.
        views: number of views of the demo scene.
        seed: seed of the scene and the training.
        weights: the SAM weights file or folder; the run records where they were found, so view, eval and query
            find them again.
        cache_dir: teacher feature cache folder.
        overwrite: replace a previous demo in OUTPUT.
        fetch_weights: where the SAM weights are missing, fetch them first (featurefield weights sam, through npm).
    """
    run_demo(output, field, teacher, steps, size, views, device, seed, weights, cache_dir, overwrite,
             fetch_weights=fetch_weights)
    return 0
