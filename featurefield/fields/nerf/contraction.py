"""Scene contraction: unbounded space into a radius-2 box (L-infinity), or a fixed AABB; both to [0, 1]^3."""

from __future__ import annotations

import torch
from torch import Tensor


def contract_linf(x: Tensor) -> Tensor:
    """mip-NeRF 360 contraction with the L-infinity norm: identity inside the unit cube,
    ``(2 - 1/|x|) x/|x|`` outside, so all of space lands in ``[-2, 2]^3``.

    Args:
        x: ``[..., 3]`` canonical positions.
    Returns:
        ``[..., 3]`` contracted positions.
    """
    mag = x.abs().amax(-1, keepdim=True)
    safe = mag.clamp_min(1.0)
    return torch.where(mag <= 1, x, (2 - 1 / safe) * (x / safe))


def uncontract_linf(y: Tensor) -> Tensor:
    """Inverse of :func:`contract_linf` for ``y`` in ``(-2, 2)^3``."""
    mag = y.abs().amax(-1, keepdim=True)
    safe = mag.clamp(1.0, 2.0 - 1e-6)
    r = 1 / (2 - safe)  # |x|_inf for |y|_inf = safe
    return torch.where(mag <= 1, y, y / safe * r)


class Contraction:
    """Maps canonical positions to ``[0, 1]^3`` for the hash grids.

    Args:
        kind: ``"linf"`` (unbounded scenes) or ``"aabb"`` (bounded synthetic scenes).
        aabb: ``[2, 3]`` box (required for ``"aabb"``).
    """

    def __init__(self, kind: str, aabb: Tensor | None = None) -> None:
        if kind not in ("linf", "aabb"):
            raise ValueError(f"unknown contraction {kind!r}")
        if kind == "aabb" and aabb is None:
            raise ValueError("aabb contraction needs a box")
        self.kind = kind
        self.aabb = None if aabb is None else torch.as_tensor(aabb, dtype=torch.float32)
        self._aabb_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def box(self, like: Tensor) -> Tensor:
        """The box ``[2, 3]`` on ``like``'s device and dtype, copied there once (a copy per call would make
        the host wait for the GPU every training step)."""
        key = (like.device, like.dtype)
        if key not in self._aabb_on:
            self._aabb_on[key] = self.aabb.to(like)
        return self._aabb_on[key]

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``[..., 3]`` positions in ``[0, 1]^3`` and ``[...]`` bool: inside the modelled region."""
        if self.kind == "linf":
            u = (contract_linf(x) + 2.0) / 4.0
        else:
            lo, hi = self.box(x)
            u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(-1)
        return u, inside

    def inverse(self, u: Tensor) -> Tensor:
        """``[..., 3]`` in ``[0, 1]^3`` back to canonical positions."""
        if self.kind == "linf":
            return uncontract_linf(u * 4.0 - 2.0)
        lo, hi = self.box(u)
        return lo + u * (hi - lo)
