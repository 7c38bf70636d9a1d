"""Camera paths for videos: a smooth orbit around the scene, or an interpolation through given views.

All functions take and return :class:`~featurefield.cameras.Cameras` in one frame (the caller's,
canonical in practice) and keep the intrinsics of a template camera.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from featurefield.cameras import Cameras, look_at


def focus_point(cameras: Cameras) -> Tensor:
    """The point closest (least squares) to every camera's optical axis. ``[3]``.

    For captures that circle an object this is the object; for forward-facing captures whose axes are
    nearly parallel the system is ill-conditioned and the mean camera centre plus the mean viewing
    direction is returned instead.
    """
    o = cameras.centers
    d = cameras.c2w[:, :3, 2]
    d = d / d.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, device=o.device)
    proj = eye[None] - d[:, :, None] * d[:, None, :]  # [N, 3, 3] projectors orthogonal to each axis
    A = proj.sum(0)
    b = (proj @ o[:, :, None]).sum(0)[:, 0]
    if torch.linalg.cond(A) > 1e4:
        spread = (o - o.mean(0)).norm(dim=-1).mean().clamp_min(1e-3)
        return o.mean(0) + d.mean(0) * spread * 4
    return torch.linalg.solve(A, b)


def world_up(cameras: Cameras) -> Tensor:
    """The scene's "up". ``[3]`` unit.

    People rarely roll a camera, so the cameras' x axes (image right) lie about level: up is the direction
    most perpendicular to all of them (the smallest eigenvector of their scatter), turned to agree with
    the cameras' average up (OpenCV y points down, so up is -y). That average alone leans towards the
    object when every camera looks down at it from one side, and tilts a video's horizon. Where the
    x axes do not spread over a plane (all parallel: a forward-facing capture), the average up is used,
    made perpendicular to their mean.
    """
    mean_up = -cameras.c2w[:, :3, 1].mean(0)
    mean_up = mean_up / mean_up.norm().clamp_min(1e-9)
    right = cameras.c2w[:, :3, 0]
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    evals, evecs = torch.linalg.eigh(right.T @ right / len(right))
    up = evecs[:, 0]
    if float(up @ mean_up) < 0:
        up = -up
    if evals[1] > 0.05 * evals[2] and float(up @ mean_up) > 0.5:
        return up / up.norm()
    mean_right = right.mean(0)
    mean_right = mean_right / mean_right.norm().clamp_min(1e-9)
    level = mean_up - (mean_up @ mean_right) * mean_right
    return level / level.norm().clamp_min(1e-9)


def captured_arc(cameras: Cameras, target: Tensor, a: Tensor, b: Tensor, trim: float = 0.05) -> tuple[float, float]:
    """``(start, span)`` in radians of the azimuths the cameras cover about ``target`` (0 along ``a``, pi/2
    along ``b``, two unit vectors orthogonal to up).

    The circle minus its largest empty gap, less the ``trim`` fraction of cameras at either end (the few
    views at the edges of a capture see too little to look from).
    """
    rel = cameras.centers - target
    azimuth = torch.atan2(rel @ b, rel @ a).sort().values
    gaps = torch.diff(torch.cat([azimuth, azimuth[:1] + 2 * math.pi]))
    i = int(gaps.argmax())
    start = azimuth[(i + 1) % len(azimuth)]
    unwrapped = torch.remainder(azimuth - start, 2 * math.pi)  # 0 .. span, from one edge of the gap round
    lo, hi = torch.quantile(unwrapped, torch.tensor([trim, 1 - trim]))
    return float(start + lo), float(hi - lo)


def orbit_path(cameras: Cameras, frames: int = 120, template: int = 0, arc: str = "auto",
               max_gap_deg: float = 90.0) -> Cameras:
    """An orbit around :func:`focus_point` at the cameras' mean distance and height.

    Args:
        cameras: the capture's cameras (train views).
        frames: path length.
        template: camera whose intrinsics the path keeps.
        arc: ``"full"``: a whole circle; ``"captured"``: a sweep over the azimuths the cameras cover and
            back (eased at both ends, so the video loops); ``"auto"``: ``"captured"`` when the capture leaves
            a gap wider than ``max_gap_deg`` (a phone capture from one side), else ``"full"``. Outside what
            was captured a field shows only guesses.
    """
    if arc not in ("auto", "full", "captured"):
        raise ValueError(f"arc must be auto, full or captured, got {arc!r}")
    target = focus_point(cameras)
    up = world_up(cameras)
    rel = cameras.centers - target
    height = float((rel @ up).mean())
    planar = rel - (rel @ up)[:, None] * up
    radius = float(planar.norm(dim=-1).mean())
    a = planar[0] / planar[0].norm().clamp_min(1e-9)
    b = torch.linalg.cross(up, a)
    start, span = captured_arc(cameras, target, a, b)
    if arc == "captured" or (arc == "auto" and 2 * math.pi - span > math.radians(max_gap_deg)):
        phase = torch.arange(frames) / frames * 2 * math.pi
        t = start + span * (0.5 - 0.5 * torch.cos(phase))
    else:
        t = torch.linspace(0, 2 * math.pi, frames + 1)[:-1]
    eyes = target + radius * (torch.cos(t)[:, None] * a + torch.sin(t)[:, None] * b) + height * up
    c2w = look_at(eyes, target, up)
    return _with_intrinsics(cameras[template], c2w)


def _slerp(q0: Tensor, q1: Tensor, t: float) -> Tensor:
    dot = float((q0 * q1).sum())
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / q.norm()
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)


def _quat(R: Tensor) -> Tensor:
    w = torch.sqrt(torch.clamp(1 + R[0, 0] + R[1, 1] + R[2, 2], min=1e-12)) / 2
    if w > 1e-3:
        return torch.stack([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])
    i = int(torch.argmax(torch.diagonal(R)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = torch.sqrt(torch.clamp(1 + R[i, i] - R[j, j] - R[k, k], min=1e-12)) * 2
    q = torch.zeros(4)
    q[0] = (R[k, j] - R[j, k]) / s
    q[1 + i] = s / 4
    q[1 + j] = (R[j, i] + R[i, j]) / s
    q[1 + k] = (R[k, i] + R[i, k]) / s
    return q


def _rot(q: Tensor) -> Tensor:
    w, x, y, z = q / q.norm()
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])


def interpolate_path(cameras: Cameras, frames: int = 120) -> Cameras:
    """Pass smoothly through the given cameras in order: positions lerp, rotations slerp."""
    n = len(cameras)
    if n == 1:
        return _with_intrinsics(cameras, cameras.c2w.repeat(frames, 1, 1))
    quats = [_quat(cameras.c2w[i, :3, :3].cpu()) for i in range(n)]
    out = []
    for f in range(frames):
        s = f / max(frames - 1, 1) * (n - 1)
        i = min(int(s), n - 2)
        t = s - i
        c2w = torch.eye(4)
        c2w[:3, :3] = _rot(_slerp(quats[i], quats[i + 1], t))
        c2w[:3, 3] = (1 - t) * cameras.c2w[i, :3, 3].cpu() + t * cameras.c2w[i + 1, :3, 3].cpu()
        out.append(c2w)
    return _with_intrinsics(cameras[0], torch.stack(out))


def _with_intrinsics(template: Cameras, c2w: Tensor) -> Cameras:
    n = c2w.shape[0]
    return Cameras(c2w=c2w.to(template.device), fx=template.fx[:1].expand(n), fy=template.fy[:1].expand(n),
                   cx=template.cx[:1].expand(n), cy=template.cy[:1].expand(n), width=template.width[:1].expand(n),
                   height=template.height[:1].expand(n), model="pinhole")
