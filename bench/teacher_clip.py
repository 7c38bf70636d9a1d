"""Benchmark: clip teacher (ViT-L-14-336, random weights) images/s, FLOPs and fraction of bf16 peak.

Also measures the large-image trade-off: at a shorter side of 672 px (48x48 feature grid), one
interpolated-position pass vs sliding 336-px windows (stride 168).

    python bench/teacher_clip.py --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurefield.teachers.clip import ClipTeacher  # noqa: E402

H100_BF16_DENSE_SPEC = 989e12
H100_BF16_MEASURED = 790e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-L-14-336")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=800)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "model": args.model,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "image_size": [args.size, args.size]}
    t0 = time.perf_counter()
    base = ClipTeacher(model=args.model, pretrained=None, max_batch=args.batch).to(dev)
    res["build_s"] = time.perf_counter() - t0
    images = torch.rand(args.images, 3, args.size, args.size, device=dev)

    def measure(teacher, label, iters=3):
        from torch.utils.flop_counter import FlopCounterMode

        try:
            teacher.extract(images[: teacher.max_batch])  # warm-up
            with FlopCounterMode(display=False) as fc:
                teacher.extract(images[:1])
            flops_per_image = fc.get_total_flops()
            torch.cuda.synchronize() if dev.type == "cuda" else None
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                for i in range(0, len(images), teacher.max_batch):
                    teacher.extract(images[i:i + teacher.max_batch])
                torch.cuda.synchronize() if dev.type == "cuda" else None
                times.append(time.perf_counter() - t)
            dt = sorted(times)[len(times) // 2]
            rate = len(images) / dt
            h, w = teacher.feature_grid(args.size, args.size)
            res[label] = {"images_per_s": rate, "grid": [h, w], "gflop_per_image": flops_per_image / 1e9,
                          "tflop_per_s": rate * flops_per_image / 1e12,
                          "fraction_of_989_spec": rate * flops_per_image / H100_BF16_DENSE_SPEC,
                          "fraction_of_790_measured": rate * flops_per_image / H100_BF16_MEASURED,
                          "settings": teacher.settings()}
        except Exception as err:
            res[label] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-1500:]}
        print(label, json.dumps(res[label])[:400], flush=True)
        (args.out / "teacher_clip.json").write_text(json.dumps(res, indent=1))

    measure(base, "default_interpolate_336")
    for tiling in ("interpolate", "sliding"):
        t = ClipTeacher.__new__(ClipTeacher)
        t.__dict__.update(base.__dict__)
        t.tiling, t.resolution, t.max_batch = tiling, 2 * base.input_size, 8
        measure(t, f"{tiling}_672")
    mc = ClipTeacher.__new__(ClipTeacher)
    mc.__dict__.update(base.__dict__)
    mc.dense = "maskclip"
    measure(mc, "maskclip_336")


if __name__ == "__main__":
    main()
