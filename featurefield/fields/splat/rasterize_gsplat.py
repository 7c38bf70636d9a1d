"""The gsplat path: the same call as :func:`featurefield.fields.splat.rasterize_torch.rasterize`, on CUDA.

gsplat compiles its CUDA kernels on first use (about a minute) and only for CUDA tensors; importing it
on a CPU-only machine is fine. Any channel count works: gsplat pads or chunks channel counts it has no
kernel for, so the embedding size never needs a recompile.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError

# channel counts gsplat 1.5.3 compiles its rasterization kernels for; others are padded to a power of two. Read
# from gsplat's build (its CUDA sources list them), so pyproject.toml pins gsplat to the 1.5 series: a newer one may
# compile other counts, and the chunking below would then pick sizes it pads.
NATIVE_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)


def padded(channels: int) -> int:
    """The channels gsplat rasterizes for ``channels``: the count itself if compiled, else the next power of two."""
    return channels if channels in NATIVE_CHANNELS else 1 << (channels - 1).bit_length()


def channel_chunk(channels: int) -> int:
    """gsplat's ``channel_chunk`` for ``channels`` rasterized channels (depth included).

    gsplat pads a count it has no kernel for to the next power of two (19 -> 32), but rasterizes
    chunks of ``channel_chunk`` channels from one projection and one tile sort. Chunks at the largest
    power of two below the count (19 -> 16 + 3) are kept where padding would rasterize more channels
    than they do; where it would not (14 -> 16, against 8 + 8 with the 6 padded), one padded pass is
    cheaper: fewer kernels for the same channels.
    """
    if channels in NATIVE_CHANNELS:
        return channels
    chunk = 1 << (channels.bit_length() - 1)
    rest = channels - chunk
    return channels if padded(channels) <= chunk + padded(rest) else chunk


def available() -> bool:
    """gsplat importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmat: Tensor,
              K: Tensor, width: int, height: int, background: Tensor | None = None, *, near_plane: float = 0.01,
              far_plane: float = 1e10, eps2d: float = 0.3, expected_depth: bool = True, packed: bool = False,
              absgrad: bool = False, antialiased: bool = False, **_: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render one camera with ``gsplat.rasterization`` (shapes as in the torch twin).

    Returns:
        render ``[H, W, C (+1 expected depth)]``, alpha ``[H, W, 1]``, gsplat's ``info`` dict.
    """
    try:
        from gsplat import rasterization
    except ImportError as e:  # pragma: no cover - depends on the install
        raise FeatureFieldError("gsplat is not installed; `pip install gsplat>=1.5.3` or use --splat.rasterizer torch") from e
    render, alpha, info = rasterization(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
        viewmats=viewmat[None], Ks=K[None], width=width, height=height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        backgrounds=None if background is None else background[None],
        render_mode="RGB+ED" if expected_depth else "RGB",
        packed=packed, absgrad=absgrad, rasterize_mode="antialiased" if antialiased else "classic",
        channel_chunk=channel_chunk(colors.shape[-1] + int(expected_depth)),
    )
    return render[0], alpha[0], info
