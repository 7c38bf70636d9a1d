"""Fused Triton kernels for the multiresolution hash encoding (forward and backward).

One program handles ``BLOCK`` points of one level: it loads the points, finds the 8 cell vertices,
indexes the table (dense or hashed exactly as :func:`~featurefield.fields.nerf.hashgrid.hash_encode_torch`),
and blends their features trilinearly in registers; nothing ``[N, L, 8, F]``-sized ever reaches
memory. The backward recomputes indices and weights and scatters ``w * dL/dout`` into an fp32 table
gradient with atomic adds; runs of consecutive points in one cell (samples along a ray, at the coarse
levels) are summed first, so such a run costs one atomic add per corner instead of one per point.
The table may be read as fp16 (half the bytes of the gathers); gradients are always accumulated in
fp32 and returned for the fp32 parameter.

Runs on CUDA; under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (used by the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from featurefield.errors import warn

BLOCK = 128
_aggregate_failed: list[str] = []  # the reason, once the run-summing backward failed to build on this device


@triton.jit
def _vertex(ix, iy, iz, fx, fy, fz, res, is_dense, lvl, T, C: tl.constexpr):
    """Table row and trilinear weight of corner ``C`` of each point's cell."""
    bx: tl.constexpr = C & 1
    by: tl.constexpr = (C >> 1) & 1
    bz: tl.constexpr = (C >> 2) & 1
    vx = ix + bx
    vy = iy + by
    vz = iz + bz
    wx = fx * bx + (1.0 - fx) * (1 - bx)
    wy = fy * by + (1.0 - fy) * (1 - by)
    wz = fz * bz + (1.0 - fz) * (1 - bz)
    stride = res + 1
    dense_idx = vx + vy * stride + vz * stride * stride
    hashed = (vx * 1) ^ (vy * 2654435761) ^ (vz * 805459861)
    idx = tl.where(is_dense, dense_idx, hashed) & (T - 1)
    return lvl * T + idx, wx * wy * wz


@triton.jit
def _cell(x_ptr, offs, mask, res):
    """Integer cell corner (int64) and fractional position (fp32) of each point at resolution ``res``."""
    resf = res.to(tl.float32)
    px = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 0, mask=mask, other=0.0), 0.0), 1.0) * resf
    py = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 1, mask=mask, other=0.0), 0.0), 1.0) * resf
    pz = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 2, mask=mask, other=0.0), 0.0), 1.0) * resf
    cx = tl.maximum(tl.minimum(tl.floor(px), resf - 1.0), 0.0)
    cy = tl.maximum(tl.minimum(tl.floor(py), resf - 1.0), 0.0)
    cz = tl.maximum(tl.minimum(tl.floor(pz), resf - 1.0), 0.0)
    return cx.to(tl.int64), cy.to(tl.int64), cz.to(tl.int64), px - cx, py - cy, pz - cz


@triton.jit
def _hash_fwd(x_ptr, table_ptr, res_ptr, dense_ptr, out_ptr, N, T, L,
              F: tl.constexpr, BLOCK: tl.constexpr):
    lvl = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    res = tl.load(res_ptr + lvl)
    is_dense = tl.load(dense_ptr + lvl) != 0
    ix, iy, iz, fx, fy, fz = _cell(x_ptr, offs, mask, res)
    fo = tl.arange(0, F)
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    for c in tl.static_range(8):
        row, w = _vertex(ix, iy, iz, fx, fy, fz, res, is_dense, lvl, T, c)
        feat = tl.load(table_ptr + row[:, None] * F + fo[None, :], mask=mask[:, None], other=0.0)
        acc += w[:, None] * feat.to(tl.float32)
    offs64 = offs.to(tl.int64)
    tl.store(out_ptr + offs64[:, None] * (L * F) + lvl * F + fo[None, :], acc, mask=mask[:, None])


@triton.jit
def _segment_sum(a, a_start, b, b_start):
    """Combine of a segmented inclusive scan: a sum that restarts where an element starts a segment."""
    return tl.where(b_start != 0, b, a + b), a_start | b_start


@triton.jit
def _hash_bwd(x_ptr, grad_out_ptr, res_ptr, dense_ptr, grad_table_ptr, N, T, L,
              F: tl.constexpr, BLOCK: tl.constexpr, AGGREGATE: tl.constexpr):
    lvl = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    res = tl.load(res_ptr + lvl)
    is_dense = tl.load(dense_ptr + lvl) != 0
    ix, iy, iz, fx, fy, fz = _cell(x_ptr, offs, mask, res)
    fo = tl.arange(0, F)
    offs64 = offs.to(tl.int64)
    g = tl.load(grad_out_ptr + offs64[:, None] * (L * F) + lvl * F + fo[None, :], mask=mask[:, None], other=0.0)
    g = g.to(tl.float32)
    if AGGREGATE:
        # Consecutive points are consecutive samples of a ray and often share a cell at the coarser levels,
        # where every point's atomics otherwise queue on the same few table rows. A run of points in one
        # cell is summed in registers (segmented scan) and its last point adds the sum, once per corner.
        first = (offs % BLOCK) == 0
        last = ((offs % BLOCK) == BLOCK - 1) | (offs == N - 1)
        px, py, pz, _pfx, _pfy, _pfz = _cell(x_ptr, offs - 1, mask & ~first, res)
        nx, ny, nz, _nfx, _nfy, _nfz = _cell(x_ptr, offs + 1, mask & ~last, res)
        start = first | (px != ix) | (py != iy) | (pz != iz)
        end = last | (nx != ix) | (ny != iy) | (nz != iz)
        runs = tl.sum((start & mask).to(tl.int32), axis=0) < tl.sum(mask.to(tl.int32), axis=0)
    else:
        start = offs >= 0
        end = start
        runs = False
    if runs:
        start2 = tl.broadcast_to(start.to(tl.int32)[:, None], (BLOCK, F))
        keep = (mask & end)[:, None]
        for c in tl.static_range(8):
            row, w = _vertex(ix, iy, iz, fx, fy, fz, res, is_dense, lvl, T, c)
            total, _starts = tl.associative_scan((w[:, None] * g, start2), 0, _segment_sum)
            tl.atomic_add(grad_table_ptr + row[:, None] * F + fo[None, :], total, mask=keep)
    else:
        for c in tl.static_range(8):
            row, w = _vertex(ix, iy, iz, fx, fy, fz, res, is_dense, lvl, T, c)
            tl.atomic_add(grad_table_ptr + row[:, None] * F + fo[None, :], w[:, None] * g, mask=mask[:, None])


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, resolutions: Tensor, dense: Tensor, table_dtype: str,
                aggregate: bool) -> Tensor:
        L, T, F = table.shape
        x = x.detach().float().contiguous()
        N = x.shape[0]
        tab = table.detach()
        tab = (tab.half() if table_dtype == "float16" else tab.float()).contiguous()
        res = resolutions.to(device=x.device, dtype=torch.int64).contiguous()
        dns = dense.to(device=x.device, dtype=torch.int32).contiguous()
        out = torch.empty(N, L * F, device=x.device, dtype=torch.float32)
        if N:
            _hash_fwd[(L, triton.cdiv(N, BLOCK))](x, tab, res, dns, out, N, T, L, F=F, BLOCK=BLOCK)
        ctx.save_for_backward(x, res, dns)
        ctx.shape, ctx.aggregate = (L, T, F), aggregate
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, res, dns = ctx.saved_tensors
        L, T, F = ctx.shape
        N = x.shape[0]
        grad_table = torch.zeros(L * T, F, device=x.device, dtype=torch.float32)
        if N:
            grad_out = grad_out.float().contiguous()
            aggregate = ctx.aggregate and not _aggregate_failed
            try:
                _hash_bwd[(L, triton.cdiv(N, BLOCK))](x, grad_out, res, dns, grad_table, N, T, L, F=F, BLOCK=BLOCK,
                                                      AGGREGATE=aggregate)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as err:  # a Triton that cannot build the scan here: the per-point kernel
                if not aggregate:
                    raise
                _aggregate_failed.append(repr(err))
                warn(f"hash-grid backward without run sums ({err!r:.200})")
                grad_table.zero_()
                _hash_bwd[(L, triton.cdiv(N, BLOCK))](x, grad_out, res, dns, grad_table, N, T, L, F=F, BLOCK=BLOCK,
                                                      AGGREGATE=False)
        return None, grad_table.view(L, T, F), None, None, None, None


def hash_encode_triton(x: Tensor, table: Tensor, resolutions: Tensor, dense: Tensor,
                       table_dtype: str = "float32", aggregate: bool = True) -> Tensor:
    """Fused hash encoding, same contract as :func:`~featurefield.fields.nerf.hashgrid.hash_encode_torch`.

    Args:
        x: ``[N, 3]`` points in ``[0, 1]^3`` (no gradient w.r.t. ``x``).
        table: ``[L, T, F]`` fp32 parameter.
        resolutions: ``[L]`` int64; dense: ``[L]`` bool.
        table_dtype: ``"float32"`` or ``"float16"`` (the dtype the kernel gathers in).
        aggregate: in the backward, sum runs of consecutive points in one cell before the atomic adds
            (the same gradient up to fp32 rounding; False: one atomic add per point, corner and feature).
    Returns:
        ``[N, L * F]`` fp32.
    """
    return _HashEncode.apply(x, table, resolutions, dense, table_dtype, aggregate)
