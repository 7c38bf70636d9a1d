"""``featurefield train``: train a feature field on a scene and print its summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from featurefield.fields.nerf.config import NerfConfig
from featurefield.fields.splat.config import SplatConfig
from featurefield.train import TrainConfig, parse_options, train


def train_command(
    scene: str,
    /,
    output: Path | None = None,
    field: Literal["splat", "nerf"] = "splat",
    teacher: tuple[str, ...] = ("sam",),
    weights: Path | None = None,
    steps: int | None = None,
    format: str | None = None,
    downscale: float = 1.0,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    eval_every: int = 0,
    final_eval_views: int | None = None,
    checkpoint_every: int = 1000,
    cache_dir: Path | None = None,
    no_features: bool = False,
    scene_option: tuple[str, ...] = (),
    splat: SplatConfig = SplatConfig(),  # noqa: B008 (tyro reads the default)
    nerf: NerfConfig = NerfConfig(),  # noqa: B008
) -> int:
    """Train a feature field on SCENE (a scene folder, or `demo`).

    Args:
        scene: scene folder (Blender, nerfstudio, COLMAP, LLFF) or `demo` / `demo:SEED`.
        output: run folder (default: runs/<scene>-<field>).
        field: `splat` (3D Gaussians, fast) or `nerf` (F3RM hash grids).
        teacher: teachers to distill, e.g. `sam`, `clip`, `dino`, `clip:model=ViT-B-16`, `sam@0.5` (loss weight).
        weights: weights file/folder for `sam` (else $FEATUREFIELD_WEIGHTS or the user cache).
        steps: training steps (default 30,000 on GPU; on CPU 520 for splat, 2,400 for nerf: the demo scene in 2-3 minutes).
        format: force a scene format instead of detecting it.
        downscale: shrink images by this factor.
        resume: continue the run in --output from its last checkpoint.
        device: auto, cpu or cuda.
        eval_every: evaluate on a few held-out views every this many steps (0: only at the end).
        final_eval_views: at most this many test views in the final evaluation (default: all of them).
        checkpoint_every: write the checkpoint every this many steps.
        cache_dir: feature cache folder (default: $FEATUREFIELD_CACHE or the per-user cache).
        no_features: train colour only (no teacher).
        scene_option: loader options as key=value, e.g. `size=96 views=24` for the demo scene.
        splat: Gaussian-field settings (used with --field splat).
        nerf: NeRF-field settings (used with --field nerf).
    """
    options = parse_options(scene_option, "--scene-option")
    name = "demo" if scene.startswith("demo") else Path(scene).resolve().name
    output = output or Path("runs") / f"{name}-{field}"
    cfg = TrainConfig(steps=steps, seed=seed, eval_every=eval_every, checkpoint_every=checkpoint_every,
                      device=device, cache_dir=cache_dir, final_eval_views=final_eval_views)
    run = train(scene, output, field=field, teachers=[] if no_features else list(teacher), config=cfg,
                field_config=splat if field == "splat" else nerf,
                format=format, downscale=downscale, weights=weights, resume=resume, scene_options=options)
    summary = json.loads((run.path / "metrics.json").read_text())
    line = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    print(f"trained {run.path}: {line}")
    return 0
