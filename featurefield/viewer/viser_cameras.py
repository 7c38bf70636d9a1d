"""viser's camera (OpenCV axes, world-from-camera ``wxyz`` and position, vertical fov) to ours and back."""

from __future__ import annotations

import numpy as np
import torch

from featurefield.cameras import Cameras


def viewer_camera(wxyz, position, fov_y: float, width: int, height: int) -> Cameras:
    """Our camera for a viser camera: ``wxyz`` rotation (world from camera, OpenCV axes, as ours),
    ``position`` ``[3]``, vertical field of view ``fov_y`` in radians; square pixels, centred principal
    point. One camera (``[1]`` batch)."""
    import viser.transforms as vtf

    c2w = torch.eye(4)
    c2w[:3, :3] = torch.from_numpy(vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()).float()
    c2w[:3, 3] = torch.as_tensor(np.asarray(position, dtype=np.float64), dtype=torch.float32)
    focal = 0.5 * height / float(np.tan(0.5 * fov_y))
    return Cameras(c2w=c2w[None], fx=focal, fy=focal, cx=width / 2, cy=height / 2, width=width, height=height)


def camera_pose(cameras: Cameras, index: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``(wxyz [4], position [3], vertical fov in radians)`` of one of our cameras, for viser."""
    import viser.transforms as vtf

    c2w = cameras.c2w[index].detach().double().cpu().numpy()
    fov_y = 2.0 * float(np.arctan(0.5 * float(cameras.height[index]) / float(cameras.fy[index])))
    return vtf.SO3.from_matrix(c2w[:3, :3]).wxyz, c2w[:3, 3].copy(), fov_y


def sized(camera: Cameras, side: int) -> Cameras:
    """``camera`` rescaled so that its longer image side is ``side`` pixels."""
    factor = side / max(int(camera.width[0]), int(camera.height[0]))
    return camera.scaled(factor) if abs(factor - 1) > 1e-6 else camera
