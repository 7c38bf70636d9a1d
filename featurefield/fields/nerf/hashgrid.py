"""Multiresolution hash encoding (Instant-NGP), in plain PyTorch, with a fused Triton twin on CUDA.

A point ``x`` in ``[0, 1]^3`` is looked up in ``L`` grids of growing resolution. At level ``l`` the
grid has resolution ``R_l = floor(R_min * b^l)`` with ``b = exp((ln R_max - ln R_min) / (L - 1))``;
the 8 vertices of the cell holding ``x * R_l`` index a table of ``T`` feature vectors (``F``
features each) and their features are blended trilinearly. Coarse levels whose ``(R_l + 1)^3``
vertices fit in the table index it densely (one entry per vertex); finer ones hash the integer
vertex ``(i, j, k)`` as ``(i * 1) xor (j * 2654435761) xor (k * 805459861) mod T`` (``T`` a power
of two, arithmetic on 32-bit words).

The table is one parameter ``[L, T, F]``; the encoding is ``[N, L * F]``, level-major.
:func:`hash_encode_torch` is the reference (autograd gives the backward);
:func:`hash_encode_scatter` computes the same with a hand-written table gradient (the CPU path);
:mod:`featurefield.fields.nerf.hashgrid_triton` is the fused kernel used on CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from featurefield.errors import FeatureFieldError

PRIMES = (1, 2654435761, 805459861)

#: corner offsets of a cell, ``[8, 3]``, corner ``c`` has bits ``(c & 1, c >> 1 & 1, c >> 2 & 1)``.
CORNERS = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64)


def level_resolutions(num_levels: int, min_res: int, max_res: int) -> list[int]:
    """Grid resolution of each level, ``floor(min_res * growth^l)`` (nerfstudio's rule)."""
    if num_levels == 1:
        return [int(min_res)]
    growth = math.exp((math.log(max_res) - math.log(min_res)) / (num_levels - 1))
    return [int(math.floor(min_res * growth**l)) for l in range(num_levels)]


def hash_encode_torch(x: Tensor, table: Tensor, resolutions: Tensor, dense: Tensor) -> Tensor:
    """Reference hash encoding; differentiable w.r.t. ``table`` (and ``x``).

    Args:
        x: ``[N, 3]`` points in ``[0, 1]^3`` (clamped).
        table: ``[L, T, F]`` feature table.
        resolutions: ``[L]`` int64 grid resolution per level.
        dense: ``[L]`` bool, level indexed densely (``(R + 1)^3 <= T``).
    Returns:
        ``[N, L * F]`` encoding in the table's dtype promoted with ``x``'s.
    """
    L, T, F = table.shape
    N = x.shape[0]
    x = x.clamp(0.0, 1.0)
    res = resolutions.to(x.device)
    pos = x[:, None, :] * res[None, :, None].to(x.dtype)  # [N, L, 3]
    cell = torch.floor(pos).to(torch.int64)
    cell = torch.minimum(cell, res[None, :, None] - 1).clamp_min(0)  # x == 1 stays in the last cell
    frac = pos - cell.to(pos.dtype)  # [N, L, 3]
    # per axis, the two vertex coordinates and their 1-D weights: [N, L, 3, 2]
    vert = cell[..., None] + torch.tensor([0, 1], device=x.device)
    w1 = torch.stack([1 - frac, frac], -1)
    # corner c = bx + 2 by + 4 bz: outer products laid out [bz, by, bx] flatten to c
    wx, wy, wz = w1[:, :, 0, None, None, :], w1[:, :, 1, None, :, None], w1[:, :, 2, :, None, None]
    w = (wx * wy * wz).reshape(N, L, 8)
    vx, vy, vz = vert[:, :, 0, None, None, :], vert[:, :, 1, None, :, None], vert[:, :, 2, :, None, None]
    stride = (res + 1)[None, :, None, None, None]
    dense_idx = vx + vy * stride + vz * (stride * stride)
    hashed = (vx * PRIMES[0]) ^ (vy * PRIMES[1]) ^ (vz * PRIMES[2])
    idx = torch.where(dense.to(x.device)[None, :, None, None, None], dense_idx, hashed) & (T - 1)
    idx = idx.reshape(N, L, 8) + (torch.arange(L, device=x.device) * T)[None, :, None]
    feats = table.reshape(L * T, F)[idx]  # [N, L, 8, F]
    out = (feats * w[..., None].to(feats.dtype)).sum(2)  # [N, L, F]
    return out.reshape(N, L * F)


class _GatherScatter(torch.autograd.Function):
    """``out[n, l * F + f] = sum_c w[l, c, n] * table[l, idx[l, c, n] - l * T, f]`` with a scatter-add backward
    for the table (no gradient for ``w``). ``idx`` and ``w`` are ``[L, 8, N]``: points last, so every
    elementwise op runs over long contiguous rows."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        L, T, F = table.shape
        N = idx.shape[-1]
        flat = idx.reshape(-1)
        rows = table.detach().reshape(L * T, F)
        out = torch.empty(L, F, N, dtype=torch.result_type(table, w), device=w.device)
        for f in range(F):  # 1-D gathers of one feature: much faster on CPU than gathering [.., F] rows
            torch.sum(rows[:, f].index_select(0, flat).reshape(L, 8, N) * w, 1, out=out[:, f])
        ctx.save_for_backward(idx, w)
        ctx.table_shape, ctx.table_dtype = (L, T, F), table.dtype
        return out.permute(2, 0, 1).reshape(N, L * F)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        idx, w = ctx.saved_tensors
        L, T, F = ctx.table_shape
        N = idx.shape[-1]
        g = grad_out.reshape(N, L, F).permute(1, 2, 0).contiguous()  # [L, F, N]
        flat = idx.reshape(-1)
        grad = torch.zeros(F, L * T, dtype=ctx.table_dtype, device=w.device)
        for f in range(F):
            grad[f].scatter_add_(0, flat, (w * g[:, f, None, :]).reshape(-1).to(ctx.table_dtype))
        return grad.t().reshape(L, T, F), None, None


def hash_encode_scatter(x: Tensor, table: Tensor, resolutions: Tensor, dense: Tensor) -> Tensor:
    """:func:`hash_encode_torch` computed points-last with a hand-written table gradient; no gradient w.r.t. ``x``.

    Several times faster on CPU: broadcasting over tiny trailing dimensions (the reference's ``[N, L, 8]``
    layout) is what makes PyTorch's CPU kernels slow. The hash multiplies by the primes mod ``T`` (the low
    bits of a product only depend on the low bits of its factors) and masks each axis term before the xor;
    dense levels must come first (they do: resolutions grow with the level).

    Args:
        x: ``[N, 3]`` points in ``[0, 1]^3`` (clamped); table: ``[L, T, F]``;
        resolutions: ``[L]`` int64; dense: ``[L]`` bool.
    Returns:
        ``[N, L * F]`` in the table's dtype promoted with ``x``'s.
    """
    L, T, F = table.shape
    N, dev = x.shape[0], x.device
    res_list, dense_list = resolutions.tolist(), dense.tolist()
    nd = int(sum(dense_list))
    if any(dense_list[nd:]):
        raise ValueError("hash_encode_scatter needs the dense levels first")
    resf = resolutions.to(dev, x.dtype)
    pos = x.detach().clamp(0.0, 1.0).t().contiguous()[None] * resf[:, None, None]  # [L, 3, N]
    cell = torch.minimum(pos.floor(), (resf - 1)[:, None, None])  # x == 1 stays in the last cell
    frac = pos - cell
    # corner c = bx + 2 by + 4 bz: outer products laid out [bz, by, bx] flatten to c
    w1 = torch.stack([1 - frac, frac], 2)  # [L, 3, 2, N]
    w = (w1[:, 2, :, None, None] * (w1[:, 1, None, :, None] * w1[:, 0, None, None, :])).reshape(L, 8, N)
    # per-axis vertex terms [L, 3, 2, N]: coordinate times (1, R + 1, (R + 1)^2) on dense levels, a prime on hashed ones
    mult = torch.tensor([[1, r + 1, (r + 1) ** 2] if l < nd else [p % T for p in PRIMES] for l, r in enumerate(res_list)],
                        dtype=torch.int64, device=dev)[:, :, None]
    t0 = cell.long() * mult
    terms = torch.stack([t0, t0 + mult], 2)
    terms[nd:] &= T - 1  # (a ^ b ^ c) mod T == (a mod T) ^ (b mod T) ^ (c mod T), T a power of two
    terms[:, 0] += (torch.arange(L, device=dev) * T)[:, None, None]  # level offset, bits above the index's
    idx = torch.empty(L, 2, 2, 2, N, dtype=torch.int64, device=dev)
    if nd:
        a = terms[:nd]
        torch.add(a[:, 2, :, None, None], a[:, 1, None, :, None] + a[:, 0, None, None, :], out=idx[:nd])
    if nd < L:
        a = terms[nd:]
        torch.bitwise_xor(a[:, 2, :, None, None], a[:, 1, None, :, None] ^ a[:, 0, None, None, :], out=idx[nd:])
    return _GatherScatter.apply(table, idx.reshape(L, 8, N), w)


def triton_available() -> bool:
    """True when Triton imports (it needs a CUDA GPU at run time, or ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


class HashGrid(nn.Module):
    """A learnable multiresolution hash encoding.

    Args:
        num_levels: ``L``.
        features_per_level: ``F``.
        log2_table_size: ``log2 T`` (entries per level).
        min_res, max_res: coarsest and finest grid resolution.
        backend: ``"auto"`` (Triton on CUDA, else PyTorch), ``"torch"`` or ``"triton"``.
        table_dtype: ``"float32"`` or ``"float16"``: the dtype the kernel reads the table in
            (parameters and gradients stay fp32).
        init_scale: the table starts uniform in ``[-init_scale, init_scale]`` (tiny-cuda-nn: 1e-4).
    """

    def __init__(self, num_levels: int = 16, features_per_level: int = 2, log2_table_size: int = 19,
                 min_res: int = 16, max_res: int = 2048, backend: str = "auto", table_dtype: str = "float32",
                 init_scale: float = 1e-4) -> None:
        super().__init__()
        if backend not in ("auto", "torch", "triton"):
            raise FeatureFieldError(f"unknown hash-grid backend {backend!r}; expected auto, torch or triton")
        if table_dtype not in ("float32", "float16"):
            raise FeatureFieldError(f"unknown hash-table dtype {table_dtype!r}; expected float32 or float16")
        self.num_levels, self.features_per_level = num_levels, features_per_level
        self.table_size = 2**log2_table_size
        self.backend, self.table_dtype = backend, table_dtype
        res = level_resolutions(num_levels, min_res, max_res)
        self.register_buffer("resolutions", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("dense", torch.tensor([(r + 1) ** 3 <= self.table_size for r in res]), persistent=False)
        self.table = nn.Parameter(torch.empty(num_levels, self.table_size, features_per_level).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def use_triton(self, x: Tensor) -> bool:
        if self.backend == "torch" or x.requires_grad:  # the kernel has no gradient w.r.t. positions
            return False
        if self.backend == "triton":
            if not triton_available():
                raise FeatureFieldError("hash-grid backend 'triton' asked for but triton is not installed; "
                                        "use --nerf.hashgrid-backend torch")
            return True
        return x.is_cuda and triton_available()

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3]`` points in ``[0, 1]^3`` -> ``[N, L * F]`` fp32 features."""
        if self.use_triton(x):
            from featurefield.fields.nerf.hashgrid_triton import hash_encode_triton

            return hash_encode_triton(x, self.table, self.resolutions, self.dense, self.table_dtype)
        table = fp16_rounded(self.table) if self.table_dtype == "float16" else self.table
        if x.device.type == "cpu" and not x.requires_grad:
            return hash_encode_scatter(x.float(), table, self.resolutions, self.dense)
        return hash_encode_torch(x.float(), table, self.resolutions, self.dense)


def fp16_rounded(table: Tensor) -> Tensor:
    """``table`` with values rounded to fp16 and an exact fp32 gradient (what the fp16 kernel computes)."""
    return table + (table.detach().half().float() - table.detach())

