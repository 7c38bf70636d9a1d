"""``featurefield train FIELD SCENE``: train a feature field on a scene and print its summary.

Each field backend of :mod:`featurefield.fields.registry` is a subcommand (``featurefield train splat``,
``featurefield train nerf``) whose options are the common ones below plus the backend's own config as
``--FIELD.xxx``; the older ``featurefield train SCENE --field FIELD`` still works.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union

import tyro

from featurefield.commands import cli, parses_own_arguments
from featurefield.commands.options import Device, opt
from featurefield.data.view_source import DataConfig
from featurefield.errors import FeatureFieldError
from featurefield.fields.registry import FieldSpec, registered
from featurefield.teachers import DEFAULT_TEACHER, parse_options
from featurefield.train import TrainConfig, train


@dataclass
class TrainArguments:
    """Options every field takes."""

    scene: tyro.conf.Positional[str]
    """scene folder (Blender, nerfstudio, COLMAP, LLFF), or demo / demo:SEED for the built-in scene."""
    output: Annotated[Path | None, opt("FOLDER", "runs/SCENE-FIELD")] = None
    """the run folder."""
    teacher: Annotated[tuple[str, ...], opt("NAME [NAME ...]")] = (DEFAULT_TEACHER,)
    """teachers to distill: sam, clip, dino, with options (clip:model=ViT-B-16) and a loss weight (sam@0.5)."""
    weights: Annotated[Path | None, opt("PATH", "$FEATUREFIELD_WEIGHTS, else the user cache")] = None
    """weights file or folder of the teachers that take one (sam); the run records where they were found."""
    steps: Annotated[int | None, opt("INT", "30,000 on a GPU; on the CPU splat 520, nerf 2,400")] = None
    """training steps (under torchrun --nproc-per-node N: steps/N steps of N views each, the same views seen)."""
    format: Annotated[str | None, opt("FORMAT", "detected")] = None
    """the scene's format: blender, nerfstudio, colmap or llff."""
    downscale: float = 1.0
    """shrink the images by this factor."""
    resume: bool = False
    """continue the run in --output from its last checkpoint (--steps extends it)."""
    device: Device = "auto"
    seed: int = 0
    """seeds the field's initialisation and the batches."""
    eval_every: Annotated[int, opt("STEPS", "0, only at the end")] = 0
    """evaluate on a few held-out views every this many steps."""
    final_eval_views: Annotated[int | None, opt("INT", "all of them")] = None
    """at most this many test views in the final evaluation."""
    checkpoint_every: Annotated[int, opt("STEPS")] = 1000
    """write the checkpoint every this many steps."""
    cache_dir: Annotated[Path | None, opt("FOLDER", "$FEATUREFIELD_CACHE, else the user cache")] = None
    """teacher feature cache folder."""
    features: bool = True
    """distill the teachers (--no-features: train colour only)."""
    scene_option: Annotated[tuple[str, ...], opt("KEY=VALUE [KEY=VALUE ...]", "none")] = ()
    """the scene loader's options, e.g. size=96 views=24 for the demo scene."""
    scale_adam: bool = True
    """under torchrun, scale Adam for N views a step as gsplat's multi-GPU training (lr x sqrt(N), eps / sqrt(N),
    betas 1 - N(1 - beta)); --no-scale-adam keeps the one-GPU settings."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """where the training views live: --data.residency stream reads them from the caches on disk per step (memory
    independent of the view count; default auto: resident when they fit)."""


def _subcommand(spec: FieldSpec):
    """The arguments of ``featurefield train NAME``: the common ones and the backend's config as ``--NAME.xxx``."""
    cfg = spec.config_class()
    cls = dataclasses.make_dataclass(f"Train{spec.name.title()}", [(spec.name, cfg, dataclasses.field(default_factory=cfg))],
                                     bases=(TrainArguments,))
    cls.__doc__ = f"Train a {spec.name} field: {spec.summary}."
    return Annotated[cls, tyro.conf.subcommand(spec.name, description=cls.__doc__, prefix_name=False)]


def _with_field_first(args: list[str], names: list[str]) -> list[str]:
    """``SCENE --field NAME ...`` (the older form) or ``SCENE ...`` (the default field) as ``NAME SCENE ...``."""
    if args and args[0] in names or any(a in ("-h", "--help") for a in args[:1]):
        return args
    rest, name = list(args), names[0]
    for k, a in enumerate(rest):
        if a == "--field" and k + 1 < len(rest):
            name = rest[k + 1]
            del rest[k:k + 2]
            break
        if a.startswith("--field="):
            name = a.split("=", 1)[1]
            del rest[k]
            break
    return [name, *rest]


@parses_own_arguments
def train_command(args: list[str], prog: str, description: str) -> int:
    """Train a feature field on SCENE: ``featurefield train FIELD SCENE [OPTIONS]`` (FIELD: splat, nerf, ...).

    A field with a training command of its own (``FieldSpec.commands``; ``general`` trains over a generated
    category, not a scene) gets the arguments after its name: ``featurefield train general DATA --output RUN``.
    """
    everything = registered()
    own = {n: s.own_command("train") for n, s in everything.items() if s.own_command("train")}
    first = _with_field_first(args, list(everything))
    if first and first[0] in own:
        import importlib

        from featurefield.distributed import launched

        if launched().distributed:
            raise FeatureFieldError(f"`featurefield train {first[0]}` runs in one process; under torchrun only the "
                                    f"scene fields train ({', '.join(n for n in everything if n not in own)})")

        module, func = own[first[0]].split(":")
        fn = getattr(importlib.import_module(f"featurefield.commands.{module}"), func)
        return int(cli(fn, first[1:], f"{prog} {first[0]}", fn.__doc__.splitlines()[0]))
    specs = {n: s for n, s in everything.items() if n not in own}
    choice = Union[tuple(_subcommand(s) for s in specs.values())]  # noqa: UP007 - built at run time
    parsed = cli(choice, _with_field_first(args, list(specs)), prog, description)
    kind = next(name for name in specs if hasattr(parsed, name))
    options = parse_options(parsed.scene_option, "--scene-option")
    name = "demo" if parsed.scene.startswith("demo") else Path(parsed.scene).resolve().name
    output = parsed.output or Path("runs") / f"{name}-{kind}"
    cfg = TrainConfig(steps=parsed.steps, seed=parsed.seed, eval_every=parsed.eval_every,
                      checkpoint_every=parsed.checkpoint_every, device=parsed.device, cache_dir=parsed.cache_dir,
                      final_eval_views=parsed.final_eval_views, scale_adam=parsed.scale_adam, data=parsed.data)
    run = train(parsed.scene, output, field=kind, teachers=list(parsed.teacher) if parsed.features else [],
                config=cfg, field_config=getattr(parsed, kind), format=parsed.format, downscale=parsed.downscale,
                weights=parsed.weights, resume=parsed.resume, scene_options=options)
    from featurefield.distributed import launched

    if launched().main:  # under torchrun, rank 0 reports for all
        summary = json.loads((run.path / "metrics.json").read_text())
        line = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
        print(f"trained {run.path}: {line}")
    return 0
