"""A phone video to a COLMAP scene: wall time per stage and the share of kept frames registered.

The video is made from a real capture (the beer photos, a hand-held sequence, 720 x 1280): each photo is
enlarged to portrait 1080p and held for its share of a 60-second, 30 frames/s clip (1,800 frames), with a
few pixels of hand shake on every frame and a motion blur of up to 31 pixels on the frames where the
camera passes from one photo to the next (about a third of them), encoded with H.264 (yuv420p) as a phone
does. Then ``featurefield process-images VIDEO OUT`` (:func:`featurefield.data.sfm.run_video_sfm`) runs
on it, and the registered cameras are compared with the capture's own COLMAP model (similarity-aligned
camera centres).

    python bench/video_sfm.py ../shared/datasets/beer /tmp/beer_video [--frames 150] [--seconds 60]

Target (issue #21): <= 3 min on the CPU, >= 90 % of the kept frames registered.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def make_video(photos: list[Path], path: Path, seconds: float = 60.0, fps: int = 30, size=(1080, 1920), seed: int = 0) -> Path:
    """Write the clip described above to ``path`` (``size`` = (width, height)); returns ``path``."""
    import imageio_ffmpeg
    from PIL import Image

    rng = np.random.default_rng(seed)
    frames = int(seconds * fps)
    width, height = size
    pad = 8  # room for the shake
    big = [np.asarray(Image.open(p).convert("RGB").resize((width + 2 * pad, height + 2 * pad), Image.BICUBIC)) for p in photos]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=7, macro_block_size=8, ffmpeg_log_level="error")
    writer.send(None)
    shake = np.cumsum(rng.normal(0, 0.8, size=(frames, 2)), axis=0)
    shake = np.clip(shake - np.linspace(0, 1, frames)[:, None] * shake[-1], -pad, pad).round().astype(int)
    for f in range(frames):
        t = f / frames * (len(big) - 1)  # position along the capture
        k, frac = int(t), t - int(t)
        image = big[min(k + (frac >= 0.5), len(big) - 1)]
        dx, dy = shake[f]
        frame = image[pad + dy: pad + dy + height, pad + dx: pad + dx + width]
        blur = int(31 * max(0.0, 1 - abs(frac - 0.5) / 0.17))  # passing between photos: moving fast
        if blur >= 3:
            c = np.cumsum(np.pad(frame.astype(np.float32), ((0, 0), (blur // 2 + 1, blur // 2), (0, 0)), mode="edge"), axis=1)
            frame = ((c[:, blur:] - c[:, :-blur]) / blur).astype(np.uint8)
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", type=Path, help="the beer capture (images/ and sparse/0)")
    parser.add_argument("work", type=Path, help="folder for the video and the scene")
    parser.add_argument("--frames", type=int, default=150, help="frames to keep (process-images --num-frames)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the clip")
    parser.add_argument("--max-image-size", type=int, default=1600, help="longest side SIFT works on")
    args = parser.parse_args(argv)
    photos = sorted((args.capture / "images").glob("*.jpg"))
    if len(photos) < 2:
        print(f"video_sfm.py: error: no photos in {args.capture / 'images'}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    video = args.work / f"phone_{int(args.seconds)}s_1080p30.mp4"
    if not video.exists():
        start = time.perf_counter()
        make_video(photos, video, seconds=args.seconds)
        print(f"made {video} ({video.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")

    import os
    import shutil

    import pycolmap
    import torch

    from featurefield.data import load_scene
    from featurefield.data.sfm import align_similarity, run_video_sfm

    pycolmap.logging.minloglevel = 2
    out = args.work / "scene"
    shutil.rmtree(out, ignore_errors=True)
    marks: dict[str, list[float]] = {}

    def on_stage(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage not in marks:
            print(f"  {now - start:7.1f} s: {stage} starts (load average {os.getloadavg()[0]:.1f})", flush=True)
        marks.setdefault(stage, [now, now])[1] = now

    start = time.perf_counter()
    result = run_video_sfm([video], out, num_frames=args.frames, max_image_size=args.max_image_size, on_stage=on_stage)
    wall = time.perf_counter() - start
    frames = result["frames"]
    print(f"video to COLMAP scene: {wall:.0f} s wall; {frames.decoded} frames decoded, {len(frames.paths)} kept "
          f"({frames.dropped_blurry} stretches dropped as blurred); registered {result['registered']} of "
          f"{result['total']} ({100 * result['registered'] / result['total']:.0f} %), {result['points']} points")
    for stage, (first, last) in marks.items():
        print(f"  {stage:8s} {last - first:6.1f} s")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    # sharp frames chosen? the blur ramp peaks at the middle of each passage between photos
    fps_frames = frames.decoded / (len(photos) - 1)
    phase = np.array([int(p.stem.split("_")[-1]) for p in frames.paths]) / fps_frames % 1.0
    print(f"  kept frames within the blurred middle third of a passage: {int(((phase > 0.33) & (phase < 0.67)).sum())}"
          f" of {len(phase)}")
    # registered cameras against the capture's own model: each kept frame shows photo round(t)
    reference = load_scene(args.capture, format="colmap")
    scene = load_scene(out, format="colmap")
    ref_centres = {Path(n).stem: c for n, c in zip(reference.metadata["image_names"], reference.cameras.centers)}
    src, dst = [], []
    for name, centre in zip(scene.metadata["image_names"], scene.cameras.centers):
        t = int(Path(name).stem.split("_")[-1]) / fps_frames
        photo = photos[min(int(round(t)), len(photos) - 1)].stem
        if photo in ref_centres:
            src.append(centre)
            dst.append(ref_centres[photo])
    if len(src) >= 3:
        s, _, _, residuals = align_similarity(torch.stack(src).double(), torch.stack(dst).double())
        extent = (torch.stack(dst) - torch.stack(dst).mean(0)).norm(dim=-1).max()
        print(f"  camera centres against the capture's COLMAP model: median error {float(residuals.median() / extent):.2%}"
              f" of the capture's extent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
