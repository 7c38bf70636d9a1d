"""One table of a lego sweep: ``python bench/sweep_table.py OUT RUN...`` (used by ``device_lego.sh sweep``).

Reads each run's ``metrics.json`` (steps, Gaussians, training seconds) and ``OUT/<run>.json`` (the
``featurefield eval`` result over the test views present) and prints one row per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path, out: Path) -> str:
    ev_path, m_path = out / f"{run.name}.json", run / "metrics.json"
    if not m_path.exists():
        return f"{run.name:<18} unfinished"
    m = json.loads(m_path.read_text())
    if not ev_path.exists():
        return f"{run.name:<18} {m['steps']:>6} not evaluated (trainer's test PSNR {m.get('psnr', float('nan')):.2f})"
    e = json.loads(ev_path.read_text())
    cos = e.get("features", {}).get("sam", {}).get("cosine", float("nan"))
    return (f"{run.name:<18} {m['steps']:>6} {e['views']:>5} {e['image']['psnr']:>7.2f} {e['image']['ssim']:>6.3f} "
            f"{cos:>7.3f} {int(m.get('gaussians', -1)):>9} {m.get('train_seconds', float('nan')):>8.0f}")


def main(argv: list[str]) -> None:
    out, runs = Path(argv[0]), [Path(r) for r in argv[1:]]
    print(f"{'run':<18} {'steps':>6} {'views':>5} {'PSNR':>7} {'SSIM':>6} {'cosine':>7} {'Gaussians':>9} {'train s':>8}")
    for run in sorted(runs):
        print(row(run, out))


if __name__ == "__main__":
    main(sys.argv[1:])
