"""The ``featurefield`` command: dispatches to :mod:`featurefield.commands`, which parses arguments with tyro.

Each subcommand is a typed function in ``featurefield/commands/``; only the one asked for is imported,
so ``featurefield --help`` is instant. A :class:`~featurefield.errors.FeatureFieldError` is printed
on one line and exits with code 2; a :class:`~featurefield.errors.FeatureFieldWarning` is printed on one
line and the work goes on. Other libraries' warnings (torch, onnx, timm...) are hidden; run under
``python -W default -m featurefield.cli`` (or with ``PYTHONWARNINGS`` set) to see every warning as Python shows it.

Under torchrun (``featurefield features`` and ``featurefield train``, one process per GPU) rank 0 speaks for
all: the other ranks' stderr is silenced while they run, so an error every rank raises alike prints once;
an error of one rank's own (:func:`featurefield.distributed.rank_specific`), or a bug's traceback, still
prints from the rank that has it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from featurefield.errors import FeatureFieldError, FeatureFieldWarning
from featurefield.stopping import TrainingStopped

#: subcommand -> ("module:function" in featurefield.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo:demo_command", "run the whole pipeline on the built-in demo scene and write an HTML report"),
    "process-images": ("process_images:process_images_command", "recover camera poses of plain photos or a video with COLMAP (pycolmap)"),
    "inspect": ("inspect:inspect_command", "load a scene folder and summarise it (format, views, split, points)"),
    "teachers": ("teachers:teachers_command", "list teachers and whether their weights are present"),
    "weights": ("teachers:weights_command", "put a teacher's weights in the per-user cache"),
    "features": ("teachers:features_command", "extract and cache teacher features of a scene; write PCA pictures"),
    "train": ("train:train_command", "train a feature field: `train splat|nerf SCENE`, or over a category: `train general DATA`"),
    "render": ("render:render_command", "render test views or a camera path of a trained run to PNGs and MP4"),
    "export": ("export:export_command", "export a trained run (3DGS PLY with embeddings, or a point cloud)"),
    "query": ("query:query_command", "text or prompt queries on a trained run; extract objects in 3D"),
    "eval": ("eval:eval_command", "evaluate a trained run: PSNR/SSIM/LPIPS, feature fidelity, mask IoU, PCK, mIoU"),
    "view": ("view:view_command", "open a trained run in the browser: colour, depth, feature PCA, cut-outs; text queries "
                                  "(clip runs), SAM clicks (sam runs)"),
    "make-category": ("general:make_category_command", "render a procedural object category (mugs, chairs) into shards for general fields"),
}

#: verbs whose first argument is a run folder: a run of a field with verbs of its own (its FieldSpec's
#: ``commands``, e.g. the generalizable field's query and eval) goes to those
RUN_VERBS = ("query", "eval")


def _own_command(verb: str, rest: list[str]) -> str | None:
    """The field's own command for ``verb`` when ``rest`` starts with such a run's folder, else ``None``."""
    import json
    from pathlib import Path

    if not rest or rest[0].startswith("-"):
        return None
    try:
        kind = json.loads((Path(rest[0]) / "config.json").read_text()).get("field")
    except (OSError, ValueError, AttributeError):
        return None
    from featurefield.fields.registry import registered

    spec = registered().get(kind) if isinstance(kind, str) else None
    return spec.own_command(verb) if spec is not None else None


#: commands that may run under torchrun (one process per GPU)
DISTRIBUTED_COMMANDS = {"features", "train"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: featurefield COMMAND [OPTIONS]", "", "Distill 2D foundation-model features into 3D scenes.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `featurefield COMMAND --help` for a command's options."]
    return "\n".join(lines)


@contextlib.contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """While the block runs, our warnings are one line each on stderr (``PROG: warning: ...``, no source line)
    and other libraries' warnings are dropped, unless the user asked Python for warnings (``-W``, ``PYTHONWARNINGS``)."""
    with warnings.catch_warnings():
        if not sys.warnoptions:
            warnings.simplefilter("ignore")
            warnings.simplefilter("default", FeatureFieldWarning)

            def show(message, category, filename, lineno, file=None, line=None) -> None:
                print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

            warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    if argv is None and hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `featurefield train --help | head` ends quietly, as Unix tools do
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from featurefield import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"featurefield: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, help_ = COMMANDS[name]
    if name in RUN_VERBS:
        target = _own_command(name, rest) or target
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and name not in DISTRIBUTED_COMMANDS:
        if rank == 0:
            print(f"featurefield {name}: error: runs in one process; under torchrun only `featurefield train` "
                  "(data parallel) and `featurefield features` (sharded extraction) work; run this command alone",
                  file=sys.stderr)
        return 2
    with one_line_warnings(f"featurefield {name}"):
        return _dispatch(name, target, help_, rest, world, rank)


def _dispatch(name: str, target: str, help_: str, rest: list[str], world: int = 1, rank: int = 0) -> int:
    """Run ``featurefield NAME REST`` (``target`` is its "module:function"); known errors become exit codes."""
    speaks = rank == 0 or world == 1  # the one rank that prints what every rank has to say
    try:
        with _silenced_stderr(not speaks):
            module, func = target.split(":")
            fn = getattr(importlib.import_module(f"featurefield.commands.{module}"), func)
            if getattr(fn, "parses_own_arguments", False):
                result = fn(rest, prog=f"featurefield {name}", description=help_)
            else:
                from featurefield.commands import cli

                result = cli(fn, rest, f"featurefield {name}", help_)
        return int(result) if isinstance(result, int) else 0
    except TrainingStopped as err:  # not an error: the run is intact and resumable
        if speaks:
            print(f"featurefield {name}: {err}", file=sys.stderr)
        return err.exit_code
    except FeatureFieldError as err:
        if speaks or getattr(err, "rank_specific", False):
            where = "" if speaks else f"rank {rank}: "
            print(f"featurefield {name}: error: {where}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if speaks:
            print(f"featurefield {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if world > 1 and _lost_another_rank(err):
            if speaks:
                print(f"featurefield {name}: error: another rank stopped (its message is above, else in torchrun's "
                      "report); continue from the last checkpoint with --resume", file=sys.stderr)
            return 1
        raise


@contextlib.contextmanager
def _silenced_stderr(silent: bool):
    """stderr to /dev/null for the block when ``silent``; a traceback escaping it still prints (after the block)."""
    if not silent:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        yield


def _lost_another_rank(err: Exception) -> bool:
    """Whether ``err`` is a collective that failed because another rank went away: torch's DistError (NCCL, the
    store), or gloo's RuntimeError of a connection the other side closed."""
    dist_error = getattr(getattr(sys.modules.get("torch"), "distributed", None), "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and "gloo" in text and ("by peer" in text or "Broken pipe" in text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
