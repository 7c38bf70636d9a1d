"""One table of a lego sweep: ``python bench/infra/sweep_table.py OUT RUN...`` (used by ``device_lego.sh sweep``).

Reads each run's ``metrics.json`` (steps, Gaussians, training seconds) and ``OUT/<run>.json`` (the
``featurefield eval`` result over the test views present) and prints one row per run. "worst 12%" is
the mean PSNR of the lowest-scoring 12% of the views (24 of lego's 200): where floaters show.
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
    per_view = sorted(e["image"].get("psnr_per_view", {}).values())
    worst = per_view[:max(1, round(0.12 * len(per_view)))]
    worst_mean = sum(worst) / len(worst) if worst else float("nan")
    return (f"{run.name:<18} {m['steps']:>6} {e['views']:>5} {e['image']['psnr']:>7.2f} {worst_mean:>9.2f} "
            f"{e['image']['ssim']:>6.3f} "
            f"{cos:>7.3f} {int(m.get('gaussians', -1)):>9} {m.get('train_seconds', float('nan')):>8.0f}")


def main(argv: list[str]) -> None:
    out, runs = Path(argv[0]), [Path(r) for r in argv[1:]]
    print(f"{'run':<18} {'steps':>6} {'views':>5} {'PSNR':>7} {'worst 12%':>9} {'SSIM':>6} {'cosine':>7} {'Gaussians':>9} {'train s':>8}")
    for run in sorted(runs):
        print(row(run, out))


if __name__ == "__main__":
    main(sys.argv[1:])
