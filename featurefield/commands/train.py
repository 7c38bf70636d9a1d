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

from featurefield.commands import parses_own_arguments
from featurefield.errors import FeatureFieldError
from featurefield.fields.registry import FieldSpec, registered
from featurefield.teachers import DEFAULT_TEACHER, parse_options
from featurefield.train import TrainConfig, train


@dataclass
class TrainArguments:
    """Options every field takes."""

    scene: tyro.conf.Positional[str]
    """scene folder (Blender, nerfstudio, COLMAP, LLFF) or `demo` / `demo:SEED`."""
    output: Path | None = None
    """run folder (default: runs/<scene>-<field>)."""
    teacher: tuple[str, ...] = (DEFAULT_TEACHER,)
    """teachers to distill, e.g. `sam`, `clip`, `dino`, `clip:model=ViT-B-16`, `sam@0.5` (loss weight)."""
    weights: Path | None = None
    """weights file/folder of the teachers that take one (sam; else $FEATUREFIELD_WEIGHTS or the user cache)."""
    steps: int | None = None
    """training steps (default 30,000 on GPU; on CPU the field's own: splat 520, nerf 2,400, the demo scene in 2-3
    minutes). Under `torchrun --nproc-per-node N` the run takes steps/N steps of N views each: the same views seen."""
    format: str | None = None
    """force a scene format instead of detecting it."""
    downscale: float = 1.0
    """shrink images by this factor."""
    resume: bool = False
    """continue the run in --output from its last checkpoint."""
    device: str = "auto"
    """auto, cpu or cuda."""
    seed: int = 0
    """seeds the field's initialisation and the batches."""
    eval_every: int = 0
    """evaluate on a few held-out views every this many steps (0: only at the end)."""
    final_eval_views: int | None = None
    """at most this many test views in the final evaluation (default: all of them)."""
    checkpoint_every: int = 1000
    """write the checkpoint every this many steps."""
    cache_dir: Path | None = None
    """feature cache folder (default: $FEATUREFIELD_CACHE or the per-user cache)."""
    no_features: bool = False
    """train colour only (no teacher)."""
    scene_option: tuple[str, ...] = ()
    """loader options as key=value, e.g. `size=96 views=24` for the demo scene."""
    scale_adam: bool = True
    """under torchrun, scale Adam for N views a step as gsplat's multi-GPU training (lr x sqrt(N), eps / sqrt(N),
    betas 1 - N(1 - beta)); --no-scale-adam keeps the one-GPU settings."""


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
        return int(tyro.cli(fn, args=first[1:], prog=f"{prog} {first[0]}", description=fn.__doc__.splitlines()[0]))
    specs = {n: s for n, s in everything.items() if n not in own}
    choice = Union[tuple(_subcommand(s) for s in specs.values())]  # noqa: UP007 - built at run time
    parsed = tyro.cli(choice, args=_with_field_first(args, list(specs)), prog=prog, description=description)
    kind = next(name for name in specs if hasattr(parsed, name))
    options = parse_options(parsed.scene_option, "--scene-option")
    name = "demo" if parsed.scene.startswith("demo") else Path(parsed.scene).resolve().name
    output = parsed.output or Path("runs") / f"{name}-{kind}"
    cfg = TrainConfig(steps=parsed.steps, seed=parsed.seed, eval_every=parsed.eval_every,
                      checkpoint_every=parsed.checkpoint_every, device=parsed.device, cache_dir=parsed.cache_dir,
                      final_eval_views=parsed.final_eval_views, scale_adam=parsed.scale_adam)
    run = train(parsed.scene, output, field=kind, teachers=[] if parsed.no_features else list(parsed.teacher),
                config=cfg, field_config=getattr(parsed, kind), format=parsed.format, downscale=parsed.downscale,
                weights=parsed.weights, resume=parsed.resume, scene_options=options)
    from featurefield.distributed import launched

    if launched().main:  # under torchrun, rank 0 reports for all
        summary = json.loads((run.path / "metrics.json").read_text())
        line = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
        print(f"trained {run.path}: {line}")
    return 0
