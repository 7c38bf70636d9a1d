"""Where a training step of either field spends its time (CUDA): steps/s, GPU busy %, host ms per step.

Builds the same Trainer as ``featurefield train`` (features from the cache or the teacher), runs
``--warm`` steps, times ``--timed`` steps with the GPU synchronised only at both ends, then profiles
``--profiled`` more steps. GPU busy % is the summed kernel time of the profiled steps over the wall
time of a timed step; ``host_cpu_ms_per_step`` is the process's CPU time per timed step (all threads,
so it can exceed the wall time); ``host_busy_ms_per_step`` is a profiled step's wall time less the time
its thread waited for the GPU (synchronisations and blocking copies): the Python side of a step.

``--format colmap`` reads a scene
holding both a COLMAP model and ``poses_bounds.npy`` through COLMAP (distorted cameras).

    python bench/step_profile.py SCENE --field nerf --weights SAM_ENCODER.onnx [--format llff] [--warm 300] [--timed 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_trainer(args, scene):
    """``(trainer, field class, field config)`` for ``args.field`` (the registry's spec) with the SAM teacher."""
    from featurefield.fields.registry import field_spec
    from featurefield.teachers import TeacherSpec
    from featurefield.train import TrainConfig, Trainer

    spec = field_spec(args.field)
    cfg = spec.config_class()()
    trainer = Trainer(Path(args.out), scene, args.field, cfg, [TeacherSpec.parse("sam", Path(args.weights))],
                      TrainConfig(steps=30_000, progress=False, device=args.device))
    return trainer, spec.field_class(), cfg


def main() -> None:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from featurefield.data import load_scene

    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--field", default="splat")
    ap.add_argument("--format", default=None)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--timed", type=int, default=300)
    ap.add_argument("--profiled", type=int, default=20)
    ap.add_argument("--out", default="runs/bench-step-profile")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to check the script at a tiny size")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/step_profile.py needs a CUDA GPU (--device cpu checks the script on a tiny scene)")
    on_cuda = args.device == "cuda"

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    scene = load_scene(args.scene, format=args.format)
    trainer, cls, cfg = build_trainer(args, scene)
    t0 = time.perf_counter()
    trainer.prepare()
    prepare_s = time.perf_counter() - t0

    torch.manual_seed(0)
    fld = cls.create(scene, trainer.targets, cfg, max_steps=30_000, device=args.device).to(args.device)
    fld.train()
    gen = torch.Generator().manual_seed(0)
    flag = torch.zeros((), dtype=torch.bool, device=args.device)
    fld.optimizers(), fld.schedulers()
    step = 0
    for _ in range(args.warm):
        trainer.step(fld, step, gen, flag)
        step += 1
    sync()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for _ in range(args.timed):
        trainer.step(fld, step, gen, flag)
        step += 1
    sync()
    wall = time.perf_counter() - t0
    rate = args.timed / wall
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as prof:
        tp = time.perf_counter()
        for _ in range(args.profiled):
            trainer.step(fld, step, gen, flag)
            step += 1
        sync()
        prof_wall = time.perf_counter() - tp
    table = prof.key_averages()
    per_key = {e.key: e for e in table}
    gpu_ms = sum(e.self_device_time_total for e in table
                 if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3 / args.profiled

    def calls(key: str) -> float:
        return per_key[key].count / args.profiled if key in per_key else 0.0

    waits = sum(per_key[k].self_cpu_time_total for k in ("cudaStreamSynchronize", "cudaMemcpyAsync", "cudaDeviceSynchronize",
                                                         "cudaEventSynchronize") if k in per_key) / 1e3
    result = {"field": args.field, "scene": args.scene, "format": scene.format,
              "cameras": getattr(trainer.data.cameras, "model", "?"), "prepare_s": prepare_s, "steps_per_s": rate,
              "ms_per_step": 1000 / rate, "gpu_kernel_ms_per_step": gpu_ms,
              "gpu_busy_pct": 100 * gpu_ms / (1000 / rate),
              "host_cpu_ms_per_step": 1000 * (time.process_time() - cpu0) / args.timed,
              "profiled_ms_per_step": 1000 * prof_wall / args.profiled,
              "host_busy_ms_per_step": (1000 * prof_wall - waits) / args.profiled,
              "launches_per_step": calls("cudaLaunchKernel"), "syncs_per_step": calls("cudaStreamSynchronize"),
              "memcpy_per_step": calls("cudaMemcpyAsync"), "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if on_cuda else None}
    if hasattr(fld, "num_gaussians"):
        result["gaussians"] = fld.num_gaussians
    print(json.dumps(result))
    print(table.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
