"""Decoded teacher features at 1920 x 1080 from a trained Gaussian run, ours beside the naive way.

Ours: the E-channel embedding rasterized, then decoded per pixel to the teacher's D channels
(``field.render(colour=False)`` + ``field.decode``), with the decode in fp32 and under fp16 autocast; also
with colour and depth in the same pass (what the viewer and ``featurefield render`` draw). The naive way (Feature
3DGS without its speed-up module): decode every Gaussian's embedding once, then rasterize the D channels directly.
Each camera is a test camera of the run with its vertical field of view kept and its image widened to
1920 x 1080. CUDA events, median per camera, then the median over cameras.

    python bench/render_1080.py RUN [--teacher sam] [--views 8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infra.cuda_timing import median_ms  # noqa: E402

from featurefield.errors import FeatureFieldError  # noqa: E402
from featurefield.run import load_run  # noqa: E402


def full_hd(cameras):
    """The same poses and vertical field of view, at 1920 x 1080 with a centred principal point."""
    s = 1080.0 / cameras.height.float()
    return replace(cameras, fx=cameras.fx * s, fy=cameras.fy * s, cx=torch.full_like(cameras.cx, 960.0),
                   cy=torch.full_like(cameras.cy, 540.0), width=torch.full_like(cameras.width, 1920),
                   height=torch.full_like(cameras.height, 1080))


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--teacher", default=None, help="default: the run's first teacher")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.exit(2, f"{ap.prog}: error: needs a CUDA GPU\n")
    try:
        run = load_run(args.run, device="cuda")
    except FeatureFieldError as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    field = run.field
    if field.kind != "splat":
        ap.exit(2, f"{ap.prog}: error: {args.run} is a {field.kind} run; this benchmark is for Gaussian runs\n")
    teacher = args.teacher or (run.teacher_names or [None])[0]
    if teacher not in run.teacher_names:
        ap.exit(2, f"{ap.prog}: error: {args.run} has no teacher {teacher!r} (has: {', '.join(run.teacher_names) or 'none'})\n")
    cams = full_hd(run.cameras("test")[: args.views]).to("cuda")
    per_gaussian = field.decoders[teacher](field.params["embedding"])  # [P, D], decoded once for the naive way
    ours_ms, half_ms, full_ms, naive_ms = [], [], [], []
    for i in range(len(cams)):
        cam = cams[i]

        def ours():
            return field.decode(field.render(cam, colour=False), teacher)  # [D, 1080, 1920]

        def ours_fp16():  # the same, the decode under autocast: half the bytes written per frame
            r = field.render(cam, colour=False)
            with torch.autocast("cuda", dtype=torch.float16):
                return field.decode(r, teacher)

        def ours_with_colour():
            r = field.render(cam, background=run.background)
            return field.decode(r, teacher), r.rgb, r.depth

        def naive():
            _, feats, _, _, _ = field.rasterize(cam, per_gaussian, rgb=False, depth=False)
            return feats  # [1080, 1920, D]

        if i == 0:  # the same features both ways, up to the bias the naive way leaves out where the render is clear
            r = field.render(cam, background=run.background)
            bias = field.decoders[teacher].bias
            gap = (field.decode(r, teacher).permute(1, 2, 0) - (1 - r.alpha) * bias - naive()).abs().max()
        ours_ms.append(median_ms(ours, warmup=3, reps=10))
        half_ms.append(median_ms(ours_fp16, warmup=3, reps=10))
        full_ms.append(median_ms(ours_with_colour, warmup=3, reps=10))
        naive_ms.append(median_ms(naive, warmup=2, reps=5))
    out = {"device": torch.cuda.get_device_name(), "run": args.run, "teacher": teacher,
           "gaussians": field.num_gaussians, "embed_dim": field.config.embed_dim,
           "teacher_dim": int(per_gaussian.shape[1]), "views": len(cams), "size": "1920x1080",
           "ours_ms": statistics.median(ours_ms),
           "ours_fp16_decode_ms": statistics.median(half_ms),
           "ours_with_colour_and_depth_ms": statistics.median(full_ms), "naive_ms": statistics.median(naive_ms),
           "max_abs_difference": float(gap)}
    out["ours_fps"] = 1000.0 / out["ours_ms"]
    out["ours_fp16_decode_fps"] = 1000.0 / out["ours_fp16_decode_ms"]
    out["ours_with_colour_and_depth_fps"] = 1000.0 / out["ours_with_colour_and_depth_ms"]
    out["naive_fps"] = 1000.0 / out["naive_ms"]
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
