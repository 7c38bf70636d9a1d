"""Benchmark: the CPU hash encodings, forward + backward (table gradient), on this machine's cores.

Compares :func:`hash_encode_scatter` (the CPU path: points-last layout, hand-written table gradient)
with the autograd reference :func:`hash_encode_torch`, in the CPU preset's radiance-grid shape
(16 levels x 2 features, 2^15 table, resolution 16 growing x1.38 per level), and checks they agree.

Usage: ``python bench/hashgrid_cpu.py [--points 32768] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featurefield.fields.nerf.hashgrid import hash_encode_scatter, hash_encode_torch


def seconds(fn, x, table, res, dense, repeats: int) -> float:
    """Median wall seconds of one forward + backward, after one warm-up call."""
    times = []
    for k in range(repeats + 1):
        table.grad = None
        t = time.perf_counter()
        fn(x, table, res, dense).sum().backward()
        if k:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    L, T, F = 16, 2**15, 2
    res = torch.tensor([int(16 * 1.38**level) for level in range(L)])
    dense = (res + 1) ** 3 <= T
    table = torch.randn(L, T, F, generator=torch.Generator().manual_seed(0)).requires_grad_()
    x = torch.rand(args.points, 3, generator=torch.Generator().manual_seed(1))

    ref = hash_encode_torch(x, table, res, dense)
    (g_ref,) = torch.autograd.grad(ref.sum(), table)
    out = hash_encode_scatter(x, table, res, dense)
    (g_out,) = torch.autograd.grad(out.sum(), table)
    err = max(float((out - ref).detach().abs().max()), float((g_out - g_ref).abs().max()))

    t_ref = seconds(hash_encode_torch, x, table, res, dense, args.repeats)
    t_ours = seconds(hash_encode_scatter, x, table, res, dense, args.repeats)
    print(f"{args.points} points, {torch.get_num_threads()} threads, forward + backward (max abs difference {err:.1e})")
    print(f"  reference (autograd gathers)   {t_ref * 1e3:8.1f} ms")
    print(f"  hash_encode_scatter (CPU path) {t_ours * 1e3:8.1f} ms   {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
