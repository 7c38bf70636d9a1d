"""undistort_scene: resampled pinhole images agree with Cameras.project of the distorted cameras."""

from __future__ import annotations

import torch

from featurefield.cameras import Cameras, look_at
from featurefield.data import ArraySource, ImageArrays, Normalization, Scene
from featurefield.data.undistort import undistort_scene


def _pattern(uv: torch.Tensor) -> torch.Tensor:
    """A smooth colour as a function of pixel position ``[..., 2] -> [..., 3]``."""
    u, v = uv[..., 0], uv[..., 1]
    return torch.stack([torch.sin(u / 7.0), torch.cos(v / 5.0), torch.sin((u + v) / 11.0)], -1) * 0.5 + 0.5


def _scene(model: str, dist: list[float]) -> Scene:
    n, w, h = 2, 48, 36
    eye = torch.tensor([[3.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    cams = Cameras(c2w=look_at(eye, torch.zeros(3)), fx=30.0, fy=31.0, cx=24.5, cy=17.0, width=w, height=h,
                   model=model, distortion=torch.tensor(dist))
    images = [_pattern(cams.pixel_grid(i)) for i in range(n)]
    labels = [(cams.pixel_grid(i)[..., 0] // 8).to(torch.int64) for i in range(n)]
    return Scene(cameras=cams, images=ImageArrays(images), split={"train": [0], "test": [1]},
                 normalization=Normalization.fit(cams), semantics=ArraySource.from_list(labels))


def test_undistorted_pixels_show_what_the_distorted_camera_sees():
    for model, dist in [("opencv", [-0.25, 0.06, 0.0, 0.0, 0.003, -0.002]), ("fisheye", [0.08, -0.02, 0.0, 0.0, 0, 0])]:
        scene = _scene(model, dist)
        out = undistort_scene(scene)
        assert out.cameras.model == "pinhole" and not out.cameras.is_distorted
        torch.testing.assert_close(out.cameras.K(), scene.cameras.K())
        for i in range(len(scene)):
            # A world point on each pinhole pixel's ray, projected by the distorted camera.
            o, d = out.cameras.rays(i)
            pts = (o + 2.5 * d).reshape(-1, 3)
            uv_dist, _ = scene.cameras.project(pts, i)
            uv_dist = uv_dist.reshape(*o.shape[:2], 2)
            inside = ((uv_dist[..., 0] > 1) & (uv_dist[..., 0] < 47) & (uv_dist[..., 1] > 1) & (uv_dist[..., 1] < 35))
            assert inside.float().mean() > 0.5
            img = out.rgba(i)
            expected = _pattern(uv_dist)
            err = (img - expected).abs()[inside]
            assert err.max() < 0.01, float(err.max())
            # and it is not the identity: the raw image differs where distortion moves pixels
            assert (scene.rgba(i) - expected).abs()[inside].max() > 0.05
            # labels are sampled nearest: integers, matching the label at the distorted position
            lab = out.semantic(i)
            assert lab.dtype == torch.int64
            near = (uv_dist[..., 0] // 8).to(torch.int64)
            stable = inside & ((uv_dist[..., 0] % 8 - 4).abs() < 3.5)
            assert torch.equal(lab[stable], near[stable])



def test_labels_the_distorted_camera_never_saw_are_unlabelled():
    """Pincushion distortion: pinhole pixels near the corners look past the distorted image; their labels are -1
    (unlabelled), not class 0."""
    scene = _scene("opencv", [0.4, 0.0, 0.0, 0.0, 0.0, 0.0])
    out = undistort_scene(scene)
    o, d = out.cameras.rays(0)
    uv, _ = scene.cameras.project((o + 2.5 * d).reshape(-1, 3), 0)
    uv = uv.reshape(*o.shape[:2], 2)
    outside = (uv[..., 0] < -0.5) | (uv[..., 0] > 48.5) | (uv[..., 1] < -0.5) | (uv[..., 1] > 36.5)
    inside = (uv[..., 0] > 0.5) & (uv[..., 0] < 47.5) & (uv[..., 1] > 0.5) & (uv[..., 1] < 35.5)
    assert outside.float().mean() > 0.05 and inside.float().mean() > 0.5
    lab = out.semantic(0)
    assert (lab[outside] == -1).all() and (lab[inside] >= 0).all()


def test_pinhole_scene_is_returned_unchanged():
    scene = _scene("pinhole", [0.0] * 6)
    assert undistort_scene(scene) is scene
