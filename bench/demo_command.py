"""Time ``featurefield demo`` end to end on CPU (target: under 10 minutes on 2 cores at the defaults).

Usage: python bench/demo_command.py [--output /tmp/ff-demo-bench] [--size 128] [--views 32] [--steps N]
       [--field splat] [--weights DIR] [--cache-dir DIR]

Prints the time of each stage (scene, teacher features + training, rendering, queries, evaluation)
as recorded in OUTPUT/metrics.json. Pass a fresh --cache-dir to include teacher feature extraction.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from featurefield.commands.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("/tmp/ff-demo-bench"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--field", default="splat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.output.exists():
        shutil.rmtree(args.output)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_demo(args.output, field=args.field, steps=args.steps, size=args.size, views=args.views,
                   device=args.device, weights=args.weights, cache_dir=args.cache_dir, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"featurefield demo: teacher {res.teacher}{' (fallback)' if res.fallback else ''}, {res.metrics['steps']} steps, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    for stage, seconds in res.metrics["timings_s"].items():
        print(f"  {stage:<24} {seconds:8.1f} s")
    print(f"total: {wall:.1f} s wall, {cpu:.1f} s CPU; PSNR {res.metrics['evaluate']['image']['psnr']:.2f} dB; "
          f"report {res.report}")


if __name__ == "__main__":
    main()
