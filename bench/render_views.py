"""Draw chosen views of a run beside their ground truth, from a saved ``featurefield eval`` result.

    python bench/render_views.py RUN --eval RUN_EVAL.json --worst 6 --out DIR
    python bench/render_views.py RUN --views 102 110 --out DIR

Writes ``DIR/view_NNNN.png`` per view (ground truth | render | error | opacity | depth, as
``featurefield eval RUN --worst N`` draws them, without evaluating the run again) and prints each
view's PSNR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from featurefield.errors import FeatureFieldError
from featurefield.evaluate import view_picture, worst_views
from featurefield.run import load_run
from featurefield.viz import save_png


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
        views = list(args.views)
        if args.eval and args.worst:
            views += [v for v, _ in worst_views(json.loads(args.eval.read_text()), args.worst)]
        for v in views:
            picture, db = view_picture(run, v)
            save_png(args.out / f"view_{v:04d}.png", picture)
            print(f"view {v}: PSNR {db:.2f} dB")
    except (FeatureFieldError, OSError, KeyError, ValueError, IndexError) as err:
        print(f"render_views: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
