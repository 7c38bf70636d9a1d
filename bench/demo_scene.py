"""Time the generation of the built-in demo scene (the default must take well under 30 s on 2 CPU cores).

Usage: python bench/demo_scene.py [--size 128] [--views 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featurefield.data.demo_scene import make_demo_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    wall, cpu = [], []
    for seed in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scene = make_demo_scene(seed=seed, size=args.size, views=args.views)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    pixels = args.size * args.size * args.views
    print(f"demo scene {args.size}x{args.size}, {args.views} views, {len(scene.points.xyz)} points, "
          f"torch threads {torch.get_num_threads()}")
    print(f"generation: median {statistics.median(wall):.2f} s wall, {statistics.median(cpu):.2f} s CPU "
          f"({pixels / statistics.median(wall) / 1e6:.2f} Mpixel/s); runs: " + ", ".join(f"{w:.2f}" for w in wall))


if __name__ == "__main__":
    main()
