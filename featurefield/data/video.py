"""Frames for structure-from-motion from a video (or a folder of videos): ``featurefield process-images``.

A phone video holds far more frames than structure-from-motion needs, many of them blurred by the hand's
motion. The frames are split into as many equal windows as frames are wanted (spread over the videos in
proportion to their length), and each window keeps its sharpest frame, judged by the variance of the
Laplacian of its grey levels (a blurred frame has weak second derivatives). A window whose sharpest frame
is still far blurrier than the typical kept frame (under ``min_relative_sharpness`` of their median) is
dropped: the camera moved fast all through it. Decoding is ffmpeg's (``imageio-ffmpeg``), in one pass:
only the current window's best frame is held in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurefield.errors import FeatureFieldError

#: containers ffmpeg reads that phones and cameras write
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts"}


def is_video(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in VIDEO_SUFFIXES


def list_videos(path: Path) -> list[Path]:
    """The videos ``path`` names: itself when it is one, else those directly inside the folder (sorted);
    empty when there are none."""
    path = Path(path)
    if is_video(path):
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if is_video(p))
    return []


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of ``gray`` ``[H, W]`` (any numeric type): higher is sharper."""
    g = np.asarray(gray, dtype=np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def _grey_preview(frame: np.ndarray, side: int = 640) -> np.ndarray:
    """The green channel of an ``[H, W, 3]`` frame, every k-th pixel so that its longer side is about ``side``
    (the sharpness of a 1080p frame costs ~3 ms this way instead of ~40 ms)."""
    step = max(1, max(frame.shape[:2]) // side)
    return frame[::step, ::step, 1]


@dataclass
class VideoFrames:
    """What :func:`sample_video_frames` kept.

    Attributes:
        paths: the frames written, in video order.
        decoded: frames read from the videos.
        dropped_blurry: windows dropped because even their sharpest frame was blurred.
        sharpness: per kept frame, :func:`sharpness` of its preview.
    """

    paths: list[Path] = field(default_factory=list)
    decoded: int = 0
    dropped_blurry: int = 0
    sharpness: list[float] = field(default_factory=list)


def _video_meta(video: Path) -> tuple[int, float, tuple[int, int]]:
    """``(estimated frame count, fps, (width, height))`` of a video, from its header."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as err:
        raise FeatureFieldError(f"{video}: ffmpeg cannot read this video ({' '.join(str(err).split())[:160]})") from err
    finally:
        reader.close()
    fps, duration = float(meta.get("fps") or 0), float(meta.get("duration") or 0)
    if fps <= 0 or duration <= 0:
        raise FeatureFieldError(f"{video}: the video reports no frame rate or duration; re-encode it (e.g. ffmpeg -i IN OUT.mp4)")
    return max(1, int(round(fps * duration))), fps, tuple(meta["size"])


def sample_video_frames(videos: list[Path], out_dir: Path, target: int = 150, min_relative_sharpness: float = 0.25,
                        quality: int = 95, on_stage: Callable[[str, int, int], None] | None = None) -> VideoFrames:
    """Write about ``target`` sharp frames of ``videos`` to ``out_dir`` as ``<video stem>_<frame>.jpg``.

    Args:
        videos: video files (see :func:`list_videos`).
        out_dir: folder for the frames (created).
        target: frames wanted in all; each video gets a share in proportion to its frame count (at least 2).
        min_relative_sharpness: drop a window whose sharpest frame is below this fraction of the median
            sharpness of the chosen frames.
        quality: JPEG quality.
        on_stage: progress callback ``(stage, done, total)``; stages ``"decode"`` (frames read) and ``"write"``.

    Raises:
        FeatureFieldError: an unreadable video, or ``target`` < 2.
    """
    from PIL import Image

    if target < 2:
        raise FeatureFieldError(f"--num-frames must be at least 2 for structure-from-motion, got {target}")
    import imageio_ffmpeg

    notify = on_stage or (lambda stage, done, total: None)
    metas = [_video_meta(v) for v in videos]
    total = sum(m[0] for m in metas)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = VideoFrames()
    chosen: list[tuple[Path, int, float, np.ndarray]] = []  # (video, frame index, sharpness, frame)
    notify("decode", 0, total)
    for video, (count, _, _) in zip(videos, metas):
        share = max(2, round(target * count / total))
        # window k holds frames [edges[k], edges[k + 1]); the sharpest of each is kept
        edges = np.linspace(0, count, min(share, count) + 1).round().astype(int)
        window, best = 0, None
        reader = imageio_ffmpeg.read_frames(str(video), pix_fmt="rgb24")
        width, height = next(reader)["size"]
        try:
            for index, raw in enumerate(reader):
                while window + 1 < len(edges) - 1 and index >= edges[window + 1]:
                    if best is not None:
                        chosen.append(best)
                    window, best = window + 1, None
                score = sharpness(_grey_preview(np.frombuffer(raw, np.uint8).reshape(height, width, 3)))
                if best is None or score > best[2]:
                    best = (video, index, score, np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy())
                result.decoded += 1
                if result.decoded % 30 == 0:
                    notify("decode", result.decoded, max(total, result.decoded))
        except RuntimeError as err:
            raise FeatureFieldError(f"{video}: ffmpeg failed while decoding ({' '.join(str(err).split())[:160]})") from err
        finally:
            reader.close()
        if best is not None:
            chosen.append(best)
    notify("decode", result.decoded, result.decoded)
    median = float(np.median([c[2] for c in chosen])) if chosen else 0.0
    kept = [c for c in chosen if c[2] >= min_relative_sharpness * median]
    result.dropped_blurry = len(chosen) - len(kept)
    for k, (video, index, score, frame) in enumerate(kept):
        path = out_dir / f"{video.stem}_{index:06d}.jpg"
        Image.fromarray(frame).save(path, quality=quality)
        result.paths.append(path)
        result.sharpness.append(score)
        notify("write", k + 1, len(kept))
    return result
