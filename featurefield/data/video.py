"""Frames for structure-from-motion from a video (or a folder of videos): ``featurefield process-images``.

A phone video holds far more frames than structure-from-motion needs, many of them blurred by the hand's
motion and many showing the same view as their neighbours. Two passes of ffmpeg (``imageio-ffmpeg``):

1. *Choose* on small grey frames (ffmpeg scales the luma to a long side of :data:`PREVIEW_SIDE` by area
   averaging, which also evens out compression blocks and noise): the frames are split into as many equal
   windows as frames are wanted (spread over the videos in proportion to their length), and each window's
   sharpest frame is its candidate, judged by the variance of the Laplacian (a blurred frame has weak
   second derivatives). A window whose candidate is still far blurrier than the typical one (under
   ``min_relative_sharpness`` of their median) is dropped: the camera moved fast all through it. A
   candidate that repeats the last kept view — the same picture up to a small global shift, i.e. no
   parallax (:func:`residual_motion`) — is dropped too, or replaces that view when it is sharper: it would
   cost feature extraction, matching and bundle adjustment and add no geometry.
2. *Write* only the kept frames, at full resolution, as JPEG.

Only small grey frames are held in memory, never a window of full-resolution ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurefield.errors import FeatureFieldError

#: containers ffmpeg reads that phones and cameras write
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts"}
#: longer side, in pixels, of the grey frames that sharpness and motion are judged on
PREVIEW_SIDE = 480


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


def image_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The shift ``(dy, dx)`` that best maps ``a`` onto ``b`` (``b[y + dy, x + dx] ~ a[y, x]``), to a fraction
    of a pixel: phase correlation of the two ``[H, W]`` images (Hann-windowed, so the borders do not pull),
    its peak refined by a parabola through the neighbours."""
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1])).astype(np.float32)
    fa = np.fft.rfft2((a - a.mean()) * window)
    fb = np.fft.rfft2((b - b.mean()) * window)
    cross = np.conj(fa) * fb
    peak = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=a.shape)
    iy, ix = np.unravel_index(int(np.argmax(peak)), peak.shape)
    shift = []
    for axis, (i, n) in enumerate(zip((iy, ix), peak.shape)):
        before, here, after = (peak[(i + k) % n, ix] if axis == 0 else peak[iy, (i + k) % n] for k in (-1, 0, 1))
        curvature = before - 2 * here + after
        fraction = float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0
        shift.append((i - n if i > n // 2 else i) + fraction)
    return shift[0], shift[1]


def _aligned(a: np.ndarray, b: np.ndarray, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``a`` that ``b`` also sees after the shift ``(dy, dx)``, and ``b`` there (bilinear)."""
    (iy, fy), (ix, fx) = ((int(np.floor(d)), d - np.floor(d)) for d in (dy, dx))
    height, width = a.shape
    y0, y1 = max(0, -iy), min(height, height - 1 - iy)
    x0, x1 = max(0, -ix), min(width, width - 1 - ix)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return a[:0, :0], b[:0, :0]
    rows = slice(y0 + iy, y1 + iy)
    top = (1 - fx) * b[rows, x0 + ix:x1 + ix] + fx * b[rows, x0 + ix + 1:x1 + ix + 1]
    rows = slice(y0 + iy + 1, y1 + iy + 1)
    bottom = (1 - fx) * b[rows, x0 + ix:x1 + ix] + fx * b[rows, x0 + ix + 1:x1 + ix + 1]
    return a[y0:y1, x0:x1], (1 - fy) * top + fy * bottom


def residual_motion(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """How far view ``b`` is from view ``a``, two ``[H, W]`` grey images of one size.

    Returns:
        ``(shift, residual)``: the global image shift between them (:func:`image_shift`) as a fraction of the
        longer side, and what is left after it: the mean absolute difference over the overlap divided by
        ``a``'s mean absolute gradient, about the misalignment in pixels that remains, averaged over the
        picture. A camera that turned a little or shook leaves a residual near 0; one that moved leaves
        parallax, new content or a zoom: a residual of a pixel or more (where a third of the picture moved
        off the global shift by a few pixels, about 0.5).
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    dy, dx = image_shift(a, b)
    a_part, b_part = _aligned(a, b, dy, dx)
    if a_part.size == 0:
        return 1.0, float("inf")
    gradient = 0.5 * (np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())
    residual = float(np.abs(a_part - b_part).mean() / max(float(gradient), 1e-3))
    return float(np.hypot(dy, dx) / max(a.shape)), residual


@dataclass
class VideoFrames:
    """What :func:`sample_video_frames` kept.

    Attributes:
        paths: the frames written, in video order.
        decoded: frames read from the videos.
        dropped_blurry: windows dropped because even their sharpest frame was blurred.
        dropped_still: windows dropped because their frame repeated the last kept view (no parallax).
        sharpness: per kept frame, :func:`sharpness` of its grey preview.
    """

    paths: list[Path] = field(default_factory=list)
    decoded: int = 0
    dropped_blurry: int = 0
    dropped_still: int = 0
    sharpness: list[float] = field(default_factory=list)


@dataclass
class _Candidate:
    video: Path
    index: int
    sharpness: float
    preview: np.ndarray  # [h, w] uint8 grey


def _video_meta(video: Path) -> tuple[int, tuple[int, int]]:
    """``(estimated frame count, (width, height))`` of a video, from its header."""
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
    return max(1, int(round(fps * duration))), tuple(meta["size"])


def _ffmpeg_frames(video: Path, filters: str, pix_fmt: str, bits_per_pixel: int):
    """``(width, height, frames)``: ffmpeg's raw frames of ``video`` after the ``-vf`` ``filters``, one per
    decoded frame (``-fps_mode passthrough``: no frame repeated or dropped, so indices agree between passes)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video), pix_fmt=pix_fmt, bits_per_pixel=bits_per_pixel,
                                        output_params=["-vf", filters, "-fps_mode", "passthrough"])
    log = logging.getLogger("imageio_ffmpeg")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns that the frames are not the source's size: we asked for that
    try:
        width, height = next(reader)["size"]
    except (RuntimeError, OSError, StopIteration) as err:
        reader.close()
        raise FeatureFieldError(f"{video}: ffmpeg cannot read this video ({' '.join(str(err).split())[:160]})") from err
    finally:
        log.setLevel(level)
    return width, height, reader


def _candidates(video: Path, count: int, size: tuple[int, int], windows: int, notify: Callable[[int], None]) -> list[_Candidate]:
    """The sharpest frame of each of ``windows`` equal stretches of ``video`` (``count`` frames expected)."""
    scale = min(1.0, PREVIEW_SIDE / max(size))
    preview = (max(2, round(size[0] * scale)), max(2, round(size[1] * scale)))
    width, height, reader = _ffmpeg_frames(video, f"scale={preview[0]}:{preview[1]}:flags=area", "gray", 8)
    # window k holds frames [edges[k], edges[k + 1]); the last one also takes frames past the header's count
    edges = np.linspace(0, count, min(windows, count) + 1).round().astype(int)
    chosen: list[_Candidate] = []
    window, best = 0, None
    try:
        for index, raw in enumerate(reader):
            while window + 1 < len(edges) - 1 and index >= edges[window + 1]:
                if best is not None:
                    chosen.append(best)
                window, best = window + 1, None
            gray = np.frombuffer(raw, np.uint8).reshape(height, width)
            score = sharpness(gray)
            if best is None or score > best.sharpness:
                best = _Candidate(video, index, score, gray.copy())
            notify(1)
    except RuntimeError as err:
        raise FeatureFieldError(f"{video}: ffmpeg failed while decoding ({' '.join(str(err).split())[:160]})") from err
    finally:
        reader.close()
    if best is not None:
        chosen.append(best)
    return chosen


def _drop_repeated_views(candidates: list[_Candidate], min_motion: float, max_shift: float) -> list[_Candidate]:
    """``candidates`` (one video, in order) without those that repeat the last kept view: a global shift
    under ``max_shift`` of the frame and less than ``min_motion`` preview pixels of residual motion. Of a
    repeated view the sharper frame stays."""
    kept: list[_Candidate] = []
    for candidate in candidates:
        if kept:
            shift, residual = residual_motion(kept[-1].preview, candidate.preview)
            if shift < max_shift and residual < min_motion:
                if candidate.sharpness > kept[-1].sharpness:
                    kept[-1] = candidate
                continue
        kept.append(candidate)
    return kept


def _any_frame_of(indices: list[int]) -> str:
    """An ffmpeg ``select`` expression true on the frames ``indices``, a balanced sum: ffmpeg's parser
    refuses a chain of a hundred-odd terms (it nests too deep) but not a tree of thousands."""
    if len(indices) == 1:
        return f"eq(n\\,{indices[0]})"
    middle = len(indices) // 2
    return f"({_any_frame_of(indices[:middle])}+{_any_frame_of(indices[middle:])})"


def _write_frames(video: Path, indices: list[int], out_dir: Path, quality: int, notify: Callable[[Path], None]) -> None:
    """Decode ``video`` again and write its frames ``indices`` (sorted) at full size as ``<stem>_<index>.jpg``."""
    from PIL import Image

    wanted = _any_frame_of(indices)
    width, height, reader = _ffmpeg_frames(video, f"select={wanted}", "rgb24", 24)
    written = 0
    try:
        for raw, index in zip(reader, indices):
            path = out_dir / f"{video.stem}_{index:06d}.jpg"
            Image.fromarray(np.frombuffer(raw, np.uint8).reshape(height, width, 3)).save(path, quality=quality)
            written += 1
            notify(path)
    except RuntimeError as err:
        raise FeatureFieldError(f"{video}: ffmpeg failed while decoding ({' '.join(str(err).split())[:160]})") from err
    finally:
        reader.close()
    if written != len(indices):
        raise FeatureFieldError(f"{video}: ffmpeg gave {written} of the {len(indices)} frames chosen on the first pass; "
                                "re-encode the video (e.g. ffmpeg -i IN OUT.mp4)")


def sample_video_frames(videos: list[Path], out_dir: Path, target: int = 150, min_relative_sharpness: float = 0.25,
                        min_motion: float = 0.5, max_still_shift: float = 0.05, quality: int = 95,
                        on_stage: Callable[[str, int, int], None] | None = None) -> VideoFrames:
    """Write up to ``target`` sharp frames of distinct views of ``videos`` to ``out_dir`` as
    ``<video stem>_<frame>.jpg``, at the videos' full size.

    Args:
        videos: video files (see :func:`list_videos`).
        out_dir: folder for the frames (created).
        target: windows in all, one candidate frame each; each video gets a share in proportion to its frame
            count (at least 2).
        min_relative_sharpness: drop a window whose sharpest frame is below this fraction of the median
            sharpness of the candidates.
        min_motion: a candidate whose residual motion from the last kept frame (:func:`residual_motion`, in
            pixels of the :data:`PREVIEW_SIDE` preview) is below this, and whose global shift is below
            ``max_still_shift``, repeats that view; 0 keeps every sharp candidate.
        max_still_shift: see ``min_motion`` (a fraction of the frame's longer side).
        quality: JPEG quality.
        on_stage: progress callback ``(stage, done, total)``; stages ``"decode"`` (frames read on the first
            pass) and ``"write"`` (frames written).

    Raises:
        FeatureFieldError: an unreadable video, or ``target`` < 2.
    """
    if target < 2:
        raise FeatureFieldError(f"--num-frames must be at least 2 for structure-from-motion, got {target}")
    notify = on_stage or (lambda stage, done, total: None)
    metas = [_video_meta(v) for v in videos]
    total = sum(m[0] for m in metas)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = VideoFrames()

    def decoded(n: int) -> None:
        result.decoded += n
        if result.decoded % 30 == 0:
            notify("decode", result.decoded, max(total, result.decoded))

    notify("decode", 0, total)
    per_video = [_candidates(video, count, size, max(2, round(target * count / total)), decoded)
                 for video, (count, size) in zip(videos, metas)]
    notify("decode", result.decoded, result.decoded)
    median = float(np.median([c.sharpness for cs in per_video for c in cs])) if result.decoded else 0.0
    kept_per_video = []
    for candidates in per_video:
        sharp = [c for c in candidates if c.sharpness >= min_relative_sharpness * median]
        result.dropped_blurry += len(candidates) - len(sharp)
        distinct = _drop_repeated_views(sharp, min_motion, max_still_shift) if min_motion > 0 else sharp
        result.dropped_still += len(sharp) - len(distinct)
        kept_per_video.append(distinct)

    to_write = sum(len(k) for k in kept_per_video)
    notify("write", 0, to_write)
    for video, kept in zip(videos, kept_per_video):
        if not kept:
            continue

        def written(path: Path) -> None:
            result.paths.append(path)
            notify("write", len(result.paths), to_write)

        _write_frames(video, [c.index for c in kept], out_dir, quality, written)
        result.sharpness += [c.sharpness for c in kept]
    return result
