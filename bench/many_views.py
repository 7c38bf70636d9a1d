"""Captures of many views on one machine: peak host memory, peak GPU memory and steps/s at N views (100 vs 1,000).

For each N the procedural demo scene (:func:`featurefield.data.demo_scene.make_demo_scene`, ``lazy=True``) is
written as a nerfstudio folder of N PNG views (in parallel, kept under ``--work`` and reused), then a child
process trains ``--steps`` steps of ``--field`` on it with ``--teacher`` (extracting the features into a cache
of its own first) and reports:

- ``peak_rss_gb``: the child's peak resident set (``getrusage``: everything it mapped and touched, features
  extraction and the final evaluation included) and ``rss_growth_gb``, that less the RSS after the imports
  and the scene's loading (what the data and the field cost);
- ``prepare_peak_gb`` and ``data_rss_gb``: the peak resident set up to the end of the data's preparation
  (features extracted, views loaded or their caches written) and what the prepared data holds (the resident
  set then, less before): on the CPU the training loop's own peak is the rasterizer's, which hides the data;
- ``peak_gpu_gb``: ``torch.cuda.max_memory_allocated`` over the training loop (``metrics.json``);
- ``steps_per_s``: the training loop's rate between its second and last logged steps (warm-up excluded), and
  ``data_ms_per_step``: the host's time per step in the view source (reading, waiting for read-aheads,
  starting copies), the part of a step that could grow with the number of views;
- ``feature_s``: time to prepare the data (image cache, teacher features) and ``residency``: where the views
  lived (absent on versions without ``--data.residency``).

The claim to check (issue #22): at 512 px peak RSS and GPU memory do not grow with N, nor does the time of a
step. Each ``--residency`` is passed as ``--data.residency`` (``none``: not passed, for versions before it). The
teacher defaults to a randomly initialised DINOv2 ViT-S (no weights needed; its features are the size of the
real model's: 37 x 37 x 384 at 512 px); ``--teacher sam:weights=FOLDER`` distills SAM.

    # GPU (one card): 512 px, 100 and 1,000 views
    python bench/many_views.py --views 100 1000 --size 512 --steps 2000 --field splat --residency stream device
    python bench/many_views.py --views 100 1000 --size 512 --steps 2000 --field nerf --residency stream device
    # CPU check at a size the CPU handles
    python bench/many_views.py --views 100 1000 --size 192 --supersample 1 --steps 40 --device cpu --threads 1 \\
        --teacher dino:pretrained=random,resolution=168 --residency stream
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _render_chunk(args: tuple[dict, Path, list[int]]) -> int:
    """Write views ``chunk`` of the lazy demo scene as ``images/{i:05d}.png`` (one process of the pool)."""
    import torch
    from PIL import Image

    from featurefield.data.demo_scene import make_demo_scene

    torch.set_num_threads(1)
    options, folder, chunk = args
    scene = make_demo_scene(**options, lazy=True)
    for i in chunk:
        img = (scene.image(i).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(img).save(folder / "images" / f"{i:05d}.png", compress_level=1)
    return len(chunk)


def generate(folder: Path, options: dict, workers: int) -> float:
    """The demo scene of ``options`` as a nerfstudio folder (skipped when complete); returns seconds spent."""
    from featurefield.data.demo_scene import make_demo_scene
    from featurefield.data.nerfstudio import write_nerfstudio

    if (folder / "transforms.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    scene = make_demo_scene(**options, lazy=True)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n = len(scene)
    chunks = [list(range(k, n, workers * 4)) for k in range(min(n, workers * 4))]
    with ProcessPoolExecutor(workers) as pool:
        done = sum(pool.map(_render_chunk, [(options, folder, c) for c in chunks]))
    assert done == n
    write_nerfstudio(scene, folder, images=False)  # last: its transforms.json marks the folder complete
    return time.perf_counter() - t0


def child(args) -> None:
    """Train in this process and print one JSON line of its figures."""
    import torch

    from featurefield.data import load_scene
    from featurefield.train import TrainConfig, Trainer, train

    if args.threads:
        torch.set_num_threads(args.threads)
    scene = load_scene(args.scene)
    if args.device == "cuda":
        torch.zeros(1, device="cuda")  # the CUDA context belongs to the baseline
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    prepared, data_seconds = {}, [0.0]
    prepare = Trainer.prepare

    def measured_prepare(self):  # the data's share, before the loop's transients
        before = _current_rss()
        prepare(self)
        prepared.update(prepare_peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                        data_rss_gb=_current_rss() - before)
        views = getattr(self.data, "views", None)  # versions before view sources have none
        for name in ("view", "pool") if views is not None else ():  # the host's time in the data path
            def timed(*a, _method=getattr(views, name), **k):
                t = time.perf_counter()
                out = _method(*a, **k)
                data_seconds[0] += time.perf_counter() - t
                return out

            setattr(views, name, timed)

    Trainer.prepare = measured_prepare
    options = dict(steps=args.steps, device=args.device, progress=False, cache_dir=Path(args.cache),
                   checkpoint_every=args.steps, log_every=max(1, args.steps // 10), final_eval_views=args.eval_views)
    residency = args.residency[0]  # a child runs one
    if residency != "none":
        from featurefield.data.view_source import DataConfig

        options["data"] = DataConfig(residency=residency)
    teachers = [] if args.teacher == "none" else [args.teacher]
    t0 = time.perf_counter()
    run = train(scene, args.out, field=args.field, teachers=teachers, config=TrainConfig(**options))
    wall = time.perf_counter() - t0
    summary = json.loads((run.path / "metrics.json").read_text())
    logged = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "it_per_s" in r and not r.get("final")]
    rate = None
    if len(logged) >= 3:  # the loop's rate between the second logged step and the last
        (s1, r1), (s2, r2) = (logged[1]["step"], logged[1]["it_per_s"]), (logged[-1]["step"], logged[-1]["it_per_s"])
        rate = (s2 - s1) / max(s2 / r2 - s1 / r1, 1e-9)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"views": len(scene), "train_views": len(scene.split["train"]), "peak_rss_gb": round(peak, 3),
                      "rss_growth_gb": round(peak - base_rss, 3), **{k: round(v, 3) for k, v in prepared.items()},
                      "peak_gpu_gb": summary.get("peak_gpu_memory_gb"),
                      "steps_per_s": rate, "data_ms_per_step": round(1e3 * data_seconds[0] / args.steps, 3) if
                      "data_rss_gb" in prepared and data_seconds[0] else None, "feature_s": summary.get("feature_seconds"), "wall_s": wall,
                      "residency": summary.get("data/residency"), "gpu": summary.get("gpu"),
                      "psnr": summary.get("test/psnr")}))


def _current_rss() -> float:
    """The resident set now, GB (Linux ``/proc``; the peak so far elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--supersample", type=int, default=2, help="the generator's anti-aliasing (1: faster, for CPU checks)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--field", default="splat")
    ap.add_argument("--teacher", default="dino:pretrained=random", help="a teacher spec, or none")
    ap.add_argument("--residency", nargs="+", default=["stream", "device"],
                    help="each of auto, device, host, stream; none: not passed (versions before --data.residency)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eval-views", type=int, default=4, help="test views in the final evaluation")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-many-views"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating the views")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the training (0: torch's default); 1 on a "
                    "busy shared CPU, where threads waiting on each other make a step 10x slower")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import shutil

    results = []
    for n in args.views:
        options = dict(seed=0, size=args.size, views=n, supersample=args.supersample)
        folder = args.work / f"demo-{n}-{args.size}-ss{args.supersample}"
        gen_s = generate(folder, options, args.workers)
        for residency in args.residency:
            run_dir, cache = args.work / f"run-{n}-{args.field}-{residency}", args.work / f"cache-{n}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)  # each run pays for its own features and image cache
            cmd = [sys.executable, __file__, "--child", "--scene", str(folder), "--out", str(run_dir), "--cache", str(cache),
                   "--steps", str(args.steps), "--field", args.field, "--teacher", args.teacher, "--residency", residency,
                   "--device", args.device, "--eval-views", str(args.eval_views), "--threads", str(args.threads)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            out = proc.stdout.read()
            _, status, _ = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"bench/many_views.py: the run of {n} views ({residency}) failed "
                         f"(exit {os.waitstatus_to_exitcode(status)})")
            result = {**json.loads(out.strip().splitlines()[-1]), "generate_s": round(gen_s, 1), "size": args.size,
                      "field": args.field, "teacher": args.teacher, "device": args.device, "steps": args.steps}
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| views | train views | residency | peak RSS GB | RSS growth GB | prepare peak GB | data RSS GB | peak GPU GB "
          "| steps/s | data ms/step | prepare s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        gpu = "-" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.2f}"
        rate = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:.2f}"
        print(f"| {r['views']} | {r['train_views']} | {r['residency'] or '-'} | {r['peak_rss_gb']:.2f} | "
              f"{r['rss_growth_gb']:.2f} | {r['prepare_peak_gb']:.2f} | {r['data_rss_gb']:.3f} | {gpu} | {rate} | "
              f"{'-' if r['data_ms_per_step'] is None else r['data_ms_per_step']} | {r['feature_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
