"""A fused Triton kernel for the generalizable field's trunk at inference (the hot loop of :func:`~.marching.march_view`).

The plain trunk (:meth:`~.model.GeneralField.run_trunk`) writes and reads every layer's activations:
per point and residual block a ReLU, two matrix products with their bias and ReLU, and the residual
add, each a pass over ``[M, width]`` in memory (~30 KB per point at width 256 in fp16): memory-bound on a
GPU. This kernel keeps a block of points' residual stream on chip through all the blocks: per point it
reads the input layer's output and the conditioning terms and writes the trunk's output (and the
descriptor, if asked), ~2.5 KB; the weights are read from L2. Each layer's input goes through a small
per-program scratch (L2-resident) so the products run as the usual K-chunked ``tl.dot`` loop.

Runs on CUDA; under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors (used by the tests).
The width must be a power of two (16 or more); :class:`FusedTrunk` falls back to the plain trunk otherwise,
or when the kernel cannot build on the device (``error`` says why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.profiler import record_function

from featurefield.fields.general.model import FoldedConditioning, GeneralField, positional_encoding


@triton.jit
def _layer(scr_ptr, w_ptr, rows_local, cols, ks, BM: tl.constexpr, W: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr):
    """``scratch [BM, W] @ w [W, W]`` (``w`` stored input-major) in K-chunks, fp32 accumulator."""
    acc = tl.zeros((BM, W), dtype=tl.float32)
    for kk in tl.static_range(0, W, BK):
        a = tl.load(scr_ptr + rows_local[:, None] * W + (kk + ks)[None, :])
        b = tl.load(w_ptr + (kk + ks)[:, None] * W + cols[None, :])
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    return acc


@triton.jit
def _trunk_kernel(x0_ptr, terms_ptr, tbias_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, h_ptr, desc_ptr, scratch_ptr, M,
                  W: tl.constexpr, BLOCKS: tl.constexpr, COND: tl.constexpr, DESC: tl.constexpr, BM: tl.constexpr,
                  BK: tl.constexpr, IEEE: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, W)
    ks = tl.arange(0, BK)
    local = tl.arange(0, BM)
    scr = scratch_ptr + pid * BM * W  # this program's [BM, W] scratch, reused for every block of points
    dtype = scratch_ptr.dtype.element_ty
    for start in range(pid * BM, M, nprog * BM):  # persistent: a fixed grid walks over all points
        rows = start + local
        rmask = rows < M
        h = tl.load(x0_ptr + rows[:, None] * W + cols[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
        for k in tl.static_range(BLOCKS):
            if k < COND:
                t = tl.load(terms_ptr + rows[:, None] * (COND * W) + k * W + cols[None, :], mask=rmask[:, None], other=0.0)
                h += t.to(tl.float32) + tl.load(tbias_ptr + k * W + cols).to(tl.float32)[None, :]
            # a = relu(fc0(relu(h)))
            tl.debug_barrier()  # the scratch's last readers are done
            tl.store(scr + local[:, None] * W + cols[None, :], tl.maximum(h, 0.0).to(dtype))
            tl.debug_barrier()  # its writes are visible to the whole program
            a = _layer(scr, w0_ptr + k * W * W, local, cols, ks, BM, W, BK, IEEE)
            a = tl.maximum(a + tl.load(b0_ptr + k * W + cols).to(tl.float32)[None, :], 0.0)
            tl.debug_barrier()
            tl.store(scr + local[:, None] * W + cols[None, :], a.to(dtype))
            tl.debug_barrier()
            # h += fc1(a)
            h += _layer(scr, w1_ptr + k * W * W, local, cols, ks, BM, W, BK, IEEE)
            h += tl.load(b1_ptr + k * W + cols).to(tl.float32)[None, :]
            if k + 1 == DESC:
                tl.store(desc_ptr + rows[:, None] * W + cols[None, :], h.to(desc_ptr.dtype.element_ty), mask=rmask[:, None])
        tl.store(h_ptr + rows[:, None] * W + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=rmask[:, None])


class FusedTrunk:
    """The trunk of :func:`~.marching.march_rays` through :func:`_trunk_kernel` (same signature as its plain twin,
    :func:`~.marching.plain_trunk`): ``(field, points [M, 3], folded, descriptor) -> (h [M, W], descriptor or None)``.

    Args:
        field: the field (its weights are copied once, in ``dtype``; make a new one after changing them).
        dtype: of the weights, scratch and outputs (``torch.float16`` on a GPU; ``float32`` for exact checks).
        block: points per program (each program reads every layer's weights once per block of points from L2:
            larger blocks read less, but hold ``2 * block * width`` fp32 values in registers).
        programs: the persistent grid's size (default: 4 per multiprocessor). warps: per program (default 8, 16 from
            128 points).
    """

    def __init__(self, field: GeneralField, dtype: torch.dtype = torch.float16, block: int = 64, programs: int | None = None,
                 warps: int | None = None) -> None:
        cfg = field.config
        self.field, self.dtype, self.block = field, dtype, block
        self.warps = warps or (16 if block >= 128 else 8)
        self.error: str | None = None
        w = cfg.width
        if w < 16 or w & (w - 1):
            self.error = f"width {w} is not a power of two >= 16"
        with torch.no_grad():
            self.w0 = torch.stack([b.fc0.weight.T for b in field.trunk]).to(dtype).contiguous()  # [blocks, in, out]
            self.w1 = torch.stack([b.fc1.weight.T for b in field.trunk]).to(dtype).contiguous()
            self.b0 = torch.stack([b.fc0.bias for b in field.trunk]).float().contiguous()
            self.b1 = torch.stack([b.fc1.bias for b in field.trunk]).float().contiguous()
            self.tbias = (torch.cat([c.bias for c in field.cond]) if len(field.cond) else torch.zeros(1, device=field.device)).float()
        dev = field.device
        if programs is None:
            programs = 4 * torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4
        self.programs = programs

    def __call__(self, field: GeneralField, points: Tensor, folded: FoldedConditioning, descriptor: bool) -> tuple[Tensor, Tensor | None]:
        if self.error is None:
            try:
                return self._fused(points, folded, descriptor)
            except Exception as err:  # noqa: BLE001 - a kernel that cannot build here: the plain trunk from now on
                self.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        from featurefield.fields.general.marching import plain_trunk

        return plain_trunk(field, points, folded, descriptor)

    def _fused(self, points: Tensor, folded: FoldedConditioning, descriptor: bool) -> tuple[Tensor, Tensor | None]:
        fld, cfg = self.field, self.field.config
        M, W = points.shape[0], cfg.width
        with record_function("general/pixel_aligned"):
            parts = fld.folded_terms(points[None], folded, bias=False)  # [M, n * W] (or none)
            terms = parts[0].to(self.dtype).contiguous() if parts else self.tbias
        with record_function("general/trunk"):
            x0 = F.linear(positional_encoding(points / cfg.bound, cfg.frequencies), fld.inp.weight, fld.inp.bias)
            x0 = x0.to(self.dtype).contiguous()
            h = torch.empty(M, W, device=points.device, dtype=self.dtype)
            desc = torch.empty(M, W, device=points.device, dtype=self.dtype) if descriptor else h
            grid = max(1, min(self.programs, triton.cdiv(M, self.block)))
            scratch = torch.empty(grid * self.block * W, device=points.device, dtype=self.dtype)
            _trunk_kernel[(grid,)](x0, terms, self.tbias, self.w0, self.b0, self.w1, self.b1, h, desc, scratch, M,
                                   W=W, BLOCKS=cfg.blocks, COND=len(fld.cond), DESC=cfg.descriptor_block if descriptor else 0,
                                   BM=self.block, BK=min(64, W), IEEE=self.dtype == torch.float32, num_warps=self.warps)
        return h, (desc if descriptor else None)
