"""``featurefield query RUN``: text or SAM prompt queries at a view; optional 3D extraction as PLY.

Writes into ``--output`` (default ``RUN/queries/view_NNNN``): ``rgb.png``; per phrase
``relevancy_<phrase>.png`` (heatmap) and ``mask_<phrase>.png``; for prompts ``mask_prompt.png``;
with ``--extract`` a world-frame PLY of the selected Gaussians/points (``<phrase>.ply`` or
``prompt.ply``). ``--everything`` writes ``segments.png`` (SAM's "segment everything" from the rendered
features) and, with ``--extract``, ``segment_NN.ply`` per segment.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from featurefield import viz
from featurefield.errors import FeatureFieldError
from featurefield.run import Run, load_run


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "query"


def text_teacher(run: Run, name: str | None = None):
    """The run's teacher with a text encoder (``name`` or the first one), or a one-line error naming them."""
    if name is not None and name not in run.teacher_names:
        raise FeatureFieldError(f"{run.path}: run has no teacher {name!r}; it was trained with "
                                f"{', '.join(run.teacher_names) or 'no teachers'}")
    has_text = [t for t in run.teacher_names if run.teacher(t).has_text]
    if name is not None and name not in has_text:
        hint = f"use --teacher {has_text[0]}" if has_text else "train with --teacher clip"
        raise FeatureFieldError(f"{run.path}: teacher {name!r} has no text encoder; {hint}")
    if not has_text:
        raise FeatureFieldError(f"{run.path}: text queries need a teacher with a text encoder (clip); this run's "
                                f"teachers ({', '.join(run.teacher_names) or 'none'}) have none; train with --teacher clip")
    return run.teacher(name or has_text[0])


def _view_camera(run: Run, split: str, view: int):
    views = run.view_indices(split)
    if not 0 <= view < len(views):
        raise FeatureFieldError(f"view {view} is out of range: the {split!r} split of {run.path} has {len(views)} views "
                                f"(0..{len(views) - 1})")
    scene_index = views[view]
    cam = run.normalization.cameras_to_canonical(run.scene().cameras[[scene_index]]).to(run.device)
    return cam, scene_index


def query_command(
    run: Path,
    /,
    text: list[str] = [],  # noqa: B006 - tyro reads the default
    negatives: list[str] = [],  # noqa: B006
    box: tuple[float, float, float, float] | None = None,
    point: tuple[float, float] | None = None,
    everything: bool = False,
    points_per_side: int = 16,
    view: int = 0,
    split: str = "test",
    threshold: float = 0.5,
    output: Path | None = None,
    extract: bool = False,
    teacher: str | None = None,
    device: str = "auto",
) -> int:
    """Query a trained RUN at one view by text (clip runs) or by a SAM point/box prompt (sam runs).

    Args:
        run: run folder written by `featurefield train`.
        text: positive phrases, e.g. --text "red mug" "spoon".
        negatives: extra negative phrases (LERF's canonical ones are always added).
        box: SAM box prompt x0 y0 x1 y1 in pixels of the view.
        point: SAM point prompt x y in pixels of the view.
        everything: SAM "segment everything" at the view: a grid of point prompts, duplicates removed.
        points_per_side: the grid of --everything is this many points a side.
        view: index within the split.
        split: test, train or all.
        threshold: relevancy threshold for text masks (LERF: 0.5).
        output: folder for PNGs/PLYs (default RUN/queries/view_NNNN).
        extract: also write the selected Gaussians/points as a PLY in world coordinates.
        teacher: which text teacher to use when several have a text encoder.
    """
    if not text and box is None and point is None and not everything:
        raise FeatureFieldError("nothing to query: give --text PHRASE, --box X0 Y0 X1 Y1, --point X Y or --everything")
    if points_per_side < 1:
        raise FeatureFieldError(f"--points-per-side must be at least 1, got {points_per_side}")
    if text:
        from featurefield.query.text import check_phrases

        check_phrases(text)
        check_phrases(negatives, "negative")
    loaded = load_run(run, device=device)
    cam, scene_index = _view_camera(loaded, split, view)
    H, W = int(cam.height[0]), int(cam.width[0])
    if box is not None or point is not None:  # validate prompts before any heavy work
        from featurefield.query.prompts import check_box, check_points

        if box is not None:
            check_box(box, (H, W))
        if point is not None:
            check_points(torch.tensor([point]), (H, W))
    out = Path(output) if output else loaded.path / "queries" / f"view_{scene_index:04d}"
    written: list[Path] = []
    with torch.no_grad():
        if text:
            written += _text_query(loaded, cam, text, negatives, threshold, out, extract, teacher)
        if box is not None or point is not None:
            written += _prompt_query(loaded, cam, box, point, out, extract)
        if everything:
            written += _everything_query(loaded, cam, points_per_side, out, extract)
    for p in written:
        print(p)
    return 0


def _text_query(run: Run, cam, text, negatives, threshold, out: Path, extract: bool, teacher: str | None) -> list[Path]:
    from featurefield.query.text import export_selection_ply, point_relevancy, relevancy_map

    t = text_teacher(run, teacher)
    q = relevancy_map(run.field, cam, t, text, negatives, background=run.background)
    written = [viz.save_png(out / "rgb.png", (q.render.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())]
    masks = q.masks(threshold)
    for k, phrase in enumerate(q.positives):
        written.append(viz.save_png(out / f"relevancy_{_slug(phrase)}.png", viz.heatmap(q.relevancy[k], 0.5, 1.0)))
        written.append(viz.save_png(out / f"mask_{_slug(phrase)}.png", viz.overlay_mask(q.render.rgb, masks[k])))
    if extract:
        pq = point_relevancy(run.field, t, text, negatives)
        for k, phrase in enumerate(pq.positives):
            keep = pq.select(threshold, positive=k)
            if not keep.any():
                print(f"no points above relevancy {threshold} for {phrase!r}; lower --threshold")
                continue
            written.append(export_selection_ply(out / f"{_slug(phrase)}.ply", pq.points, keep, run.normalization,
                                                extra={"relevancy": pq.relevancy[k]}))
    return written


def _sam_decoder(run: Run, what: str):
    """SAM's prompt decoder for a run trained with the sam teacher, or a one-line error."""
    from featurefield.teachers.sam_decoder import SamPromptDecoder

    if "sam" not in run.teacher_names:
        raise FeatureFieldError(f"{run.path}: {what} a run trained with the sam teacher; "
                                f"this run has {', '.join(run.teacher_names) or 'no teachers'}")
    spec = next(t for t in run.config["teachers"] if t["name"] == "sam")
    return SamPromptDecoder.from_weights(spec.get("options", {}).get("weights"), device=run.device)


def _everything_query(run: Run, cam, points_per_side: int, out: Path, extract: bool) -> list[Path]:
    from featurefield.query.prompts import render_sam_features, segment_everything
    from featurefield.query.selection import lift_masks
    from featurefield.query.text import export_selection_ply

    decoder = _sam_decoder(run, "--everything needs")
    H, W = int(cam.height[0]), int(cam.width[0])
    feats, r = render_sam_features(run.field, cam, background=run.background)
    opaque = r.alpha[..., 0].cpu() > 0.5  # prompt where the field has something (everywhere if it has nothing yet)
    segments = segment_everything(decoder, feats, (H, W), points_per_side, valid=opaque if opaque.any() else None)
    labels = torch.zeros(H, W, dtype=torch.int64)
    for k in reversed(range(len(segments))):  # the best-scored segment on top
        labels[segments[k].mask.cpu()] = k + 1
    rgb = (r.rgb.clamp(0, 1).cpu().numpy() * 255).round()
    tinted = np.where((labels > 0).numpy()[..., None], 0.45 * rgb + 0.55 * viz.labels_image(labels), rgb)
    written = [viz.save_png(out / "rgb.png", rgb.astype(np.uint8)),
               viz.save_png(out / "segments.png", tinted.round().astype(np.uint8))]
    print(f"segments: {len(segments)} (scores {', '.join(f'{s.score:.2f}' for s in segments[:8])}"
          f"{', ...' if len(segments) > 8 else ''})")
    if extract and segments:
        points = run.field.points_with_features(None)
        for k, s in enumerate(segments):
            sel, _ = lift_masks(run.field, cam, [s.mask], points=points)
            if sel.keep.any():
                written.append(export_selection_ply(out / f"segment_{k:02d}.ply", points, sel.keep, run.normalization))
    return written


def _prompt_query(run: Run, cam, box, point, out: Path, extract: bool) -> list[Path]:
    from featurefield.query.prompts import prompt_view
    from featurefield.query.selection import lift_masks
    from featurefield.query.text import export_selection_ply

    decoder = _sam_decoder(run, "box/point prompts need")
    pts = None if point is None else torch.tensor([point], dtype=torch.float32)
    mask, score, r = prompt_view(run.field, cam, decoder, points=pts, box=box, background=run.background)
    written = [viz.save_png(out / "rgb.png", (r.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()),
               viz.save_png(out / "mask_prompt.png", viz.overlay_mask(r.rgb, mask))]
    print(f"mask: {int(mask.sum())} pixels, SAM score {score:.3f}")
    if extract:
        sel, points = lift_masks(run.field, cam, [mask])
        if not sel.keep.any():
            print("no Gaussians/points fall inside the mask")
        else:
            written.append(export_selection_ply(out / "prompt.ply", points, sel.keep, run.normalization))
    return written
