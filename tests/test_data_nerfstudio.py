"""nerfstudio transforms.json: reader features and a writer that round-trips rays exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featurefield.cameras import OPENGL_TO_OPENCV, Cameras, look_at
from featurefield.data import ImageArrays, Normalization, PointCloud, Scene, detect_format, load_scene
from featurefield.data.nerfstudio import write_nerfstudio


def _all_rays(cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    rays = [cams.rays(i) for i in range(len(cams))]
    return torch.stack([r[0] for r in rays]), torch.stack([r[1] for r in rays])


def _assert_same_cameras(a: Cameras, b: Cameras) -> None:
    assert a.model == b.model
    for name in ("c2w", "fx", "fy", "cx", "cy", "width", "height", "distortion"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_lego_round_trip_gives_identical_rays(lego_dir, tmp_path):
    lego = load_scene(lego_dir)
    views = [0, 1, 57, 100, 150, 299]  # train and test views
    scene = lego.subset(views)
    write_nerfstudio(scene, tmp_path / "ns")
    assert detect_format(tmp_path / "ns") == "nerfstudio"
    back = load_scene(tmp_path / "ns")
    _assert_same_cameras(scene.cameras, back.cameras)
    index = torch.randint(0, len(views), (5000,))
    pixels = torch.rand(5000, 2) * 800
    o1, d1 = scene.cameras.rays_at(index, pixels)
    o2, d2 = back.cameras.rays_at(index, pixels)
    assert torch.equal(o1, o2) and torch.equal(d1, d2)
    assert back.split == scene.split == {"train": [0, 1, 2], "test": [3, 4, 5]}
    assert torch.equal(back.rgba(4), scene.rgba(4))


def _distorted_scene(model="opencv") -> Scene:
    n, w, h = 5, 20, 14
    ang = torch.arange(n) * 1.1
    eye = torch.stack([3 * torch.cos(ang), 3 * torch.sin(ang), 0.5 + 0.1 * ang], -1)
    dist = torch.tensor([[-0.21, 0.05, 0.01, 0.0, 0.002, -0.003]]).repeat(n, 1)
    if model == "fisheye":
        dist = torch.tensor([[0.1, -0.02, 0.003, 0.001, 0.0, 0.0]]).repeat(n, 1)
    dist[:, 0] += torch.arange(n) * 0.01  # per-view coefficients
    cams = Cameras(c2w=look_at(eye, torch.zeros(3)), fx=torch.linspace(17.3, 19.1, n), fy=18.7,
                   cx=10.3, cy=6.9, width=w, height=h, model=model, distortion=dist)
    gen = torch.Generator().manual_seed(1)
    images = [(torch.randint(0, 256, (h, w, 4), generator=gen) / 255.0).float() for _ in range(n)]
    pts = PointCloud(torch.randn(30, 3, generator=gen), torch.randint(0, 256, (30, 3), generator=gen) / 255.0)
    return Scene(cameras=cams, images=ImageArrays(images), split={"train": [1, 2, 4], "test": [0, 3]},
                 normalization=Normalization.fit(cams), points=pts, name="distorted")


def test_distorted_round_trip_gives_identical_rays_images_points(tmp_path):
    for model in ("opencv", "fisheye"):
        scene = _distorted_scene(model)
        write_nerfstudio(scene, tmp_path / model)
        back = load_scene(tmp_path / model)
        _assert_same_cameras(scene.cameras, back.cameras)
        o1, d1 = _all_rays(scene.cameras)
        o2, d2 = _all_rays(back.cameras)
        assert torch.equal(o1, o2) and torch.equal(d1, d2)
        assert back.split == scene.split
        for i in range(len(scene)):
            assert torch.equal(back.rgba(i), scene.rgba(i))
        assert torch.equal(back.points.xyz, scene.points.xyz)
        torch.testing.assert_close(back.points.rgb, scene.points.rgb, atol=1 / 255, rtol=0)


def _write_ns(root: Path, frames: list[dict], **meta) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "transforms.json").write_text(json.dumps({**meta, "frames": frames}))
    return root


def _frames(root: Path, n: int, size=(12, 8), folder="images", c2w_gl=None) -> list[dict]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        ang = 2 * math.pi * i / n
        eye = torch.tensor([[3 * math.cos(ang), 3 * math.sin(ang), 1.0]])
        pose = (look_at(eye, torch.zeros(3)) @ OPENGL_TO_OPENCV)[0] if c2w_gl is None else c2w_gl[i]
        Image.fromarray(np.full((size[1], size[0], 3), 10 * i, np.uint8)).save(root / folder / f"f_{i:03d}.png")
        frames.append({"file_path": f"{folder}/f_{i:03d}.png", "transform_matrix": pose.tolist()})
    return frames


def test_global_and_per_frame_intrinsics_and_holdout(tmp_path):
    root = tmp_path / "ns"
    frames = _frames(root, 10)
    frames[3].update(fl_x=30.0, fl_y=31.0, cx=5.0)  # per-frame override
    _write_ns(root, frames, fl_x=20.0, fl_y=22.0, cx=6.0, cy=4.0, w=12, h=8, camera_model="PINHOLE")
    scene = load_scene(root)
    assert scene.cameras.model == "pinhole"
    assert scene.cameras.fx.tolist()[2:5] == [20.0, 30.0, 20.0]
    assert scene.cameras.fy[3] == 31.0 and scene.cameras.cx[3] == 5.0 and scene.cameras.cy[3] == 4.0
    assert scene.split == {"train": [1, 2, 3, 4, 5, 6, 7, 9], "test": [0, 8]}


def test_applied_transform_is_undone_for_poses_and_points(tmp_path):
    from plyfile import PlyData, PlyElement

    root = tmp_path / "ns"
    n = 4
    ang = torch.arange(n) * 1.3
    eye = torch.stack([3 * torch.cos(ang), 3 * torch.sin(ang), torch.ones(n)], -1)
    c2w_cv = look_at(eye, torch.tensor([0.2, 0.1, 0.0]))  # the original (SfM) frame
    A = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])  # what ns-process-data writes
    c2w_gl = A @ c2w_cv @ OPENGL_TO_OPENCV
    frames = _frames(root, n, c2w_gl=c2w_gl)
    pts = torch.randn(6, 3)
    pts_t = pts @ A[:3, :3].T
    data = np.array([tuple(p) + (1, 2, 3) for p in pts_t.tolist()],
                    dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(root / "points.ply"))
    _write_ns(root, frames, fl_x=10.0, applied_transform=A[:3].tolist(), ply_file_path="points.ply")
    scene = load_scene(root)
    torch.testing.assert_close(scene.cameras.c2w, c2w_cv, atol=1e-6, rtol=0)
    torch.testing.assert_close(scene.points.xyz, pts, atol=1e-6, rtol=0)
    torch.testing.assert_close(scene.points.rgb[0], torch.tensor([1, 2, 3]) / 255.0)


def test_masks_become_alpha_and_split_lists_are_used(tmp_path):
    root = tmp_path / "ns"
    frames = _frames(root, 4)
    (root / "masks").mkdir()
    for i, f in enumerate(frames):
        mask = np.zeros((8, 12), np.uint8)
        mask[:, : 3 * (i + 1)] = 255
        Image.fromarray(mask).save(root / "masks" / f"m_{i}.png")
        f["mask_path"] = f"masks/m_{i}.png"
    _write_ns(root, frames, fl_x=10.0, train_filenames=[frames[1]["file_path"], "./" + frames[2]["file_path"]],
              test_filenames=[frames[0]["file_path"], frames[3]["file_path"]])
    scene = load_scene(root, background=(1.0, 0.0, 0.0))
    assert scene.split == {"train": [1, 2], "test": [0, 3]}
    alpha = scene.alpha(2)
    assert alpha is not None and alpha[:, :9].eq(1).all() and alpha[:, 9:].eq(0).all()
    assert torch.equal(scene.image(2)[0, 11], torch.tensor([1.0, 0.0, 0.0]))  # masked out -> background


def test_downscale_prefers_images_n_folder(tmp_path):
    root = tmp_path / "ns"
    frames = _frames(root, 3, size=(12, 8))
    _frames(root, 3, size=(6, 4), folder="images_2")  # same names, half size
    for i in range(3):  # make the prescaled images recognisable
        Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(root / "images_2" / f"f_{i:03d}.png")
    _write_ns(root, frames, fl_x=10.0, cx=6.0, cy=4.0)
    scene = load_scene(root, downscale=2)
    assert scene.cameras.width[0] == 6 and scene.cameras.fx[0] == 5.0 and scene.cameras.cx[0] == 3.0
    assert torch.allclose(scene.rgba(1), torch.full((4, 6, 3), 200 / 255))
    # downscale 3 has no images_3 folder: resized on load
    small = load_scene(root, downscale=3)
    assert small.rgba(1).shape == (2, 4, 3)
    assert small.cameras.width[0] == 4 and small.cameras.height[0] == 2


def test_writer_without_images_leaves_them_to_the_caller(tmp_path, monkeypatch):
    from featurefield.data import demo_scene
    from featurefield.data.demo_scene import make_demo_scene

    scene = make_demo_scene(seed=2, size=16, views=4, points=100, supersample=1, lazy=True)
    rendered = []
    render = demo_scene._ViewRenderer.render
    monkeypatch.setattr(demo_scene._ViewRenderer, "render", lambda self, views: rendered.extend(views) or render(self, views))
    write_nerfstudio(scene, tmp_path / "ns", images=False)
    assert rendered == []  # no view of the lazy scene rendered: neither its image nor its label maps written
    assert not list((tmp_path / "ns" / "images").iterdir()) and not (tmp_path / "ns" / "labels").exists()
    for i in range(len(scene)):  # as a generator writing views in parallel does
        Image.fromarray((scene.image(i) * 255).round().byte().numpy()).save(tmp_path / "ns" / "images" / f"{i:05d}.png")
    loaded = load_scene(tmp_path / "ns")
    assert loaded.split == scene.split and torch.allclose(loaded.image(3), scene.image(3), atol=1 / 255)
