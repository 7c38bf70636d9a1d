"""What real captures need beyond the Gaussians: per-image appearance, and camera poses refined in training.

Phone photos differ in exposure and white balance from one to the next (auto-exposure), and SfM poses are
off by a little. Left alone, the Gaussians absorb both as view-dependent colour and floaters. Two small
per-training-image models take them instead, each an option of the Gaussian field:

* :class:`AppearanceCompensation`: an affine colour transform per training image applied to the render
  before the colour loss, ``rgb' = (I + A_i) rgb + b_i``. The transforms are kept centred (the mean over the
  images is subtracted), so the Gaussians hold the captures' average appearance and a render of any new
  view (test views included) is the plain render: nothing is fitted on held-out pixels.
* :class:`PoseRefinement`: a small SE(3) correction per training camera (translation and axis-angle
  rotation, starting at zero, in the camera's frame), ``c2w' = c2w @ exp(delta_i)``, as gsplat's
  ``simple_trainer`` ``pose_opt``; test cameras are used as given.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featurefield.fields.splat.views import View


class AppearanceCompensation(nn.Module):
    """Centred per-image affine colour transforms ``[N, 3, 4]`` (a 3x3 matrix beside the identity, and an offset)."""

    def __init__(self, num_images: int) -> None:
        super().__init__()
        self.affine = nn.Parameter(torch.zeros(num_images, 3, 4))

    def transform(self, i: int) -> tuple[Tensor, Tensor]:
        """Image ``i``'s matrix ``[3, 3]`` and offset ``[3]``, with the mean transform over the images removed."""
        centred = self.affine[i] - self.affine.mean(0)
        return torch.eye(3, device=centred.device) + centred[:, :3], centred[:, 3]

    def forward(self, rgb: Tensor, i: int) -> Tensor:
        """Render ``[H, W, 3]`` as training image ``i`` saw it."""
        M, b = self.transform(i)
        return rgb @ M.T + b


def _skew(v: Tensor) -> Tensor:
    zero = torch.zeros_like(v[..., 0])
    return torch.stack([zero, -v[..., 2], v[..., 1], v[..., 2], zero, -v[..., 0], -v[..., 1], v[..., 0], zero],
                       -1).reshape(*v.shape[:-1], 3, 3)


def se3_exp(delta: Tensor) -> Tensor:
    """``[6]`` (translation, axis-angle rotation) -> ``[4, 4]`` rigid transform (rotation by Rodrigues' formula)."""
    t, w = delta[:3], delta[3:]
    theta2 = (w * w).sum()
    theta = torch.sqrt(theta2 + 1e-12)
    K = _skew(w)
    # sin(x)/x and (1-cos(x))/x^2 by their series near 0, where the exact forms lose precision
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-12))
    R = torch.eye(3, device=delta.device, dtype=delta.dtype) + a * K + b * (K @ K)
    T = torch.eye(4, device=delta.device, dtype=delta.dtype)
    T = torch.cat([torch.cat([R, t[:, None]], 1), T[3:]], 0)
    return T


class PoseRefinement(nn.Module):
    """Per-camera SE(3) corrections ``[N, 6]`` (translation, axis-angle), zero at the start."""

    def __init__(self, num_cameras: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(num_cameras, 6))

    def correction(self, i: int) -> Tensor:
        """Camera ``i``'s correction in its own frame, ``[4, 4]`` (``c2w' = c2w @ correction``)."""
        return se3_exp(self.delta[i])

    def forward(self, view: View, i: int) -> View:
        """``view`` with camera ``i``'s correction applied: ``w2c' = correction^-1 @ w2c`` (differentiable)."""
        T = self.correction(i)
        R, t = T[:3, :3], T[:3, 3]
        inv = torch.cat([torch.cat([R.T, -(R.T @ t)[:, None]], 1), T[3:]], 0)
        viewmat = inv @ view.viewmat
        c2w_rot = viewmat[:3, :3].T
        campos = -c2w_rot @ viewmat[:3, 3]
        return View(viewmat, view.K, campos, view.width, view.height)
