"""The scaling table: one training per GPU count, each through ``torchrun`` (data parallel,
:mod:`featurefield.distributed`), with the same ``--steps`` (one-view steps: N ranks take steps/N steps of N
views, the views one GPU sees); then one Markdown table of ranks, steps, steps/s, views/s, the speed-up over
the first row, test PSNR and feature cosine, and the device.

The teacher's features are cached first by ``featurefield features`` (sharded over the most ranks asked
for), so every row's ``train_seconds`` (the training loop, from the run's ``metrics.json``) times training
alone; each row is a fresh run in ``--out/ranksN``. The rows run one after the other on the same GPUs.

On a multi-GPU machine (the claim: 2 GPUs, lego, 30k-equivalent, >= 1.7x one GPU at the same PSNR)::

    python bench/scaling.py ../shared/datasets/lego --teacher sam --weights WEIGHTS_DIR --ranks 1 2 --steps 30000

On the CPU, a check of the plumbing (two gloo processes; the figures mean nothing about GPUs)::

    python bench/scaling.py demo:1 --scene-option size=32 views=12 points=300 --no-features --device cpu \\
        --ranks 1 2 --steps 40

Extra ``featurefield train`` options go after ``--`` (e.g. ``-- --splat.strategy default``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun(ranks: int, *args: str, env: dict) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "featurefield.cli", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def row(ranks: int, summary: dict, base: dict | None, teachers: list[str]) -> dict:
    seconds = summary["train_seconds"]
    out = {"ranks": ranks, "steps": summary["steps"], "views": summary["steps"] * ranks, "train_s": seconds,
           "steps_per_s": summary["steps"] / seconds, "views_per_s": summary["steps"] * ranks / seconds,
           "speedup": (base["train_s"] / seconds) if base else 1.0, "psnr": summary.get("test/psnr"),
           "device": summary.get("gpu", summary.get("device"))}
    for t in teachers:
        out[f"cosine/{t}"] = summary.get(f"test/cosine/{t}")
    return out


def table(rows: list[dict], teachers: list[str]) -> str:
    head = ["ranks", "steps", "views seen", "train s", "steps/s", "views/s", "speed-up", "test PSNR",
            *[f"cosine {t}" for t in teachers], "device"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * (len(head) - 1) + " --- |"]
    for r in rows:
        cells = [str(r["ranks"]), f"{r['steps']:,}", f"{r['views']:,}", f"{r['train_s']:.1f}", f"{r['steps_per_s']:.2f}",
                 f"{r['views_per_s']:.2f}", f"{r['speedup']:.2f}x", "-" if r["psnr"] is None else f"{r['psnr']:.2f}",
                 *["-" if r.get(f"cosine/{t}") is None else f"{r[f'cosine/{t}']:.3f}" for t in teachers], str(r["device"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene")
    ap.add_argument("--field", default="splat")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=30_000, help="one-view steps, the same for every row")
    ap.add_argument("--teacher", nargs="+", default=["sam"])
    ap.add_argument("--no-features", action="store_true")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--scene-option", nargs="+", default=[])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--final-eval-views", type=int, default=None)
    ap.add_argument("--cache-dir", default="runs/scaling-cache")
    ap.add_argument("--out", default="runs/scaling")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    env = {**os.environ, "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    teachers = [] if args.no_features else args.teacher
    common = ["--device", args.device, "--cache-dir", args.cache_dir]
    if args.weights:
        common += ["--weights", args.weights]
    if teachers:
        torchrun(max(args.ranks), "features", args.scene, "--teacher", *teachers, "--pca", "0", *common, env=env)
    rows: list[dict] = []
    for n in args.ranks:
        run = Path(args.out) / f"ranks{n}"
        cmd = ["train", args.field, args.scene, "--output", str(run), "--steps", str(args.steps),
               "--checkpoint-every", str(10**9), *common]
        cmd += ["--no-features"] if not teachers else ["--teacher", *teachers]
        if args.scene_option:
            cmd += ["--scene-option", *args.scene_option]
        if args.final_eval_views:
            cmd += ["--final-eval-views", str(args.final_eval_views)]
        if run.exists():
            import shutil

            shutil.rmtree(run)
        torchrun(n, *cmd, *extra, env=env)
        summary = json.loads((ROOT / run / "metrics.json").read_text())
        rows.append(row(n, summary, rows[0] if rows else None, teachers))
    print()
    print(f"{args.field} on {args.scene}, --steps {args.steps:,} (one-view steps) on each row")
    print(table(rows, teachers))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
