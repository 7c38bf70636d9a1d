"""Render chosen test views of a run beside their ground truth, to find where a run loses PSNR.

    python bench/render_views.py RUN --eval RUN_EVAL.json --worst 6 --out DIR
    python bench/render_views.py RUN --views 102 110 --out DIR

For each view writes ``DIR/view_NNNN.png``: ground truth | render | 4 x absolute error | rendered alpha
| rendered depth, side by side, and prints the view's PSNR and the alpha mass outside the ground-truth
silhouette (floaters in front of a white background show up there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featurefield.errors import FeatureFieldError
from featurefield.metrics import psnr
from featurefield.run import load_run


def worst_views(eval_json: Path, n: int) -> list[int]:
    """The ``n`` view indices with the lowest PSNR in a ``featurefield eval`` result."""
    per_view = json.loads(eval_json.read_text())["image"]["psnr_per_view"]
    return [int(v) for v, _ in sorted(per_view.items(), key=lambda kv: kv[1])[:n]]


def _gray(x: torch.Tensor) -> np.ndarray:
    """``[H, W]`` in [0, 1] to ``[H, W, 3]`` uint8."""
    return (x.clamp(0, 1)[..., None].expand(*x.shape, 3).cpu().numpy() * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--views", type=int, nargs="*", default=[])
    ap.add_argument("--eval", type=Path, help="a featurefield eval JSON (for --worst)")
    ap.add_argument("--worst", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    try:
        run = load_run(args.run)
        views = list(args.views) + (worst_views(args.eval, args.worst) if args.eval and args.worst else [])
    except (FeatureFieldError, OSError, KeyError, ValueError) as err:
        print(f"render_views: {err}", file=sys.stderr)
        sys.exit(2)
    scene = run.scene()
    args.out.mkdir(parents=True, exist_ok=True)
    cams = run.normalization.cameras_to_canonical(scene.cameras[views]).to(run.device)
    for k, v in enumerate(views):
        with torch.no_grad():
            r = run.field.render(cams[k], background=run.background, features=False)
        gt = scene.image(v).to(run.device)
        alpha = r.alpha.reshape(gt.shape[:2]).float()
        gt_alpha = scene.alpha(v)
        outside = float("nan") if gt_alpha is None else float((alpha * (gt_alpha.to(alpha.device) < 0.01)).sum())
        depth = r.depth.reshape(gt.shape[:2]).float()
        finite = depth[alpha > 0.5]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        tiles = [(gt.cpu().numpy() * 255).astype(np.uint8), (r.rgb.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8),
                 _gray((4 * (r.rgb - gt).abs()).mean(-1)), _gray(alpha), _gray((depth - lo) / max(hi - lo, 1e-6))]
        Image.fromarray(np.concatenate(tiles, 1)).save(args.out / f"view_{v:04d}.png")
        print(f"view {v}: PSNR {psnr(r.rgb, gt):.2f} dB, rendered alpha outside the silhouette {outside:.0f} px")


if __name__ == "__main__":
    main()
