"""Cameras: intrinsics, lens distortion, poses, rays and projection, in one convention.

Convention (everywhere inside featurefield):

* OpenCV camera frame: x right, y down, z forward (the camera looks along +z).
* ``c2w`` is a 4x4 float32 camera-to-world matrix; its last column is the camera centre.
* Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; the top-left image corner is ``(0, 0)``.
* Depth is z-depth (distance along the optical axis), not ray length.

Distortion models (``Cameras.model``), with coefficients stored as ``[k1, k2, k3, k4, p1, p2]``:

* ``"pinhole"``: no distortion, coefficients all zero.
* ``"opencv"``: Brown-Conrady radial ``k1, k2, k3`` and tangential ``p1, p2`` (OpenCV's
  ``k1,k2,p1,p2,k3``; COLMAP SIMPLE_RADIAL / RADIAL / OPENCV map onto it).
* ``"fisheye"``: OpenCV fisheye (equidistant) ``k1..k4``.

Loaders convert to this at the boundary (Blender and nerfstudio poses are OpenGL).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError

CAMERA_MODELS = ("pinhole", "opencv", "fisheye")

#: Flips the y and z axes: converts an OpenGL/Blender camera frame to OpenCV and back.
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """A batch of ``N`` cameras sharing one distortion model.

    Attributes:
        c2w: Camera-to-world poses, OpenCV convention. ``[N, 4, 4]`` float32.
        fx, fy, cx, cy: Focal lengths and principal point in pixels. ``[N]`` float32.
        width, height: Image size in pixels. ``[N]`` int64.
        model: One of :data:`CAMERA_MODELS`.
        distortion: ``[N, 6]`` float32 as ``[k1, k2, k3, k4, p1, p2]``.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: Tensor
    height: Tensor
    model: str = "pinhole"
    distortion: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        self.c2w = self.c2w.to(torch.float32)
        for name in ("fx", "fy", "cx", "cy"):
            setattr(self, name, torch.as_tensor(getattr(self, name), dtype=torch.float32).reshape(-1).expand(n).clone())
        for name in ("width", "height"):
            setattr(self, name, torch.as_tensor(getattr(self, name), dtype=torch.int64).reshape(-1).expand(n).clone())
        if self.model not in CAMERA_MODELS:
            raise FeatureFieldError(f"unknown camera model {self.model!r}; expected one of {CAMERA_MODELS}")
        if self.distortion is None:
            self.distortion = torch.zeros(n, 6)
        self.distortion = torch.as_tensor(self.distortion, dtype=torch.float32).reshape(-1, 6).expand(n, 6).clone()

    # ------------------------------------------------------------------ container behaviour
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> Cameras:
        """Select cameras by int, slice, list or bool mask; always returns a batch."""
        if isinstance(index, int):
            index = [index]
        return Cameras(
            c2w=self.c2w[index], fx=self.fx[index], fy=self.fy[index], cx=self.cx[index], cy=self.cy[index],
            width=self.width[index], height=self.height[index], model=self.model, distortion=self.distortion[index],
        )

    def to(self, device) -> Cameras:
        return Cameras(
            c2w=self.c2w.to(device), fx=self.fx.to(device), fy=self.fy.to(device), cx=self.cx.to(device),
            cy=self.cy.to(device), width=self.width.to(device), height=self.height.to(device),
            model=self.model, distortion=self.distortion.to(device),
        )

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def centers(self) -> Tensor:
        """Camera centres in world coordinates. ``[N, 3]``."""
        return self.c2w[:, :3, 3]

    @property
    def is_distorted(self) -> bool:
        return self.model != "pinhole" and bool((self.distortion != 0).any())

    def K(self) -> Tensor:
        """Intrinsic matrices. ``[N, 3, 3]``."""
        K = torch.zeros(len(self), 3, 3, device=self.device)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.fx, self.fy, self.cx, self.cy, 1.0
        return K

    def w2c(self) -> Tensor:
        """World-to-camera matrices (inverse of ``c2w``, rigid). ``[N, 4, 4]``."""
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3:]
        out = torch.eye(4, device=self.device).repeat(len(self), 1, 1)
        out[:, :3, :3] = R.transpose(1, 2)
        out[:, :3, 3:] = -R.transpose(1, 2) @ t
        return out

    def scaled(self, factor: float) -> Cameras:
        """Cameras for images resized by ``factor`` (e.g. 0.5 halves the resolution).

        Sizes round down like an image resize; intrinsics scale about the image corner, which keeps
        the pixel-centre convention exact.
        """
        width = torch.floor(self.width.to(torch.float64) * factor).to(torch.int64)
        height = torch.floor(self.height.to(torch.float64) * factor).to(torch.int64)
        sx = width.to(torch.float32) / self.width.to(torch.float32)
        sy = height.to(torch.float32) / self.height.to(torch.float32)
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=width, height=height, c2w=self.c2w.clone(), distortion=self.distortion.clone())

    def with_poses(self, c2w: Tensor) -> Cameras:
        """The same intrinsics with new poses ``[N, 4, 4]``."""
        return replace(self, c2w=c2w)

    # ------------------------------------------------------------------ distortion
    def _coefficients(self, index: Tensor | None) -> tuple[Tensor, ...]:
        """``(k1, k2, k3, k4, p1, p2)`` broadcastable against ``xy[..., 0]`` (see :meth:`distort`)."""
        if index is None:  # xy is [N, M, 2]: one coefficient row per camera
            return tuple(self.distortion[:, i, None] for i in range(6))
        per_point = self.distortion[index]  # index has xy's leading shape: coefficients per point
        return tuple(per_point[..., i] for i in range(6))

    def _distort_with(self, xy: Tensor, coeffs: tuple[Tensor, ...]) -> Tensor:
        k1, k2, k3, k4, p1, p2 = coeffs
        x, y = xy[..., 0], xy[..., 1]
        if self.model == "opencv":
            r2 = x * x + y * y
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            return torch.stack([xd, yd], -1)
        # fisheye (equidistant)
        r = torch.sqrt(x * x + y * y).clamp_min(1e-12)
        theta = torch.atan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        s = theta_d / r
        return torch.stack([x * s, y * s], -1)

    def distort(self, xy: Tensor, index: Tensor | None = None) -> Tensor:
        """Apply lens distortion to normalized image coordinates ``x/z, y/z``.

        Args:
            xy: ``[..., M, 2]`` undistorted normalized coordinates.
            index: camera index per point, shaped like ``xy[..., 0]``; ``None`` means ``xy`` is
                ``[N, M, 2]`` with one row per camera.
        Returns:
            ``[..., M, 2]`` distorted normalized coordinates.
        """
        if self.model == "pinhole":
            return xy
        return self._distort_with(xy, self._coefficients(index))

    def undistort(self, xy_distorted: Tensor, index: Tensor | None = None, iterations: int = 20) -> Tensor:
        """Invert :meth:`distort` with Newton iterations (numerical Jacobian-free fixed point + Newton).

        Args:
            xy_distorted: ``[N, M, 2]`` (or ``[..., M, 2]`` with ``index``) distorted normalized coords.
        Returns:
            Undistorted normalized coordinates, same shape.
        """
        if self.model == "pinhole":
            return xy_distorted
        xy = xy_distorted.clone()
        eps = 1e-6
        coeffs = self._coefficients(index)  # gathered once, not per evaluation
        dx = torch.tensor([eps, 0.0]).to(xy.device)
        dy = torch.tensor([0.0, eps]).to(xy.device)
        for _ in range(iterations):
            f = self._distort_with(xy, coeffs) - xy_distorted
            # 2x2 Jacobian by central differences: cheap, robust for every model.
            jx = (self._distort_with(xy + dx, coeffs) - self._distort_with(xy - dx, coeffs)) / (2 * eps)
            jy = (self._distort_with(xy + dy, coeffs) - self._distort_with(xy - dy, coeffs)) / (2 * eps)
            a, c = jx[..., 0], jx[..., 1]
            b, d = jy[..., 0], jy[..., 1]
            det = a * d - b * c
            det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
            step_x = (d * f[..., 0] - b * f[..., 1]) / det
            step_y = (-c * f[..., 0] + a * f[..., 1]) / det
            xy = xy - torch.stack([step_x, step_y], -1)
        return xy

    # ------------------------------------------------------------------ rays and projection
    def pixel_grid(self, i: int) -> Tensor:
        """Pixel centres of camera ``i`` as ``[H, W, 2]`` (u, v) float32."""
        W, H = int(self.width[i]), int(self.height[i])
        v, u = torch.meshgrid(torch.arange(H, device=self.device), torch.arange(W, device=self.device), indexing="ij")
        return torch.stack([u, v], -1).to(torch.float32) + 0.5

    def normalized(self, index: Tensor, pixels: Tensor) -> Tensor:
        """Undistorted normalized image coordinates ``[M, 2]`` (``x/z, y/z``) of pixel positions ``[M, 2]``
        of cameras ``index [M]``."""
        x = (pixels[:, 0] - self.cx[index]) / self.fx[index]
        y = (pixels[:, 1] - self.cy[index]) / self.fy[index]
        xy = torch.stack([x, y], -1)
        if self.model != "pinhole":
            xy = self.undistort(xy[None], index[None])[0]
        return xy

    def rays_from_normalized(self, index: Tensor, xy: Tensor) -> tuple[Tensor, Tensor]:
        """World rays (origins ``[M, 3]``, unit directions ``[M, 3]``) of undistorted normalized coordinates
        ``xy [M, 2]`` in cameras ``index [M]``."""
        dirs_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], -1)
        R = self.c2w[index, :3, :3]
        dirs = torch.einsum("mij,mj->mi", R, dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return self.c2w[index, :3, 3], dirs

    def rays_at(self, index: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Rays through given pixel positions (already including the +0.5 centre offset).

        Args:
            index: ``[M]`` camera index per pixel (int64).
            pixels: ``[M, 2]`` pixel positions (u, v).
        Returns:
            origins ``[M, 3]`` and unit directions ``[M, 3]`` in world coordinates.
        """
        return self.rays_from_normalized(index, self.normalized(index, pixels))

    def rays(self, i: int) -> tuple[Tensor, Tensor]:
        """All rays of camera ``i``: origins ``[H, W, 3]`` and unit directions ``[H, W, 3]``."""
        grid = self.pixel_grid(i)
        H, W = grid.shape[:2]
        index = torch.full((H * W,), i, dtype=torch.int64, device=self.device)
        o, d = self.rays_at(index, grid.reshape(-1, 2))
        return o.reshape(H, W, 3), d.reshape(H, W, 3)

    def project(self, points: Tensor, i: int | None = None) -> tuple[Tensor, Tensor]:
        """Project world points into cameras, with distortion.

        Args:
            points: ``[M, 3]`` world points.
            i: a camera index; ``None`` projects into every camera.
        Returns:
            uv ``[M, 2]`` (or ``[N, M, 2]``) pixel positions, centre convention as above, and
            z-depth ``[M]`` (or ``[N, M]``). Points behind the camera have depth <= 0.
        """
        cams = self if i is None else self[i]
        w2c = cams.w2c()
        pc = torch.einsum("nij,mj->nmi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        z = pc[..., 2]
        xy = pc[..., :2] / z[..., None].clamp_min(1e-9)  # behind-camera points are flagged by z <= 0
        xy = cams.distort(xy)
        u = xy[..., 0] * cams.fx[:, None] + cams.cx[:, None]
        v = xy[..., 1] * cams.fy[:, None] + cams.cy[:, None]
        uv = torch.stack([u, v], -1)
        if i is not None:
            return uv[0], z[0]
        return uv, z

    def validate(self, source: str = "cameras") -> None:
        """Raise :class:`FeatureFieldError` for NaN/inf, non-rigid poses or bad intrinsics."""
        if not torch.isfinite(self.c2w).all():
            bad = int((~torch.isfinite(self.c2w)).flatten(1).any(1).nonzero()[0])
            raise FeatureFieldError(f"{source}: pose of view {bad} contains NaN or inf; fix or remove that view")
        R = self.c2w[:, :3, :3]
        err = (R @ R.transpose(1, 2) - torch.eye(3)).abs().flatten(1).amax(1)
        det = torch.linalg.det(R)
        bad = ((err > 1e-3) | ((det - 1).abs() > 1e-3)).nonzero()
        if len(bad):
            raise FeatureFieldError(
                f"{source}: pose of view {int(bad[0])} is not a rigid transform (rotation not orthonormal); "
                "poses must be rotation + translation"
            )
        intr = torch.stack([self.fx, self.fy, self.cx, self.cy])
        if not torch.isfinite(intr).all() or (self.fx <= 0).any() or (self.fy <= 0).any():
            raise FeatureFieldError(f"{source}: missing or invalid intrinsics (focal lengths must be positive)")
        if (self.width <= 0).any() or (self.height <= 0).any():
            raise FeatureFieldError(f"{source}: image width and height must be positive")


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV camera-to-world poses looking from ``eye`` to ``target``.

    Args:
        eye: ``[N, 3]`` camera centres; target: ``[N, 3]`` or ``[3]``; up: world up ``[3]`` (default +z).
    Returns:
        ``[N, 4, 4]`` c2w (x right, y down, z forward).
    """
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else up
    target = target.expand_as(eye)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(z, up.expand_as(z), dim=-1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    y = torch.cross(z, x, dim=-1)
    c2w = torch.eye(4).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    return c2w


class PixelRays:
    """Rays through the pixel centres of a fixed batch of cameras, each camera's lens undistortion solved once.

    :meth:`Cameras.rays_at` inverts the distortion of every ray with Newton iterations: hundreds of small
    kernels, which a training step drawing random pixels of distorted photos would launch every step. For
    distorted cameras of one size this holds the undistorted normalized coordinates of every pixel centre
    ``[N, H, W, 2]``, computed once by :meth:`Cameras.normalized` itself, so a step gathers them and gets the
    very rays ``rays_at`` gives. Pinhole cameras (or a table over ``max_bytes``) keep computing ``rays_at``.

    Args:
        cameras: the ``N`` cameras (on the device the rays are wanted on).
        max_bytes: largest table to build (``None``: a quarter of the free memory of a CUDA device; 64 MiB on
            the CPU, where solving every pixel of full-size photos once costs more than a run's rays do).
    """

    def __init__(self, cameras: Cameras, max_bytes: int | None = None) -> None:
        self.cameras = cameras
        self.table: Tensor | None = None
        if not cameras.is_distorted or len(set(zip(cameras.width.tolist(), cameras.height.tolist()))) != 1:
            return
        W, H = int(cameras.width[0]), int(cameras.height[0])
        size = len(cameras) * H * W * 2 * 4
        if max_bytes is None:
            dev = cameras.device
            max_bytes = torch.cuda.mem_get_info(dev)[0] // 4 if dev.type == "cuda" else 64 * 2**20
        if size > max_bytes:
            return
        grid = cameras.pixel_grid(0).reshape(-1, 2)  # [H * W, 2]: every camera has this size
        table = torch.empty(len(cameras), H * W, 2, device=cameras.device)
        for i in range(len(cameras)):
            table[i] = cameras.normalized(torch.full((H * W,), i, dtype=torch.int64, device=cameras.device), grid)
        self.table = table.reshape(len(cameras), H, W, 2)

    def __call__(self, index: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Origins and unit directions ``[M, 3]`` of the rays through pixels ``(u, v)`` (int64 ``[M]`` each,
        the pixel's centre) of cameras ``index [M]``, as ``rays_at(index, (u, v) + 0.5)``."""
        if self.table is None:
            return self.cameras.rays_at(index, torch.stack([u, v], -1).float() + 0.5)
        return self.cameras.rays_from_normalized(index, self.table[index, v, u])
