"""How long the viewer takes to draw a frame of each output of a run, at a few sizes (medians).

    python bench/viewer_speed.py RUN [--sides 128 256 512 1024] [--repeats 5]

This is what `featurefield view` waits for after the camera moves (a preview) and once it rests (full
size); `featurefield.viewer.server.default_sides` picks the sizes from such figures. The prompt output
is timed without a prompt (its colour path), as a click's cost is SAM's decoder on top.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featurefield.errors import FeatureFieldError
from featurefield.run import load_run
from featurefield.viewer import ViewRenderer
from featurefield.viewer.viser_cameras import sized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--sides", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    try:
        run = load_run(args.run, device=args.device)
    except FeatureFieldError as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    renderer = ViewRenderer(run)
    camera = run.cameras("test")[0]
    outputs = [o for o in renderer.outputs if not o.startswith(("text:", "prompt:"))]
    print(f"{run.path} on {run.device} ({run.field.kind}); ms per frame, median of {args.repeats}")
    print(f"{'side':>6} " + " ".join(f"{o:>16}" for o in outputs))
    for side in args.sides:
        cam = sized(camera, side)
        row = []
        for output in outputs:
            renderer.render(cam, output)  # warm-up (and the PCA basis, once)
            times = []
            for _ in range(args.repeats):
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                renderer.render(cam, output)
                times.append((time.perf_counter() - start) * 1e3)
            row.append(statistics.median(times))
        print(f"{side:>6} " + " ".join(f"{t:>16.1f}" for t in row))


if __name__ == "__main__":
    main()
