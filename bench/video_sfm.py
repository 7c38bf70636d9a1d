"""A phone video to a COLMAP scene: wall and CPU time per stage, the share of kept frames registered, and
how right the cameras are.

The video is made from a real capture (the beer photos, a hand-held sequence, 720 x 1280): each photo is
enlarged to portrait 1080p and held for its share of a 60-second, 30 frames/s clip (1,800 frames), with a
few pixels of hand shake on every frame and a motion blur of up to 31 pixels on the frames where the
camera passes from one photo to the next (about a third of them), encoded with H.264 (yuv420p) as a phone
does. A video can only be made from photos this way (a continuous path between the capture's poses would
need new views), so about 25 frames in a row show one view: a fair, hard test of frame choice (blur, and
frames with no parallax). Then ``featurefield process-images VIDEO OUT``
(:func:`featurefield.data.sfm.run_video_sfm`) runs on it; ``--reference`` also runs the previous
pipeline's settings (COLMAP's defaults at 1600 px, every sharp window kept) in the same process.

Camera check: the registered frames' centres against the capture's own COLMAP model, similarity-aligned.
That model is itself folded in three places (consecutive cameras turned by ~170 degrees where the photos
turn by ~10: repeated floor tiles and a round can), so it is only trusted between its folds: the error is
taken per stretch between them (as a share of the stretch's extent), and folds in our model are counted
the same way.

    python bench/video_sfm.py ../shared/datasets/beer /tmp/beer_video [--frames 150] [--reference]

Target (issue #21): <= 3 min on the CPU, >= 90 % of the kept frames registered.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def motion_blur(frame: np.ndarray, length: int) -> np.ndarray:
    """``frame`` ``[H, W, 3]`` uint8 averaged over ``length`` pixels along x (a horizontal camera swing); same size."""
    padded = np.pad(frame.astype(np.float32), ((0, 0), (length // 2, length - 1 - length // 2), (0, 0)), mode="edge")
    c = np.pad(np.cumsum(padded, axis=1), ((0, 0), (1, 0), (0, 0)))
    return ((c[:, length:] - c[:, :-length]) / length).round().astype(np.uint8)


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
            frame = motion_blur(frame, blur)
        assert frame.shape == (height, width, 3), frame.shape  # a wrong size would shift every later frame's bytes
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _folds(rotations: np.ndarray) -> list[int]:
    """Indices k where camera k turned by more than 90 degrees from camera k - 1 (``rotations`` ``[N, 3, 3]``)."""
    cos = (np.einsum("nij,nij->n", rotations[1:], rotations[:-1]) - 1) / 2
    return [k + 1 for k in np.nonzero(cos < 0)[0]]


def camera_check(capture: Path, scene: Path, photos: list[Path], frames_per_photo: float) -> str:
    """One line: photos covered, folds, centre error per fold-free stretch of the capture's model and overall."""
    import pycolmap
    import torch

    from featurefield.data.sfm import align_similarity

    def poses(model, photo_of):
        out = {}
        for im in model.images.values():
            if im.has_pose:
                out.setdefault(photo_of(im.name), (im.projection_center(), im.cam_from_world().rotation.matrix()))
        return out

    reference = poses(pycolmap.Reconstruction(str(capture / "sparse" / "0")), lambda n: Path(n).stem)
    names = [p.stem for p in photos]
    ours = poses(pycolmap.Reconstruction(str(scene / "sparse" / "0")),
                 lambda n: names[min(round(int(Path(n).stem.split("_")[-1]) / frames_per_photo), len(names) - 1)])
    order = [n for n in names if n in reference]
    ref_folds = _folds(np.array([reference[n][1] for n in order]))
    stretches = [order[a:b] for a, b in zip([0] + ref_folds, ref_folds + [len(order)])]
    covered = [n for n in order if n in ours]
    our_folds = _folds(np.array([ours[n][1] for n in covered])) if len(covered) > 1 else []

    def errors(part: list[str]) -> torch.Tensor:
        src = torch.tensor(np.array([ours[n][0] for n in part]))
        dst = torch.tensor(np.array([reference[n][0] for n in part]))
        residuals = align_similarity(src, dst)[3]
        return residuals / (dst - dst.mean(0)).norm(dim=-1).max()

    per_stretch = torch.cat([errors([n for n in s if n in ours]) for s in stretches if sum(n in ours for n in s) >= 3])
    return (f"views covered {len(covered)} of {len(order)}; folds (a >90 degree turn between consecutive views) "
            f"{len(our_folds)} (the capture's own model: {len(ref_folds)}); camera centres within the capture model's "
            f"{len(stretches)} fold-free stretches: median error {float(per_stretch.median()):.2%}, 90th percentile "
            f"{float(per_stretch.quantile(0.9)):.1%} of the stretch's extent (overall, across its folds: "
            f"{float(errors(covered).median()):.0%})")


def run(label: str, video: Path, out: Path, capture: Path, photos: list[Path], **options) -> None:
    """``run_video_sfm`` on ``video``, printing wall and CPU seconds per stage, frames, registration, cameras."""
    import shutil

    from featurefield.data.sfm import run_video_sfm

    shutil.rmtree(out, ignore_errors=True)
    marks: list[tuple[str, float, float]] = []  # (stage, wall, cpu) at each stage's first report

    def on_stage(stage: str, done: int, total: int) -> None:
        if stage not in {m[0] for m in marks}:
            marks.append((stage, time.perf_counter(), _cpu_seconds()))
            print(f"  {marks[-1][1] - marks[0][1]:7.1f} s: {stage} starts (load average {os.getloadavg()[0]:.1f})", flush=True)

    print(f"{label}: load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    result = run_video_sfm([video], out, on_stage=on_stage, **options)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    frames = result["frames"]
    print(f"{label}: {wall:.0f} s wall, {cpu:.0f} s CPU; {frames.decoded} frames decoded, {len(frames.paths)} kept "
          f"({frames.dropped_blurry} windows dropped as blurred, {frames.dropped_still} as repeating the last view); "
          f"registered {result['registered']} of {result['total']} kept ({100 * result['registered'] / result['total']:.0f} %), "
          f"{result['points']} points")
    ends = marks[1:] + [("end", start + wall, cpu_start + cpu)]
    groups = {"decode": "frames (choose, write)", "write": "frames (choose, write)"}
    per: dict[str, list[float]] = {}
    for (stage, w0, c0), (_, w1, c1) in zip(marks, ends):
        totals = per.setdefault(groups.get(stage, stage), [0.0, 0.0])
        totals[0] += w1 - w0
        totals[1] += c1 - c0
    for stage, (w, c) in per.items():
        print(f"  {stage:24s} {w:6.1f} s wall {c:6.1f} s CPU")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    # sharp frames chosen? the blur ramp peaks at the middle of each passage between photos
    frames_per_photo = frames.decoded / (len(photos) - 1)
    phase = np.array([int(p.stem.split("_")[-1]) for p in frames.paths]) / frames_per_photo % 1.0
    print(f"  kept frames within the blurred middle third of a passage: {int(((phase > 0.33) & (phase < 0.67)).sum())}"
          f" of {len(phase)}")
    print(f"  {camera_check(capture, out, photos, frames_per_photo)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", type=Path, help="the beer capture (images/ and sparse/0)")
    parser.add_argument("work", type=Path, help="folder for the video and the scenes")
    parser.add_argument("--frames", type=int, default=150, help="frames to keep at most (process-images --num-frames)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the clip")
    parser.add_argument("--min-motion", type=float, default=0.5, help="process-images --min-motion (0 keeps repeated views)")
    parser.add_argument("--reference", action="store_true", help="also run the previous pipeline's settings")
    args = parser.parse_args(argv)
    photos = sorted((args.capture / "images").glob("*.jpg"))
    if len(photos) < 2:
        print(f"video_sfm.py: error: no photos in {args.capture / 'images'}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    # v2: before it, frames with an even blur length came out one column too wide and shifted all later frames
    video = args.work / f"phone_{int(args.seconds)}s_1080p30_v2.mp4"
    if not video.exists():
        start = time.perf_counter()
        make_video(photos, video, seconds=args.seconds)
        print(f"made {video} ({video.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")

    import pycolmap

    from featurefield.data.sfm import SfmSettings

    pycolmap.logging.minloglevel = 2
    run("process-images", video, args.work / "scene", args.capture, photos, num_frames=args.frames, min_motion=args.min_motion)
    if args.reference:
        run("previous settings (COLMAP defaults at 1600 px, every sharp window kept)", video, args.work / "scene_previous",
            args.capture, photos, num_frames=args.frames, min_motion=0.0, settings=SfmSettings(), max_image_size=1600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
