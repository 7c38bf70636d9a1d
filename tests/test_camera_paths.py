"""Camera paths for videos: the orbit keeps to what was captured unless asked for a full circle."""

from __future__ import annotations

import math

import pytest
import torch

from featurefield.camera_paths import focus_point, orbit_path
from featurefield.cameras import Cameras, look_at


def ring(azimuths_deg: list[float], radius: float = 3.0, height: float = 1.0) -> Cameras:
    """Cameras on a horizontal circle (z up) looking at the origin."""
    a = torch.tensor(azimuths_deg) * math.pi / 180
    eyes = torch.stack([radius * torch.cos(a), radius * torch.sin(a), torch.full_like(a, height)], -1)
    c2w = look_at(eyes, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    return Cameras(c2w=c2w, fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)


def azimuths(cams: Cameras) -> torch.Tensor:
    c = cams.centers
    return torch.atan2(c[:, 1], c[:, 0]) * 180 / math.pi


def test_focus_point_of_a_ring_is_its_centre():
    assert torch.allclose(focus_point(ring(list(range(0, 360, 30)))), torch.zeros(3), atol=1e-4)


def test_orbit_of_a_one_sided_capture_sweeps_the_captured_arc_and_back():
    cams = ring([float(x) for x in range(-20, 101, 10)])  # 120 degrees captured
    path = orbit_path(cams, frames=60)
    az = azimuths(path)
    assert az.min() >= -20.5 and az.max() <= 100.5  # never behind the object
    assert az.min() < -10 and az.max() > 90  # reaches both ends, less the few views at the edges
    assert abs(float(az[0] - az[-1])) < 1.0  # loops
    assert torch.allclose(path.centers[:, 2], torch.full((60,), 1.0), atol=1e-4)  # the capture's height
    full = azimuths(orbit_path(cams, frames=60, arc="full"))
    assert full.max() - full.min() > 340  # asked for: the whole circle


def test_orbit_of_an_all_round_capture_is_a_full_circle():
    path = orbit_path(ring([float(x) for x in range(0, 360, 20)]), frames=36)
    az = azimuths(path).sort().values
    gaps = torch.diff(torch.cat([az, az[:1] + 360]))
    assert gaps.max() < 11  # evenly around (10 degrees a frame)
    with pytest.raises(ValueError):
        orbit_path(ring([0.0, 90.0]), arc="half")


def test_up_is_level_for_cameras_looking_down_from_one_side():
    from featurefield.camera_paths import world_up

    cams = ring([float(x) for x in range(-20, 101, 10)], height=2.0)  # all looking down at the object
    mean_up = -cams.c2w[:, :3, 1].mean(0)
    assert float(mean_up[2] / mean_up.norm()) < 0.95  # the naive average leans towards the object
    assert torch.allclose(world_up(cams), torch.tensor([0.0, 0.0, 1.0]), atol=1e-4)
    # a forward-facing capture (every camera the same way, slid sideways): level, and up where the cameras' up is
    c2w = look_at(torch.stack([torch.arange(5.0), torch.zeros(5), torch.zeros(5)], -1),
                  torch.stack([torch.arange(5.0), torch.full((5,), 4.0), torch.full((5,), -1.0)], -1))
    up = world_up(Cameras(c2w=c2w, fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48))
    assert abs(float(up @ c2w[0, :3, 0])) < 1e-5 and float(up @ -c2w[0, :3, 1]) > 0.99
