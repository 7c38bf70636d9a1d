"""``featurefield eval``: evaluate a trained run, print a table of the headline numbers, write the JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from featurefield.commands.options import Device, RunWeights, opt
from featurefield.errors import FeatureFieldError
from featurefield.evaluate import evaluate_run, save_view_pictures, worst_views
from featurefield.io import atomic_write_json, jsonable
from featurefield.run import load_run


def lpips_note(metrics: dict) -> str | None:
    """One line saying why LPIPS was not computed (None when it was, or was not asked for)."""
    value = metrics.get("image", {}).get("lpips")
    if not isinstance(value, str) or value == "not computed":
        return None
    reason = value.removeprefix("unavailable (").removesuffix(")")
    return f"LPIPS not computed: {reason} (or pass --no-lpips)"


def metrics_table(metrics: dict, worst: int = 3):
    """A rich Table of the headline numbers; ``worst``: how many lowest-PSNR views to name."""
    from rich.table import Table

    def fmt(x):
        if isinstance(x, float):
            return "n/a" if math.isnan(x) else f"{x:.4f}"
        return str(x)

    table = Table(title=f"{metrics['run']} · step {metrics['step']} · {metrics['views']} {metrics['split']} views")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics["image"].items():
        if isinstance(v, str):  # e.g. LPIPS without its weights: one line after the table (lpips_note)
            table.add_row(k.upper(), "not computed")
        elif not isinstance(v, dict):  # psnr_per_view stays in the JSON
            table.add_row(k.upper(), fmt(v))
    if len(metrics["image"].get("psnr_per_view", {})) > 1 and worst > 0:
        lowest = worst_views(metrics, worst)
        label = "lowest PSNR" if len(lowest) == 1 else f"{len(lowest)} lowest PSNRs"
        table.add_row(f"{label} (view: dB)", ", ".join(f"#{v}: {p:.2f}" for v, p in lowest))
    for t, d in metrics.get("features", {}).items():
        table.add_row(f"{t} feature cosine", fmt(d["cosine"]))
        if "cosine_without_spill" in d:
            table.add_row(f"{t} feature cosine without the spill model", fmt(d["cosine_without_spill"]))
        if "cosine_area_averaged" in d:
            table.add_row(f"{t} feature cosine, render averaged over each cell", fmt(d["cosine_area_averaged"]))
        for name, r in d.get("cosine_by_region", {}).items():
            table.add_row(f"  {name} cells ({r['share']:.0%})", fmt(r["cosine"]))
        table.add_row(f"{t} feature rel. L2", fmt(d["rel_l2"]))
    for t in metrics.get("features", {}):
        prompts = metrics.get(t)  # mask IoUs of the teacher that decodes prompts
        if not isinstance(prompts, dict):
            continue
        if "unavailable" in prompts:
            table.add_row(f"{t} mask IoU", prompts["unavailable"])
            continue
        what = prompts.get("prompt", "boxes").split(" ")[0]
        table.add_row(f"{t} mask IoU rendered vs teacher ({prompts['prompts']} {what})",
                      fmt(prompts["mask_iou_rendered_vs_teacher"]))
        if "iou_rendered_vs_gt" in prompts:
            table.add_row(f"{t} IoU rendered vs {prompts['gt']}", fmt(prompts["iou_rendered_vs_gt"]))
            table.add_row(f"{t} IoU teacher vs {prompts['gt']}", fmt(prompts["iou_teacher_vs_gt"]))
    for t, d in metrics.get("pck", {}).items():
        table.add_row(f"{t} PCK@1/2/5% ({d['points']} pts, {d['depth']} depth)",
                      " / ".join(fmt(d[k]) for k in ("pck@0.01", "pck@0.02", "pck@0.05")))
    for t, d in metrics.get("semantic", {}).items():
        if "unavailable" in d:
            table.add_row(f"{t} semantic mIoU", d["unavailable"])
            continue
        table.add_row(f"{t} semantic mIoU field ({len(d['classes'])} classes, {d['views']} views)", fmt(d["field_miou"]))
        table.add_row(f"{t} semantic mIoU 2D teacher", fmt(d["teacher_miou"]))
        if d.get("classes_not_in_train"):
            table.add_row("  classes no train label shows", ", ".join(d["classes_not_in_train"]))
    return table


def eval_command(run: Path, /, output: Annotated[Path | None, opt("FILE", "RUN/eval/metrics.json")] = None,
                 max_views: Annotated[int | None, opt("INT", "all of them")] = None, device: Device = "auto",
                 split: Literal["test", "train", "all"] = "test", lpips: bool = True,
                 worst: Annotated[int, opt("N", "0, none")] = 0, html: bool = False, weights: RunWeights = None) -> int:
    """Evaluate a trained RUN: PSNR/SSIM/LPIPS, feature fidelity, SAM mask IoU, PCK, semantic mIoU.

    Args:
        run: run folder written by `featurefield train`.
        output: JSON file to write.
        max_views: evaluate at most this many views of the split (evenly spaced).
        split: which views.
        lpips: compute LPIPS (needs the AlexNet weights of torchvision on disk; never downloaded).
        worst: also draw the N lowest-PSNR views (ground truth | render | error | opacity | depth) as PNGs
            in a folder worst/ beside the JSON.
        html: also write report.html beside the JSON: pictures first (ground truth, render, feature PCA,
            a SAM mask), the figures in plain words, the training curves, the raw numbers folded.
    """
    from rich.console import Console

    from featurefield.outputs import at_least, check_output_dir, check_output_file

    if worst < 0:
        raise FeatureFieldError(f"--worst must be 0 or more, got {worst}")
    at_least("--max-views", max_views)
    if split not in ("test", "train", "all"):
        raise FeatureFieldError(f"--split must be test, train or all, got {split!r}")
    target = output or Path(run) / "eval" / "metrics.json"
    check_output_file(target, default=output is None)
    if worst:
        check_output_dir(target.parent / "worst", default=output is None)
    loaded = load_run(run, device=device, weights=weights)
    metrics = evaluate_run(loaded, split, max_views, lpips=lpips)
    path = output or Path(run) / "eval" / "metrics.json"
    atomic_write_json(path, jsonable(metrics))
    console = Console()
    console.print(metrics_table(metrics, worst=worst or 3))
    note = lpips_note(metrics)
    if note:
        console.print(note, soft_wrap=True, highlight=False)
    console.print(f"wrote {path}")
    if worst:
        folder = path.parent / "worst"
        saved = save_view_pictures(loaded, [v for v, _ in worst_views(metrics, worst)], folder)
        console.print(f"{len(saved)} lowest-PSNR views drawn in {folder}")
    if html:
        from featurefield.eval_report import eval_report

        console.print(f"wrote {eval_report(loaded, jsonable(metrics), path.parent / 'report.html')}")
    return 0
