"""process-images on videos: frames sampled evenly, the sharpest of each stretch kept, blurred stretches and
repeated views dropped."""

from __future__ import annotations

import numpy as np
import pytest

from featurefield.cli import main
from featurefield.data.video import image_shift, list_videos, residual_motion, sample_video_frames, sharpness
from featurefield.errors import FeatureFieldError


def _blur(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` averaged over ``width`` pixels along x; same size."""
    padded = np.pad(image.astype(np.float32), ((0, 0), (width // 2, width - 1 - width // 2), (0, 0)), mode="edge")
    c = np.pad(np.cumsum(padded, axis=1), ((0, 0), (1, 0), (0, 0)))
    return ((c[:, width:] - c[:, :-width]) / width).astype(np.uint8)


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """``[height, width, 3]`` uint8 noise, smoothed a little, like a photo's texture."""
    rng = np.random.default_rng(seed)
    texture = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    return _blur(_blur(texture, 3).transpose(1, 0, 2), 3).transpose(1, 0, 2)


def _view(wall: np.ndarray, floor: np.ndarray, camera: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """A 96 x 128 view of a textured wall (top half) and the floor in front of it (bottom half): the camera
    steps right by ``camera`` (the far wall shifts 1 px a step, the near floor 5 px: parallax); ``dy``,
    ``dx``: shake, which moves both alike."""
    frame = np.concatenate([wall[:48, camera:camera + 128], floor[:48, 5 * camera:5 * camera + 128]])
    return np.pad(frame, ((8, 8), (8, 8), (0, 0)), mode="reflect")[8 + dy:104 + dy, 8 + dx:136 + dx]


def _write_video(path, frames, fps=30):
    import imageio_ffmpeg

    H, W = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=10, macro_block_size=8, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


@pytest.fixture(scope="module")
def shaky_video(tmp_path_factory):
    """60 frames (2 s), 6 stretches of 10: in each one frame is sharp (index 10 k + 3 + k % 4), the others
    blurred; stretch 4 is blurred all through."""
    rng = np.random.default_rng(0)
    texture = (rng.random((96, 400, 3)) * 255).astype(np.uint8)
    texture = _blur(texture.transpose(1, 0, 2), 3).transpose(1, 0, 2)  # some smoothness, like a photo
    frames, sharp = [], []
    for i in range(60):
        frame = texture[:, 2 * i: 2 * i + 128]
        k = i // 10
        if i == 10 * k + 3 + k % 4 and k != 4:
            sharp.append(i)
        else:
            frame = _blur(frame, 9 if k != 4 else 25)
        frames.append(frame)
    return _write_video(tmp_path_factory.mktemp("video") / "shaky.mp4", frames), sharp


def test_sharpness_falls_with_blur():
    rng = np.random.default_rng(1)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    scores = [sharpness(_blur(image, w)[..., 1]) if w > 1 else sharpness(image[..., 1]) for w in (1, 3, 7, 15)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.1 * scores[0]


def test_the_sharpest_frame_of_each_stretch_is_kept(shaky_video, tmp_path):
    video, sharp = shaky_video
    stages = []
    frames = sample_video_frames([video], tmp_path / "frames", target=6, on_stage=lambda *a: stages.append(a))
    kept = [int(p.stem.split("_")[-1]) for p in frames.paths]
    assert frames.decoded == 60 and kept == sharp  # the blurred-through stretch 4 is dropped
    assert frames.dropped_blurry == 1
    assert all(p.name.startswith("shaky_") and p.suffix == ".jpg" for p in frames.paths)
    assert {s for s, _, _ in stages} == {"decode", "write"} and stages[-1] == ("write", 5, 5)
    from PIL import Image

    assert Image.open(frames.paths[0]).size == (128, 96)


def test_residual_motion_tells_a_shaken_view_from_a_new_one():
    wall, floor = _texture(48, 200, 1), _texture(48, 200, 2)
    a = _view(wall, floor, 1)[..., 1]
    shaken = _view(wall, floor, 1, dy=2, dx=-3)[..., 1]
    assert image_shift(a, shaken) == pytest.approx((-2, 3), abs=0.1)  # the view moved down-right: its content up-left
    shift, residual = residual_motion(a, shaken)
    assert shift == pytest.approx(np.hypot(2, 3) / 128, abs=1e-3) and residual < 0.1  # the same view, shaken: nothing left
    shift, residual = residual_motion(a, _view(wall, floor, 2)[..., 1])
    assert shift < 0.05 and residual > 0.5  # one step on: the floor (half the view) moved against the wall


@pytest.fixture(scope="module")
def held_views_video(tmp_path_factory):
    """40 frames: four camera positions (``_view`` steps 0-3), each held for 10 frames with a pixel or two
    of shake, as a hand that stops to film."""
    rng = np.random.default_rng(3)
    wall, floor = _texture(48, 200, 4), _texture(48, 200, 5)
    frames = [_view(wall, floor, i // 10, *rng.integers(-2, 3, size=2)) for i in range(40)]
    return _write_video(tmp_path_factory.mktemp("held") / "held.mp4", frames)


def test_frames_that_repeat_the_last_view_are_skipped(held_views_video, tmp_path):
    frames = sample_video_frames([held_views_video], tmp_path / "frames", target=20)
    views = [int(p.stem.split("_")[-1]) // 10 for p in frames.paths]
    assert views == [0, 1, 2, 3] and frames.dropped_still == 16 and frames.dropped_blurry == 0
    everything = sample_video_frames([held_views_video], tmp_path / "all", target=20, min_motion=0)
    assert len(everything.paths) == 20 and everything.dropped_still == 0


def test_hundreds_of_frames_can_be_kept(tmp_path):
    """ffmpeg's frame selection for the second pass holds up for many frames (a flat chain of 150 terms did not)."""
    rng = np.random.default_rng(6)
    frames = [(rng.random((32, 48, 3)) * 255).astype(np.uint8) for _ in range(160)]
    video = _write_video(tmp_path / "noise.mp4", frames)
    kept = sample_video_frames([video], tmp_path / "frames", target=160, min_motion=0)
    assert len(kept.paths) == 160 - kept.dropped_blurry > 150
    assert [int(p.stem.split("_")[-1]) for p in kept.paths] == sorted(int(p.stem.split("_")[-1]) for p in kept.paths)


def test_a_folder_of_videos_shares_the_frames(shaky_video, tmp_path):
    video, _ = shaky_video
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.mp4", "b.MOV"):
        (folder / name).write_bytes(video.read_bytes())
    (folder / "notes.txt").write_text("not a video")
    assert [p.name for p in list_videos(folder)] == ["a.mp4", "b.MOV"]
    assert list_videos(folder / "notes.txt") == [] and list_videos(video) == [video]
    frames = sample_video_frames(list_videos(folder), tmp_path / "frames", target=12)
    assert sorted({p.stem.split("_")[0] for p in frames.paths}) == ["a", "b"] and len(frames.paths) == 10


def test_video_errors_are_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not really a video")
    with pytest.raises(FeatureFieldError, match="broken.mp4"):
        sample_video_frames([broken], tmp_path / "frames")
    assert main(["process-images", str(broken), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.mp4" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(FeatureFieldError, match="at least 2"):
        sample_video_frames([broken], tmp_path / "frames", target=1)


@pytest.mark.slow
def test_a_video_becomes_a_colmap_scene(beer_dir, tmp_path, capsys):
    """Ten beer photos as a 2 s clip (each held 6 frames, the passages between them motion-blurred):
    `featurefield process-images CLIP OUT` keeps one sharp frame per photo and registers them all."""
    from PIL import Image

    from featurefield.data import load_scene

    frames = []
    for i in range(10):
        im = Image.open(beer_dir / "images" / f"{i:04d}.jpg")
        im.thumbnail((640, 640))
        sharp = np.asarray(im)[: im.height // 8 * 8, : im.width // 8 * 8]
        frames += [_blur(sharp, 15), _blur(sharp, 7), sharp, _blur(sharp, 5), _blur(sharp, 9), _blur(sharp, 15)]
    clip = _write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "scene"
    assert main(["process-images", str(clip), str(out), "--num-frames", "10", "--max-image-size", "640"]) == 0
    printed = capsys.readouterr().out
    assert "60 frames read, 10 kept" in printed and "registered 10 of 10 images" in printed
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"clip_{6 * i + 2:06d}.jpg" for i in range(10)]  # the sharp frame of each photo
    assert len(load_scene(out).cameras) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".featurefield")]  # frames folder removed
