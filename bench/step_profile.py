"""Where a training step of either field spends its time (CUDA): steps/s, GPU busy %, host ms per step.

Builds the same Trainer as ``featurefield train`` (features from the cache or the teacher), runs
``--warm`` steps, times ``--timed`` steps with the GPU synchronised only at both ends, then profiles
``--profiled`` more steps. GPU busy % is the summed kernel time of the profiled steps over their wall
time; host ms per step is the CPU time the Python side of a step takes (the time between two launches
of the step when the GPU is not the limit).

    python bench/step_profile.py SCENE --field nerf --weights SAM_ENCODER.onnx [--warm 300] [--timed 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from featurefield.data import load_scene
    from featurefield.fields.registry import field_spec
    from featurefield.teachers import TeacherSpec
    from featurefield.train import TrainConfig, Trainer

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
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/step_profile.py needs a CUDA GPU")

    scene = load_scene(args.scene, format=args.format)
    spec = field_spec(args.field)
    cfg = spec.config_class()()
    trainer = Trainer(Path(args.out), scene, args.field, cfg,
                      [TeacherSpec.parse("sam", Path(args.weights))], TrainConfig(steps=30_000, progress=False))
    t0 = time.perf_counter()
    trainer.prepare()
    prepare_s = time.perf_counter() - t0
    torch.manual_seed(0)
    fld = spec.field_class().create(scene, trainer.targets, cfg, max_steps=30_000, device="cuda").cuda()
    fld.train()
    gen = torch.Generator().manual_seed(0)
    flag = torch.zeros((), dtype=torch.bool, device="cuda")
    fld.optimizers(), fld.schedulers()
    step = 0
    for _ in range(args.warm):
        trainer.step(fld, step, gen, flag)
        step += 1
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for _ in range(args.timed):
        trainer.step(fld, step, gen, flag)
        step += 1
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rate = args.timed / wall
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tp = time.perf_counter()
        for _ in range(args.profiled):
            trainer.step(fld, step, gen, flag)
            step += 1
        torch.cuda.synchronize()
        prof_wall = time.perf_counter() - tp
    table = prof.key_averages()
    per_key = {e.key: e for e in table}
    gpu_ms = sum(e.self_device_time_total for e in table
                 if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3 / args.profiled

    def calls(key: str) -> float:
        return per_key[key].count / args.profiled if key in per_key else 0.0

    result = {"field": args.field, "scene": args.scene, "prepare_s": prepare_s, "steps_per_s": rate,
              "ms_per_step": 1000 / rate, "gpu_kernel_ms_per_step": gpu_ms,
              "gpu_busy_pct": 100 * gpu_ms / (1000 / rate),
              "host_cpu_ms_per_step": 1000 * (time.process_time() - cpu0) / args.timed,
              "profiled_ms_per_step": 1000 * prof_wall / args.profiled,
              "launches_per_step": calls("cudaLaunchKernel"), "syncs_per_step": calls("cudaStreamSynchronize"),
              "memcpy_per_step": calls("cudaMemcpyAsync"), "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
    if hasattr(fld, "num_gaussians"):
        result["gaussians"] = fld.num_gaussians
    print(json.dumps(result))
    print(table.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
