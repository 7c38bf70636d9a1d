"""The linear decode alone at 1920 x 1080: an E-channel embedding map to D teacher channels, several ways.

What ``GaussianField.decode`` does after the rasterizer, timed in isolation (CUDA events, median). The input is
laid out as the rasterizer leaves it: ``[H, W, E]`` sliced out of ``[H, W, max(16, E)]``.

    python bench/decode_speed.py [--embed-dim 14] [--dim 256] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infra.cuda_timing import median_ms  # noqa: E402


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed-dim", type=int, default=14)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.embed_dim < 1 or args.dim < 1:
        ap.exit(2, f"{ap.prog}: error: --embed-dim and --dim must be at least 1\n")
    if not torch.cuda.is_available():
        ap.exit(2, f"{ap.prog}: error: needs a CUDA GPU\n")
    e, d = args.embed_dim, args.dim
    raster = torch.randn(1080, 1920, max(16, e), device="cuda")
    emb = raster[..., :e]  # [H, W, E], not contiguous
    weight, bias = torch.randn(d, e, device="cuda") / e**0.5, torch.randn(d, device="cuda")

    def pixels_last():  # what decode does now: nn.Linear on [H, W, E], then a permuted view [D, H, W]
        return F.linear(emb, weight, bias).permute(2, 0, 1)

    def channels_first():  # [D, E] @ [E, H*W] + bias: a contiguous [D, H, W]
        return torch.addmm(bias[:, None], weight, emb.reshape(-1, e).T).view(d, 1080, 1920)

    def fp16_autocast():
        with torch.autocast("cuda", dtype=torch.float16):
            return F.linear(emb, weight, bias).permute(2, 0, 1)

    def fp16_channels_first():
        with torch.autocast("cuda", dtype=torch.float16):
            return torch.addmm(bias[:, None], weight, emb.reshape(-1, e).T).view(d, 1080, 1920)

    def tf32():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return F.linear(emb, weight, bias).permute(2, 0, 1)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    def write_only():  # the floor: writing [D, H, W] fp32 once
        return torch.empty(d, 1080, 1920, device="cuda").fill_(1.0)

    ref = pixels_last()
    out = {"device": torch.cuda.get_device_name(), "embed_dim": e, "dim": d, "size": "1920x1080"}
    for name, fn in [("pixels_last_fp32", pixels_last), ("channels_first_fp32", channels_first),
                     ("pixels_last_fp16_autocast", fp16_autocast), ("channels_first_fp16_autocast", fp16_channels_first),
                     ("pixels_last_tf32", tf32), ("fill_fp32_output", write_only)]:
        out[f"{name}_ms"] = median_ms(fn, warmup=3, reps=15)
        if name != "fill_fp32_output":
            out[f"{name}_max_abs_difference"] = float((fn().float() - ref).abs().max())
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
