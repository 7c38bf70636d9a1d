"""Benchmark: fused Triton hash encoding vs the plain-PyTorch reference (CUDA).

Radiance-field configuration (16 levels x 2 features, 2^19 table, resolution 16..2048), 2^20 points,
forward + backward (table gradient), CUDA events, warm-up, medians. Also reports the feature-field
configuration (12 x 8, 2^19, 16..128), fp16 vs fp32 tables, and the fraction of HBM bandwidth the
kernels reach, counting the bytes they must move:

* forward: points (12 B) + output (4 L F B) + 8 gathered table rows per level (8 L F s B, s = table
  element size) per point;
* backward: points + grad output + 8 atomic read-modify-writes per level (2 x 8 L F 4 B) per point.

The backward alone is also timed both ways (one atomic add per point and corner, or runs of consecutive
points in one cell summed first) on uniformly random points and on points laid out as the NeRF's samples
(48 sorted samples per ray), with each one's relative error against the plain-PyTorch gradient.

Gathers move whole 32-byte sectors, so the achieved DRAM traffic is higher than these counts: the
fraction is a lower bound on what the memory system does.

Usage: ``python bench/hashgrid.py [--points 1048576] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json

import torch
from infra.cuda_timing import median_ms  # noqa: E402 (bench/ is on sys.path when run as a script)

from featurefield.fields.nerf.hashgrid import HashGrid, hash_encode_torch
from featurefield.fields.nerf.hashgrid_triton import hash_encode_triton

H100_BW = 3.35e12  # bytes/s, H100 SXM HBM3 spec


def _time(fn, warmup: int = 3, reps: int = 10) -> float:
    return median_ms(fn, warmup, reps)


def bench(name: str, levels: int, feats: int, log2: int, rmin: int, rmax: int, n: int, results: list) -> None:
    grid = HashGrid(levels, feats, log2, rmin, rmax).cuda()
    grid.table.data.uniform_(-1, 1)
    x = torch.rand(n, 3, device="cuda")
    g = torch.randn(n, levels * feats, device="cuda")
    L, F = levels, feats

    for dtype in ("float32", "float16"):
        s = 4 if dtype == "float32" else 2

        def fwd_t():
            return hash_encode_triton(x, grid.table, grid.resolutions, grid.dense, dtype)

        def fb_t():
            grid.table.grad = None
            hash_encode_triton(x, grid.table, grid.resolutions, grid.dense, dtype).backward(g)

        t_f, t_fb = _time(fwd_t), _time(fb_t)
        bytes_f = n * (12 + 4 * L * F + 8 * L * F * s)
        bytes_b = n * (12 + 4 * L * F + 2 * 8 * L * F * 4)
        results.append({"config": name, "impl": f"triton-{dtype}", "points": n, "fwd_s": t_f, "fwd_bwd_s": t_fb,
                        "fwd_points_per_s": n / t_f, "fwd_bwd_points_per_s": n / t_fb,
                        "fwd_bw_fraction": bytes_f / t_f / H100_BW,
                        "fwd_bwd_bw_fraction": (bytes_f + bytes_b) / t_fb / H100_BW})

    def fwd_p():
        return hash_encode_torch(x, grid.table, grid.resolutions, grid.dense)

    def fb_p():
        grid.table.grad = None
        hash_encode_torch(x, grid.table, grid.resolutions, grid.dense).backward(g)

    torch.cuda.reset_peak_memory_stats()
    t_f, t_fb = _time(fwd_p, 2, 5), _time(fb_p, 2, 5)
    peak = torch.cuda.max_memory_allocated() / 2**30
    results.append({"config": name, "impl": "torch-float32", "points": n, "fwd_s": t_f, "fwd_bwd_s": t_fb,
                    "fwd_points_per_s": n / t_f, "fwd_bwd_points_per_s": n / t_fb, "peak_gb": peak})

    # parity on the benchmark inputs
    ref = fwd_p()
    out = hash_encode_triton(x, grid.table, grid.resolutions, grid.dense)
    rel = float((out - ref).norm() / ref.norm())
    ga = torch.autograd.grad(hash_encode_torch(x, grid.table, grid.resolutions, grid.dense), grid.table, g)[0]
    gb = torch.autograd.grad(hash_encode_triton(x, grid.table, grid.resolutions, grid.dense), grid.table, g)[0]
    results.append({"config": name, "parity_rel_out": rel, "parity_rel_grad": float((ga - gb).norm() / ga.norm())})


def ray_points(n: int, samples: int = 48) -> torch.Tensor:
    """``[n, 3]`` points as the NeRF evaluates them: ``samples`` consecutive, sorted samples per random ray,
    concentrated about a surface (most of each ray's samples lie within a few percent of the box)."""
    rays = n // samples
    o = torch.rand(rays, 1, 3, device="cuda")
    d = torch.nn.functional.normalize(torch.randn(rays, 1, 3, device="cuda"), dim=-1)
    t = (0.3 + 0.03 * torch.randn(rays, samples, 1, device="cuda")).sort(1).values
    return (o + d * t).clamp(0, 1).reshape(-1, 3)


def bench_backward(name: str, levels: int, feats: int, rmax: int, n: int, results: list) -> None:
    """The backward alone, one atomic add per point vs runs of points in one cell summed first."""
    grid = HashGrid(levels, feats, 19, 16, rmax).cuda()
    grid.table.data.uniform_(-1, 1)
    g = torch.randn(n, levels * feats, device="cuda")
    for layout, x in (("random", torch.rand(n, 3, device="cuda")), ("rays", ray_points(n))):
        g = g[: x.shape[0]]
        ref = torch.autograd.grad(hash_encode_torch(x, grid.table, grid.resolutions, grid.dense), grid.table, g)[0]
        row = {"config": name, "layout": layout, "points": x.shape[0]}
        for aggregate in (False, True):
            out = hash_encode_triton(x, grid.table, grid.resolutions, grid.dense, "float32", aggregate)

            def bwd():
                torch.autograd.grad(out, grid.table, g, retain_graph=True)

            key = "runs_summed" if aggregate else "per_point"
            row[f"{key}_ms"] = _time(bwd)
            got = torch.autograd.grad(out, grid.table, g, retain_graph=True)[0]
            row[f"{key}_rel_err"] = float((got - ref).norm() / ref.norm())
        results.append(row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=2**20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results: list = []
    bench("radiance 16x2 2^19 16..2048", 16, 2, 19, 16, 2048, args.points, results)
    bench("feature 12x8 2^19 16..128", 12, 8, 19, 16, 128, args.points, results)
    bench_backward("radiance 16x2 2^19 16..2048", 16, 2, 2048, args.points, results)
    bench_backward("feature 12x8 2^19 16..128", 12, 8, 128, args.points, results)
    print(torch.cuda.get_device_name())
    for r in results:
        print(json.dumps({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}))
    by = {(r["config"], r.get("impl")): r for r in results}
    for cfg in ("radiance 16x2 2^19 16..2048", "feature 12x8 2^19 16..128"):
        p = by[(cfg, "torch-float32")]["fwd_bwd_s"]
        for dt in ("float32", "float16"):
            t = by[(cfg, f"triton-{dt}")]["fwd_bwd_s"]
            print(f"{cfg}: triton {dt} fwd+bwd speed-up over torch {p / t:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
