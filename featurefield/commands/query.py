"""``featurefield query RUN``: text or SAM prompt queries at a view; optional 3D extraction as PLY.

Writes into ``--output`` (default ``RUN/queries/view_NNNN``): ``rgb.png``; per phrase
``relevancy_<phrase>.png`` (heatmap) and ``mask_<phrase>.png``; for prompts ``mask_prompt.png``;
with ``--extract`` a world-frame PLY of the selected Gaussians/points (``<phrase>.ply`` or
``prompt.ply``). ``--everything`` writes ``segments.png`` (SAM's "segment everything" from the rendered
features), ``legend.png`` / ``legend.json`` (which colour is which segment, its size and files) and, with
``--extract``, ``segment_NN.ply`` per segment (Gaussian runs: also ``segment_NN_gaussians.ply``, all reading one
``decoders.pt``). It prints one line of what it wrote, not every path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch

from featurefield import viz
from featurefield.commands.options import Device, RunWeights, opt
from featurefield.errors import FeatureFieldError, warn
from featurefield.run import Run, load_run


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "query"


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
    text: Annotated[list[str], opt("PHRASE [PHRASE ...]", "none")] = [],  # noqa: B006 - tyro reads the default
    negatives: Annotated[list[str], opt("PHRASE [PHRASE ...]", "none")] = [],  # noqa: B006
    box: Annotated[tuple[float, float, float, float] | None, opt("X0 Y0 X1 Y1", "")] = None,
    point: Annotated[tuple[float, float] | None, opt("X Y", "")] = None,
    everything: bool = False,
    points_per_side: int = 16,
    keypoints: Annotated[tuple[float, ...], opt("X Y [X Y ...]", "")] = (),
    to_view: Annotated[int | None, opt("INT", "--view")] = None,
    to_run: Annotated[Path | None, opt("RUN", "RUN")] = None,
    to_split: Annotated[Literal["test", "train", "all"] | None, opt("{test,train,all}", "--split")] = None,
    match_side: Annotated[int, opt("PIXELS")] = 256,
    view: int = 0,
    split: Literal["test", "train", "all"] = "test",
    threshold: float = 0.5,
    output: Annotated[Path | None, opt("FOLDER", "RUN/queries/view_NNNN")] = None,
    extract: bool = False,
    teacher: Annotated[str | None, opt("NAME", "the first that fits")] = None,
    device: Device = "auto",
    weights: RunWeights = None,
) -> int:
    """Query a trained RUN at one view by text (clip runs), by a SAM point/box prompt (sam runs), or carry
    keypoints to another view of it or of another run (any teacher; DINO's features suit it best).

    Args:
        run: run folder written by `featurefield train`.
        text: phrases to find (runs with a teacher that encodes text, e.g. clip), e.g. --text "red mug" spoon.
        negatives: more phrases to tell the ones searched from (LERF's canonical ones are always added).
        box: a box prompt in pixels of the view (runs with sam).
        point: a point prompt in pixels of the view (runs with sam).
        everything: segment everything at the view (runs with sam): a grid of point prompts, duplicates removed;
            a legend (legend.png, legend.json) says which colour is which segment and its files.
        points_per_side: the grid of --everything is this many points a side.
        keypoints: pixels of the view to find in --to-view (keypoint transfer).
        to_view: the view (index within --to-split) the keypoints go to.
        to_run: another run to find them in (an instance of the same kind of object, same teacher).
        to_split: split of --to-view.
        match_side: features are matched at this many pixels on the longer side (finer: slower).
        view: index of the view within --split.
        split: the views --view counts in.
        threshold: relevancy above which text masks and cut-outs take a pixel or point (LERF: 0.5).
        output: folder for the pictures and PLYs.
        extract: also cut the selection out in 3D: a PLY of its points (and of its Gaussians) in world coordinates.
        teacher: for --text, a teacher that encodes text; for --keypoints, any the runs share.
    """
    if not text and box is None and point is None and not everything and not keypoints:
        raise FeatureFieldError("nothing to query: give --text PHRASE, --box X0 Y0 X1 Y1, --point X Y, --everything "
                                "or --keypoints X Y [X Y ...]")
    if len(keypoints) % 2:
        raise FeatureFieldError(f"--keypoints takes x y pairs; got {len(keypoints)} numbers")
    if match_side < 8:
        raise FeatureFieldError(f"--match-side must be at least 8 pixels, got {match_side}")
    if points_per_side < 1:
        raise FeatureFieldError(f"--points-per-side must be at least 1, got {points_per_side}")
    if text:
        from featurefield.query.text import check_phrases

        check_phrases(text)
        check_phrases(negatives, "negative")
    from featurefield.outputs import check_output_dir

    check_output_dir(Path(output) if output else Path(run) / "queries", default=not output)  # before any work
    loaded = load_run(run, device=device, weights=weights)
    cam, scene_index = _view_camera(loaded, split, view)
    H, W = int(cam.height[0]), int(cam.width[0])
    if box is not None or point is not None:  # validate prompts before any heavy work
        from featurefield.query.prompts import check_box, check_points

        if box is not None:
            check_box(box, (H, W))
        if point is not None:
            check_points(torch.tensor([point]), (H, W))
    if keypoints:  # the keypoints, the other run and its view, checked before any heavy work
        from featurefield.query.prompts import check_points

        check_points(torch.tensor(keypoints, dtype=torch.float32).reshape(-1, 2), (H, W))
        target = load_run(to_run, device=device, weights=weights) if to_run is not None else loaded
        cam_b, index_b = _view_camera(target, to_split or split, view if to_view is None else to_view)
    out = Path(output) if output else loaded.path / "queries" / f"view_{scene_index:04d}"
    written: list[Path] = []
    with torch.no_grad():
        if text:
            written += _text_query(loaded, cam, text, negatives, threshold, out, extract, teacher)
        if box is not None or point is not None:
            written += _prompt_query(loaded, cam, box, point, out, extract)
        if everything:
            written += _everything_query(loaded, cam, points_per_side, out, extract)
        if keypoints:
            written += _keypoint_query(loaded, cam, scene_index, torch.tensor(keypoints, dtype=torch.float32).reshape(-1, 2),
                                       target, cam_b, index_b, teacher, match_side, out)
    print(files_summary(out, written))
    return 0


def files_summary(folder: Path, written: list[Path]) -> str:
    """One line naming what was written into ``folder``: files with the same name but for their number counted
    together (``16 x segment_NN.ply``), e.g. ``wrote 35 files in OUT: rgb.png, segments.png, legend.png, ...``."""
    groups: dict[str, list[str]] = {}
    for p in dict.fromkeys(Path(w) for w in written):  # in order, once each
        groups.setdefault(re.sub(r"\d+", lambda m: "N" * len(m.group()), p.name), []).append(p.name)
    names = ", ".join(f"{len(same)} x {key}" if len(same) > 1 else same[0] for key, same in groups.items())
    total = sum(len(same) for same in groups.values())
    return f"wrote {total} file{'s' if total != 1 else ''} in {folder}: {names}"


def _text_query(run: Run, cam, text, negatives, threshold, out: Path, extract: bool, teacher: str | None) -> list[Path]:
    from featurefield.query.selection import export_cutout
    from featurefield.query.text import point_relevancy, relevancy_map

    t = run.text_teacher(teacher)
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
            written += export_cutout(run.field, out / f"{_slug(phrase)}.ply", pq.points, keep, run.normalization,
                                     extra={"relevancy": pq.relevancy[k]})
    return written


def _keypoint_query(run: Run, cam, scene_index: int, uv: torch.Tensor, target: Run, cam_b, index_b: int,
                    teacher: str | None, match_side: int, out: Path) -> list[Path]:
    """Keypoints ``uv [M, 2]`` of ``run``'s view found in ``target``'s view ``cam_b`` (scene view ``index_b``): a
    picture of both, and a JSON with each match's pixel, cosine score and 3D position (``target``'s world
    frame, from its rendered depth)."""
    import json

    from featurefield.io import atomic_write_json
    from featurefield.query.correspondence import transfer_keypoints, unproject
    from featurefield.query.selection import surface_depth

    shared = [t for t in run.teacher_names if t in target.teacher_names]
    if teacher is not None and teacher not in shared:
        raise FeatureFieldError(f"keypoints: teacher {teacher!r} is not in both runs (shared: {', '.join(shared) or 'none'})")
    if not shared:
        raise FeatureFieldError(f"keypoints: {run.path} and {target.path} share no teacher; their features are not comparable")
    name = teacher or shared[0]
    specs = [r.config.teacher(name).to_dict() for r in (run, target)]
    if json.dumps(specs[0], sort_keys=True) != json.dumps(specs[1], sort_keys=True):
        warn(f"the two runs' {name} teachers were set up differently ({specs[0]} vs {specs[1]}); "
             "their features may not be comparable")
    uv_b, score = transfer_keypoints(run.field, cam, cam_b, uv.to(run.device), name, match_side, run.background,
                                     field_b=target.field, background_b=target.background)
    r_a = run.field.render(cam, background=run.background, features=False)
    r_b = target.field.render(cam_b, background=target.background, features=False)
    depth_b = surface_depth(r_b)
    H, W = depth_b.shape
    u = uv_b[:, 0].long().clamp(0, W - 1).to(depth_b.device)
    v = uv_b[:, 1].long().clamp(0, H - 1).to(depth_b.device)
    z = depth_b[v, u]
    xyz = target.normalization.to_world(unproject(cam_b, uv_b.to(cam_b.device), torch.where(torch.isfinite(z), z, 0)))
    matches = [{"from": [round(float(a), 2) for a in uv[i]], "to": [round(float(b), 2) for b in uv_b[i]],
                "score": round(float(score[i]), 4),
                "xyz": [round(float(c), 5) for c in xyz[i]] if torch.isfinite(z[i]) else None} for i in range(len(uv))]
    picture = viz.side_by_side([viz.draw_keypoints(r_a.rgb, uv), viz.draw_keypoints(r_b.rgb, uv_b.cpu())],
                               labels=[f"{run.path.name} view {scene_index}", f"{target.path.name} view {index_b}"])
    for i, m in enumerate(matches):
        print(f"keypoint {i}: {tuple(m['from'])} -> {tuple(m['to'])}, cosine {m['score']:.3f}")
    atomic_write_json(out / "keypoints.json", {"teacher": name, "match_side": match_side,
                                               "from": {"run": str(run.path), "view": scene_index},
                                               "to": {"run": str(target.path), "view": index_b}, "keypoints": matches})
    return [viz.save_png(out / "keypoints.png", picture), out / "keypoints.json"]


def _everything_query(run: Run, cam, points_per_side: int, out: Path, extract: bool) -> list[Path]:
    """SAM's "segment everything" at the view: ``segments.png`` (each segment tinted in its colour, its number on
    it), ``legend.png`` (the picture beside a swatch, number, size and file per segment) and ``legend.json``; with
    ``extract``, ``segment_NN.ply`` per segment and, for Gaussians, ``segment_NN_gaussians.ply`` reading one shared
    ``decoders.pt``."""
    from featurefield.io import atomic_write_json
    from featurefield.query.prompts import render_sam_features, segment_everything
    from featurefield.query.selection import export_cutout, lift_masks

    decoder = run.prompt_decoder("--everything needs")
    H, W = int(cam.height[0]), int(cam.width[0])
    feats, r = render_sam_features(run.field, cam, run.prompt_teachers[0], background=run.background)
    opaque = r.alpha[..., 0].cpu() > 0.5  # prompt where the field has something (everywhere if it has nothing yet)
    segments = segment_everything(decoder, feats, (H, W), points_per_side, valid=opaque if opaque.any() else None)
    labels = torch.zeros(H, W, dtype=torch.int64)
    for k in reversed(range(len(segments))):  # the best-scored segment on top
        labels[segments[k].mask.cpu()] = k + 1
    colours = viz.distinct_colours(len(segments))
    palette = np.concatenate([np.zeros((1, 3), np.uint8), colours])
    rgb = (r.rgb.clamp(0, 1).cpu().numpy() * 255).round()
    tinted = np.where((labels > 0).numpy()[..., None], 0.45 * rgb + 0.55 * palette[labels.numpy()], rgb)
    tinted = tinted.round().astype(np.uint8)
    marks = [_label_mark(labels, k + 1) for k in range(len(segments))]
    entries = []
    points = run.field.points_with_features(None) if extract and segments else None
    written = [viz.save_png(out / "rgb.png", rgb.astype(np.uint8))]
    shared = None  # the decoders file the segments' Gaussians share, once written
    for k, seg in enumerate(segments):
        entry = {"segment": k, "colour": [int(c) for c in colours[k]], "hex": "#{:02x}{:02x}{:02x}".format(*colours[k]),
                 "score": round(seg.score, 4), "pixels": int(seg.mask.sum()), "visible_pixels": int((labels == k + 1).sum()),
                 "prompt": [round(float(c), 1) for c in seg.point], "files": []}
        if points is not None:
            sel, _ = lift_masks(run.field, cam, [seg.mask], points=points)
            entry["points"] = int(sel.keep.sum())
            if sel.keep.any():
                files = export_cutout(run.field, out / f"segment_{k:02d}.ply", points, sel.keep, run.normalization,
                                      decoders="shared" if shared is None else False)
                shared = shared or next((f.name for f in files if f.suffix != ".ply"), None)
                entry["files"] = [f.name for f in files if f.suffix == ".ply"]
                written += files
        entries.append(entry)
    lines = [f"{e['segment']:02d}  {e['pixels']} px" + (f", {e['points']} pts" if "points" in e else "")
             + (f"  {e['files'][0]}" if e["files"] else "") for e in entries]
    written.append(viz.save_png(out / "segments.png", tinted))
    if segments:
        scale = max(1, min(4, 384 // max(H, W)))
        written.append(viz.save_png(out / "legend.png", viz.legend_picture(tinted, colours, lines, marks, scale=scale)))
    atomic_write_json(out / "legend.json", {
        "run": str(run.path), "picture": "segments.png", "legend": "legend.png" if segments else None,
        "decoders": shared, "segments": entries})
    written.append(out / "legend.json")
    print(f"segments: {len(segments)} (scores {', '.join(f'{s.score:.2f}' for s in segments[:8])}"
          f"{', ...' if len(segments) > 8 else ''})")
    if segments:
        print(f"legend: {out / 'legend.png'} (each segment's colour, number, size and file; also legend.json)")
    return written


def _label_mark(labels: torch.Tensor, label: int) -> tuple[float, float] | None:
    """Where to write a segment's number: its visible pixel nearest the centroid of its visible pixels
    (x, y at pixel centres), None where none of it shows."""
    ys, xs = torch.nonzero(labels == label, as_tuple=True)
    if len(xs) == 0:
        return None
    cx, cy = xs.float().mean(), ys.float().mean()
    i = int(((xs - cx) ** 2 + (ys - cy) ** 2).argmin())
    return float(xs[i]) + 0.5, float(ys[i]) + 0.5


def _prompt_query(run: Run, cam, box, point, out: Path, extract: bool) -> list[Path]:
    from featurefield.query.prompts import prompt_view
    from featurefield.query.selection import export_cutout, lift_masks

    decoder = run.prompt_decoder("box/point prompts need")
    pts = None if point is None else torch.tensor([point], dtype=torch.float32)
    mask, score, r = prompt_view(run.field, cam, decoder, points=pts, box=box, teacher=run.prompt_teachers[0],
                                 background=run.background)
    written = [viz.save_png(out / "rgb.png", (r.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()),
               viz.save_png(out / "mask_prompt.png", viz.overlay_mask(r.rgb, mask))]
    print(f"mask: {int(mask.sum())} pixels, SAM score {score:.3f}")
    if extract:
        sel, points = lift_masks(run.field, cam, [mask])
        if not sel.keep.any():
            print("no Gaussians/points fall inside the mask")
        else:
            written += export_cutout(run.field, out / "prompt.ply", points, sel.keep, run.normalization)
    return written
