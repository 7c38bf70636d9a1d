"""Train lego with the Gaussian feature field and the sam teacher; print the run's summary.

Reports test PSNR and mean cosine similarity of rendered vs teacher features on the scene's test
views, wall time including feature extraction, and peak GPU memory (from the trainer's
``metrics.json``). Needs CUDA.

    python bench/splat_lego.py LEGO_DIR --weights SAM_ENCODER.onnx [--steps 30000] [--embed-dim 14] [--out DIR]
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

    from featurefield.fields.splat.config import SplatConfig
    from featurefield.train import TrainConfig, train

    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--embed-dim", type=int, default=SplatConfig().embed_dim)
    ap.add_argument("--out", default="runs/bench-lego-splat")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/splat_lego.py needs a CUDA GPU")
    t0 = time.perf_counter()
    run = train(args.scene, args.out, field="splat", teachers=["sam"], weights=Path(args.weights),
                config=TrainConfig(steps=args.steps, checkpoint_every=10**9),
                field_config=SplatConfig(embed_dim=args.embed_dim))
    summary = json.loads((run.path / "metrics.json").read_text())
    summary["bench_wall_s"] = time.perf_counter() - t0
    summary["device"] = torch.cuda.get_device_name()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
