"""The evaluation as a page that shows before it tells: ``featurefield eval RUN --html`` (and the demo's report).

Top to bottom: a strip of pictures of one test view (ground truth, render, each teacher's feature PCA,
a SAM mask where the run distils SAM, and the orbit video where one was rendered), the headline figures
in plain words with a verdict each (:func:`eval_headlines`), the training curves from the run's
``metrics.jsonl``, the pictures with colour bars, and the raw numbers folded at the bottom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from featurefield.report import Headline, Report, colour_stops, flatten_metrics, read_curves, verdict

#: the error pictures' scale: mean absolute RGB error 0..ERROR_MAX
ERROR_MAX = 0.25


def eval_headlines(metrics: dict) -> list[Headline]:
    """The figures of :func:`~featurefield.evaluate.evaluate_run`'s dict worth reading first, in plain words.

    Thresholds (ours, for a verdict at a glance): PSNR >= 28 dB good, >= 22 fair; SSIM >= 0.9 / 0.75;
    LPIPS <= 0.1 / 0.25; feature cosine to the teacher >= 0.9 / 0.75; SAM mask IoU >= 0.8 / 0.5;
    semantic mIoU >= 0.6 / 0.4.
    """
    out: list[Headline] = []
    image = metrics.get("image", {})
    if isinstance(image.get("psnr"), (int, float)):
        out.append(Headline("Picture quality (PSNR)", f"{image['psnr']:.1f} dB", verdict(image["psnr"], 28, 22),
                            "how closely renders of unseen views match the photos; above 30 dB is hard to tell apart"))
    if isinstance(image.get("ssim"), (int, float)):
        out.append(Headline("Structure (SSIM)", f"{image['ssim']:.3f}", verdict(image["ssim"], 0.9, 0.75),
                            "edges and textures in the right places; 1 is identical"))
    if isinstance(image.get("lpips"), (int, float)) and not np.isnan(image["lpips"]):
        out.append(Headline("Perceptual difference (LPIPS)", f"{image['lpips']:.3f}",
                            verdict(image["lpips"], 0.1, 0.25, higher_is_better=False),
                            "how different the renders look to a network trained to judge; 0 is identical"))
    for teacher, d in metrics.get("features", {}).items():
        if d.get("cosine") is not None:
            out.append(Headline(f"{teacher} features match the teacher", f"{d['cosine']:.3f}", verdict(d["cosine"], 0.9, 0.75),
                                f"cosine between the rendered {teacher} features and the teacher's own, per pixel; 1 is equal"))
    for teacher, prompts in metrics.items():  # a prompt-decoding teacher's block (evaluate_run keys it by name)
        iou = prompts.get("mask_iou_rendered_vs_teacher") if isinstance(prompts, dict) else None
        if iou is not None:
            out.append(Headline(f"{teacher} masks from the 3D field", f"{iou:.2f}", verdict(iou, 0.8, 0.5),
                                f"overlap (IoU) of {teacher}'s masks from rendered features with those from the photo's"))
    for teacher, d in metrics.get("semantic", {}).items():
        miou = d.get("field_miou", d.get("miou")) if isinstance(d, dict) else None
        if isinstance(miou, (int, float)):
            why = "mean IoU of classes found by the rendered features against the true labels"
            if isinstance(d.get("teacher_miou"), (int, float)):
                why += f" ({len(d.get('classes', []))} classes; the 2D teacher's own features: {d['teacher_miou']:.2f})"
            out.append(Headline(f"Objects told apart ({teacher})", f"{miou:.2f}", verdict(miou, 0.6, 0.4), why))
    return out


def _uint8(image) -> np.ndarray:
    from featurefield import viz

    return viz.to_uint8(image)[..., :3]


@torch.no_grad()
def view_strip(run, view: int, folder: Path, prefix: str = "") -> tuple[list[tuple[str, str]], list[tuple]]:
    """Pictures of test ``view`` saved in ``folder``: ``(strip items, picture-row items with colour bars)``,
    paths relative to ``folder.parent``. Strip: ground truth, render, each teacher's PCA, a SAM mask
    (prompted at the image centre's object) where the run has a prompt-decoding teacher and its decoder loads.
    Row: ground truth, render, error, depth, and the true labels where the view has a label map."""
    from featurefield import viz
    from featurefield.errors import FeatureFieldError
    from featurefield.render import pca_basis, pca_render

    folder = Path(folder)
    rel = folder.name
    scene = run.scene()
    camera = run.normalization.cameras_to_canonical(scene.cameras[[view]]).to(run.device)
    r = run.field.render(camera, background=run.background, features=False)
    gt = scene.image(view)[..., :3].float()

    def save(stem: str, picture) -> str:
        viz.save_png(folder / f"{prefix}{stem}.png", picture)
        return f"{rel}/{prefix}{stem}.png"

    strip = [(save("gt", _uint8(gt)), f"ground truth (view {view})"), (save("render", _uint8(r.rgb)), "render")]
    for teacher in run.teacher_names:
        picture, _ = pca_render(run, camera, teacher, pca_basis(run, teacher))
        strip.append((save(f"pca_{teacher}", picture), f"{teacher} features (PCA)"))
    if run.prompt_teachers:
        try:
            from featurefield.query.prompts import prompt_view
            from featurefield.query.selection import surface_depth

            depth = surface_depth(r)
            H, W = depth.shape
            ys, xs = torch.nonzero(torch.isfinite(depth), as_tuple=True)
            if len(xs):
                k = int(((xs.float() - W / 2) ** 2 + (ys.float() - H / 2) ** 2).argmin())
                point = torch.tensor([[float(xs[k]) + 0.5, float(ys[k]) + 0.5]])
                decoder = run.prompt_decoder("the strip's mask needs")
                mask, score, _ = prompt_view(run.field, camera, decoder, points=point, background=run.background)
                strip.append((save("sam_mask", viz.overlay_mask(_uint8(r.rgb), mask.cpu().numpy())),
                              f"SAM mask, a click at the centre (score {score:.2f})"))
        except FeatureFieldError:
            pass  # no decoder weights: the strip goes without
    error = (r.rgb.cpu().clamp(0, 1) - gt.cpu()).abs().mean(-1)
    near, far = viz.depth_range(r.depth[..., 0].cpu(), r.alpha[..., 0].cpu())
    lut = colour_stops(viz.colormap("turbo"))
    row = [(strip[0][0], "ground truth"), (strip[1][0], "render"),
           (save("error", viz.heatmap(error, 0.0, ERROR_MAX)), "|error|, mean over RGB", (0.0, ERROR_MAX, lut)),
           (save("depth", viz.depth_image(r.depth[..., 0].cpu(), r.alpha[..., 0].cpu(), near=near, far=far)),
            "rendered depth (canonical units)", (near, far, lut))]
    labels = scene.semantic(view)
    if labels is not None:
        row.append((save("labels", viz.labels_image(labels)), f"true labels ({len(scene.class_names or [])} classes)"))
    return strip, row


def eval_report(run, metrics: dict, path: Path, video: Path | None = None) -> Path:
    """Write the evaluation page to ``path`` (pictures in ``path.parent/pictures``); returns ``path``.
    ``video``: an orbit MP4 to put in the strip (default ``RUN/render/orbit_rgb.mp4`` where it exists)."""
    import os

    path = Path(path)
    views = sorted(int(v) for v in metrics.get("image", {}).get("psnr_per_view", {})) or run.view_indices("test")[:1]
    strip, row = view_strip(run, views[0], path.parent / "pictures")
    video = video if video is not None else Path(run.path) / "render" / "orbit_rgb.mp4"
    if video.is_file():
        strip.append((os.path.relpath(video, path.parent), "orbit (video)"))
    report = Report(f"featurefield eval · {Path(run.path).name}",
                    f"step {metrics.get('step')} · {metrics.get('views')} {metrics.get('split')} views · {metrics.get('device')}")
    report.strip(strip)
    report.headline(eval_headlines(metrics))
    log = Path(run.path) / "metrics.jsonl"
    if log.is_file():
        curves = read_curves(log)
        if curves:
            report.charts(curves, title="Training")
    report.images(row, title=f"View {views[0]}", width=200)
    report.fold("All the numbers")
    report.table(flatten_metrics({k: v for k, v in metrics.items() if k != "run"}), headers=("metric", "value"),
                 css_id="metrics")
    report.unfold()
    return report.write(path)
