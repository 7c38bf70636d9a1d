"""Where a Gaussian-field training step spends its time (CUDA): steps/s, then a torch.profiler table.

Builds the same Trainer as ``featurefield train`` (features from the cache or the teacher), runs
``--warm`` steps so densification has grown the model, times ``--timed`` steps, and profiles
``--profiled`` more. Needs CUDA.

    python bench/splat_profile.py LEGO_DIR --weights SAM_ENCODER.onnx [--warm 1500] [--embed-dim 14] [--feature-render joint separate]
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
    from featurefield.fields.splat.config import SplatConfig
    from featurefield.teachers import TeacherSpec
    from featurefield.train import TrainConfig, Trainer

    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--warm", type=int, default=1500)
    ap.add_argument("--timed", type=int, default=300)
    ap.add_argument("--profiled", type=int, default=30)
    ap.add_argument("--embed-dim", type=int, default=SplatConfig().embed_dim)
    ap.add_argument("--feature-render", nargs="+", default=["joint", "separate"], help="variants timed in turn")
    ap.add_argument("--out", default="runs/bench-splat-profile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/splat_profile.py needs a CUDA GPU")

    scene = load_scene(args.scene)
    trainer = Trainer(Path(args.out), scene, "splat", SplatConfig(embed_dim=args.embed_dim),
                      [TeacherSpec.parse("sam", Path(args.weights))], TrainConfig(steps=30_000, progress=False))
    trainer.prepare()
    results = []
    for k, mode in enumerate(args.feature_render):
        cfg = SplatConfig(embed_dim=args.embed_dim, feature_render=mode)
        torch.manual_seed(0)
        fld = field_spec("splat").field_class().create(scene, trainer.targets, cfg, max_steps=30_000, device="cuda").cuda()
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
        for _ in range(args.timed):
            trainer.step(fld, step, gen, flag)
            step += 1
        torch.cuda.synchronize()
        rate = args.timed / (time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.profiled):
                trainer.step(fld, step, gen, flag)
                step += 1
            torch.cuda.synchronize()
        table = prof.key_averages()
        per_step = {e.key: e for e in table}
        gpu_ms = sum(e.self_device_time_total for e in table
                     if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3 / args.profiled
        cpu_ms = sum(e.self_cpu_time_total for e in table) / 1e3 / args.profiled

        def calls(key: str) -> float:
            return per_step[key].count / args.profiled if key in per_step else 0.0

        result = {"feature_render": mode, "pass_size": fld.feature_pass_size(fld._train_view(trainer.data, 0)),
                  "gaussians": fld.num_gaussians, "at_step": step, "steps_per_s": rate, "ms_per_step": 1000 / rate,
                  "profiled_gpu_ms_per_step": gpu_ms, "profiled_cpu_ms_per_step": cpu_ms,
                  "launches_per_step": calls("cudaLaunchKernel"), "syncs_per_step": calls("cudaStreamSynchronize"),
                  "memcpy_per_step": calls("cudaMemcpyAsync")}
        print(json.dumps(result))
        results.append(result)
        if k == 0:
            print(table.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
            print(table.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
        del fld
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
