"""CLI verbs of the generalizable field: ``make-category``, ``train general``, and ``query`` / ``eval`` on a
general run (the ``general`` FieldSpec names them: ``featurefield train general DATA`` comes here, and
``featurefield.cli`` routes ``query`` / ``eval`` here when RUN holds a general field).

Each verb parses its arguments (tyro reads the signatures), calls the library and prints; nothing in the
library imports this module.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import torch

from featurefield.commands.options import Device, RunWeights, opt
from featurefield.errors import FeatureFieldError
from featurefield.teachers import DEFAULT_TEACHER


def make_category_command(category: Literal["mugs", "chairs"], out: Path, /, instances: int = 1000, views: int = 16,
                          size: Annotated[int, opt("PIXELS")] = 128, seed: int = 0, shard_size: int = 64,
                          test_instances: Annotated[int | None, opt("INT", "a tenth of them")] = None,
                          supersample: int = 2, workers: Annotated[int | None, opt("INT", "one per CPU")] = None,
                          examples: int = 4) -> int:
    """Render a procedural object category (RGB, depth, part labels, named keypoints) into shards under OUT.

    Args:
        category: mugs (body, handle, rim) or chairs (seat, back, legs).
        out: the output folder (an interrupted generation is completed by running the same command again).
        instances: how many random instances.
        views: views per instance.
        size: image side in pixels.
        seed: instance i depends only on (seed, i).
        shard_size: instances per shard.
        test_instances: the last ones are held out for evaluation.
        supersample: RGB rays per pixel along each axis.
        workers: processes rendering them.
        examples: also write this many held-out views as PNG + camera JSON into OUT/examples (query inputs).
    """
    from featurefield.data.category import CategoryData, generate_category
    from featurefield.fields.general.run import write_view

    t0 = time.perf_counter()
    generate_category(category, instances, out, views=views, size=size, seed=seed, shard_size=shard_size,
                      test_instances=test_instances, supersample=supersample, workers=workers)
    data = CategoryData(out)
    test = data.split("test")
    for k in range(min(examples, len(test))):
        write_view(data, test[k], 0, Path(out) / "examples" / f"instance{test[k]:05d}_view00.png")
    size_mb = sum(f.stat().st_size for f in Path(out).rglob("*.npy")) / 2**20
    print(f"{instances} {category} x {views} views at {size}x{size} in {out} ({size_mb:.1f} MB, "
          f"{time.perf_counter() - t0:.1f} s); held out: {len(test)}; examples in {Path(out) / 'examples'}")
    return 0


def train_general_command(data: Path, /, output: Annotated[Path, opt("FOLDER")],
                          teacher: Annotated[str, opt("NAME")] = DEFAULT_TEACHER,
                          weights: Annotated[Path | None, opt("PATH", "$FEATUREFIELD_WEIGHTS, else the user cache")] = None,
                          encoder: Literal["teacher", "cnn"] = "teacher",
                          steps: int = 20000, batch: int = 8, rays: int = 512, samples: int = 64, width: int = 256,
                          lr: float = 5e-4, feature_weight: float = 0.5, sources: int = 1, workers: int = 2,
                          device: Device = "auto", resume: bool = False,
                          minutes: Annotated[float | None, opt("FLOAT", "no limit")] = None,
                          checkpoint_every: Annotated[int, opt("STEPS")] = 500, seed: int = 0) -> int:
    """Train a generalizable feature field (FeatureNeRF) over the instances of a generated category.

    Args:
        data: a folder written by `featurefield make-category`.
        output: the run folder.
        teacher: the teacher distilled (a registered name: sam, dino, clip).
        weights: the teacher's weights file or folder; the run records where they were found.
        encoder: teacher uses the teacher's frozen image encoder (SAM's TinyViT) as the field's encoder; cnn
            trains a small CNN from scratch.
        steps: optimisation steps.
        batch: instances per step.
        rays: rays per instance per step.
        samples: samples per ray.
        width: width of the MLP.
        lr: learning rate.
        feature_weight: weight of the feature loss.
        sources: source views per instance while training.
        workers: processes reading the shards.
        resume: continue the run in OUTPUT from its checkpoint.
        minutes: stop (with a checkpoint, resumable) after this many minutes of this call.
        checkpoint_every: steps between checkpoints.
        seed: the sampling seed.
    """
    from featurefield.fields.general.model import GeneralConfig
    from featurefield.fields.general.train import GeneralTrainConfig, train_general

    deadline = None if minutes is None else time.time() + 60 * minutes
    spec = {"name": teacher, "options": {"weights": str(Path(weights).resolve())} if weights else {}}
    summary = train_general(data, output, teacher=spec,
                            config=GeneralConfig(encoder=encoder, samples=samples, width=width),
                            train=GeneralTrainConfig(steps=steps, batch=batch, rays=rays, lr=lr, feature_weight=feature_weight,
                                                     sources=sources, workers=workers, device=device, deadline=deadline,
                                                     checkpoint_every=checkpoint_every, seed=seed),
                            resume=resume)
    state = f"stopped ({summary['stopped']}) at step {summary['done']}; continue with --resume" if summary["stopped"] \
        else f"done: {summary['done']} steps"
    print(f"{output}: {state}; psnr {summary.get('psnr', float('nan')):.2f}, "
          f"feature cosine {summary.get('feature_cosine', float('nan')):.3f}")
    return 0


def _pairs(values: tuple[float, ...]) -> torch.Tensor:
    if len(values) == 0 or len(values) % 2:
        raise FeatureFieldError(f"--keypoints takes x y pairs (pixel positions), got {len(values)} numbers")
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 2)


def _input_view(run_size: tuple[int, int], image: Path | None, camera: Path | None, scene: Path | None, view: int):
    """An input image and its camera: a file with its camera JSON, or a view of a scene folder (any format)."""
    from featurefield.fields.general.run import read_image_with_camera, view_from_scene

    if scene is not None:
        from featurefield.data import load_scene

        return view_from_scene(load_scene(scene), view, run_size)
    if image is None:
        raise FeatureFieldError("give an input: --image IMAGE (with IMAGE.json) or --scene FOLDER --view N")
    return read_image_with_camera(image, camera)


def general_query_command(run: Path, /, image: Annotated[Path | None, opt("IMAGE", "")] = None,
                          keypoints: Annotated[tuple[float, ...], opt("X Y [X Y ...]", "")] = (),
                          to_image: Annotated[Path | None, opt("IMAGE", "")] = None,
                          camera: Annotated[Path | None, opt("FILE", "IMAGE.json")] = None,
                          to_camera: Annotated[Path | None, opt("FILE", "TO_IMAGE.json")] = None,
                          scene: Annotated[Path | None, opt("SCENE", "")] = None, view: int = 0,
                          to_scene: Annotated[Path | None, opt("SCENE", "")] = None, to_view: int = 0,
                          source: Literal["descriptor", "feature", "teacher"] = "descriptor", segment: int = 0,
                          novel_views: int = 4, output: Annotated[Path | None, opt("FOLDER", "RUN/queries/IMAGE")] = None,
                          device: Device = "auto", weights: RunWeights = None) -> int:
    """Single-image queries of a generalizable RUN: keypoint transfer to another image (2D, and 3D positions),
    part segmentation from K labelled training instances, and the image's 3D reconstruction from one view.

    Args:
        run: a run written by `featurefield train general`.
        image: the source image (a PNG of the run's image size).
        keypoints: pixels of IMAGE to find in --to-image.
        to_image: the target image of --keypoints.
        camera: the source image's camera (JSON: c2w, fx, fy, cx, cy).
        to_camera: the target image's camera.
        scene: instead of --image, a view of a scene folder (any format featurefield loads), framed as the
            category's views (object at the scene's centre, upright).
        view: the view of --scene.
        to_scene: instead of --to-image, a view of a scene folder.
        to_view: the view of --to-scene.
        source: descriptors matched: the NeRF's intermediate ones (descriptor), the distilled features (feature) or
            the teacher's.
        segment: label IMAGE's parts by transfer from this many labelled training instances (0: off).
        novel_views: render this many views around the object from IMAGE alone (colour and feature PCA; 0: off).
        output: folder for the pictures and JSON.
    """
    from featurefield import viz
    from featurefield.fields.general.queries import descriptor_map, lift_points, segment_parts, transfer_keypoints
    from featurefield.fields.general.rendering import render_view
    from featurefield.fields.general.run import load_general_run
    from featurefield.io import atomic_write_json

    kps = _pairs(keypoints) if keypoints else None
    if kps is not None and to_image is None and to_scene is None:
        raise FeatureFieldError("--keypoints needs --to-image (or --to-scene): the image to carry them to")
    loaded = load_general_run(run, device=device, weights=weights)
    fld = loaded.field
    H, W = fld.config.image_size
    img_a, cam_a = _input_view((H, W), image, camera, scene, view)
    img_b = cam_b = None
    if to_image is not None or to_scene is not None:
        img_b, cam_b = _input_view((H, W), to_image, to_camera, to_scene, to_view)
    for path, img in ((image, img_a), (to_image, img_b)):
        if img is not None and tuple(img.shape[1:]) != (H, W):
            raise FeatureFieldError(f"{path}: the image is {img.shape[2]}x{img.shape[1]} but {run} was trained on "
                                    f"{W}x{H} images; resize it to {W}x{H}")
    name_a = Path(image).name if image is not None else f"{Path(scene).name}_view{view}"
    name_b = Path(to_image).name if to_image is not None else f"{Path(to_scene).name}_view{to_view}" if to_scene else ""
    out_dir = Path(output or Path(run) / "queries" / Path(name_a).stem)
    teacher = loaded.teacher() if source == "teacher" else None
    cond_a = fld.encode(img_a[None].to(fld.device), cam_a)
    render_a = render_view(fld, cond_a, cam_a, need=("rgb",))
    viz.save_png(out_dir / "reconstruction.png", viz.side_by_side([img_a.permute(1, 2, 0), render_a["rgb"]],
                                                                 ["input", "rendered from it"]))
    if novel_views:
        from featurefield.fields.general.queries import orbit_cameras

        cams = orbit_cameras(cam_a, novel_views)
        renders = [render_view(fld, cond_a, cams[k], need=("rgb", "feature")) for k in range(novel_views)]
        fg = torch.cat([r["feature"][r["alpha"] > 0.5] for r in renders])  # one PCA basis over the object in all views
        basis = viz.fit_pca(fg if len(fg) >= 2 else torch.cat([r["feature"].reshape(-1, r["feature"].shape[-1]) for r in renders]))
        viz.save_png(out_dir / "novel_views.png", viz.side_by_side([r["rgb"] for r in renders]))
        viz.save_png(out_dir / "novel_features.png",
                     viz.side_by_side([viz.pca_image(r["feature"].permute(2, 0, 1), basis) for r in renders]))
    result: dict = {"run": str(run), "image": name_a, "source": source}
    if kps is not None:
        desc_a, _ = descriptor_map(fld, img_a, cam_a, source, teacher, cond=cond_a)
        cond_b = fld.encode(img_b[None].to(fld.device), cam_b)
        desc_b, alpha_b = descriptor_map(fld, img_b, cam_b, source, teacher, cond=cond_b)
        if source == "teacher":
            alpha_b = render_view(fld, cond_b, cam_b, need=())["alpha"]
        uv_b, score = transfer_keypoints(desc_a, kps.to(desc_a.device), desc_b, alpha_b > 0.5)
        xyz = lift_points(fld, cond_b, cam_b, uv_b)
        result.update({"to_image": name_b, "keypoints": kps.tolist(), "to_keypoints": uv_b.cpu().tolist(),
                       "cosine": score.cpu().tolist(), "to_keypoints_3d": xyz.cpu().tolist()})
        viz.save_png(out_dir / "keypoints.png", viz.side_by_side(
            [viz.draw_keypoints(img_a.permute(1, 2, 0), kps), viz.draw_keypoints(img_b.permute(1, 2, 0), uv_b.cpu())],
            [name_a, name_b]))
        for k, (p, q, c) in enumerate(zip(kps.tolist(), uv_b.cpu().tolist(), score.cpu().tolist())):
            print(f"keypoint {k}: ({p[0]:.1f}, {p[1]:.1f}) -> ({q[0]:.1f}, {q[1]:.1f})  cosine {c:.3f}")
    if segment:
        data = loaded.data()
        refs = data.split("train")[:segment]
        ref_desc, ref_labels = [], []
        for r in refs:
            inst = data.instance(r, views=[0])
            d, _ = descriptor_map(fld, inst["rgb"][0].permute(2, 0, 1), inst["cameras"], source, teacher)
            ref_desc.append(d)
            ref_labels.append(inst["parts"][0].to(d.device))
        desc_a, alpha_a = descriptor_map(fld, img_a, cam_a, source, teacher, cond=cond_a)
        mask = render_a["alpha"] > 0.5
        labels = segment_parts(ref_desc, ref_labels, desc_a, mask.to(desc_a.device))
        viz.save_png(out_dir / "parts.png", viz.labels_image(labels.cpu()))
        counts = torch.bincount(labels.reshape(-1).cpu(), minlength=len(data.parts))
        result["parts"] = {name: int(c) for name, c in zip(data.parts, counts.tolist())}
        print("parts (pixels): " + ", ".join(f"{k} {v}" for k, v in result["parts"].items()))
    atomic_write_json(out_dir / "query.json", result)
    print(f"wrote {out_dir}")
    return 0


def general_eval_command(run: Path, /, data: Annotated[Path | None, opt("FOLDER", "the one it was trained on")] = None,
                         instances: int = 20, pairs: int = 40, shots: Annotated[tuple[int, ...], opt("K [K ...]")] = (1, 5),
                         output: Annotated[Path | None, opt("FILE", "RUN/eval/metrics.json")] = None,
                         device: Device = "auto", weights: RunWeights = None) -> int:
    """Evaluate a generalizable RUN on held-out instances: novel-view PSNR from one image, keypoint PCK@0.05/0.1
    and part mIoU (K labelled instances) with the teacher's, the distilled and the NeRF-intermediate features.

    Args:
        run: a run written by `featurefield train general`.
        data: the category to evaluate on (its held-out instances).
        instances: held-out instances used.
        pairs: keypoint-transfer image pairs.
        shots: how many labelled instances the part labels come from, one evaluation each.
        output: JSON file to write.
    """
    from rich.console import Console
    from rich.table import Table

    from featurefield.fields.general.evaluate import evaluate_general
    from featurefield.fields.general.run import load_general_run
    from featurefield.io import atomic_write_json

    loaded = load_general_run(run, device=device, weights=weights)
    metrics = evaluate_general(loaded, loaded.data(data) if data else None, instances=instances, pairs=pairs,
                               shots=tuple(shots))
    path = Path(output or Path(run) / "eval" / "metrics.json")
    atomic_write_json(path, metrics)
    table = Table(title=f"{run} · {metrics['category']} · step {metrics['step']} · {metrics['test_instances']} held-out instances")
    table.add_column("metric")
    for s in ("teacher", "feature", "descriptor"):
        table.add_column(s, justify="right")
    keys = sorted({k.split("/")[0] for k in metrics if "/" in k})
    for k in keys:
        table.add_row(k, *[f"{metrics.get(f'{k}/{s}', float('nan')):.3f}" for s in ("teacher", "feature", "descriptor")])
    console = Console()
    console.print(table)
    console.print(f"novel-view PSNR {metrics['novel_view_psnr']:.2f} dB over {metrics['novel_views']} views"
                  + (f", feature cosine {metrics['novel_view_feature_cosine']:.3f}" if "novel_view_feature_cosine" in metrics else ""))
    console.print(f"wrote {path}")
    return 0
