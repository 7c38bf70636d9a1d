"""GPU benchmark of the Gaussian rasterizers (needs CUDA and gsplat).

1. Parity: our plain-PyTorch twin vs gsplat, forward (colour + embedding + expected depth, alpha) and
   gradients of every input, on a random scene of realistic density.
2. Timings (CUDA events, warm-up, medians), one training-style step (forward + backward) at 800x800:
   RGB only; RGB + E-channel embedding in one pass vs two passes; E = 8/16/32/64.
3. Rendering at 1920x1080 (forward only): decoded 256-D features via an E-channel embedding and our
   linear decoder (decode late) vs rasterizing the full 256-D features directly.

Usage: python bench/splat_raster.py [--gaussians 300000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.cuda_timing import median_ms  # noqa: E402 (bench/ is on sys.path when run as a script)

from featurefield.fields.splat import rasterize_gsplat, rasterize_torch  # noqa: E402


def random_scene(n: int, width: int, height: int, channels: int, device, seed: int = 0):
    """Gaussians in a unit box seen from distance 4 (lego-like framing: f = 1.39 x width)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5 + math.log(0.012 * (100_000 / n) ** (1 / 3)))
    quats = torch.randn(n, 4, generator=g)
    opac = torch.sigmoid(torch.randn(n, generator=g))
    colors = torch.rand(n, channels, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 4.0
    f = 1.39 * width
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return [t.to(device) for t in (means, quats, scales, opac, colors, viewmat, K)]


def timed(fn, warmup: int = 5, reps: int = 20) -> float:
    return median_ms(fn, warmup, reps)


def parity(n: int = 30_000, width: int = 256, height: int = 192, channels: int = 19) -> dict:
    dev = "cuda"
    inputs = random_scene(n, width, height, channels, dev, seed=1)
    bg = torch.rand(channels, device=dev)
    results = {}
    outs = {}
    for name, mod in (("torch", rasterize_torch), ("gsplat", rasterize_gsplat)):
        leaves = [t.clone().requires_grad_(i < 5) for i, t in enumerate(inputs)]
        render, alpha, _ = mod.rasterize(*leaves[:5], leaves[5], leaves[6], width, height, bg)
        torch.manual_seed(7)
        w = torch.randn(render.shape, device=dev)
        wa = torch.randn(alpha.shape, device=dev)
        ((render * w).sum() + (alpha * wa).sum()).backward()
        outs[name] = (render.detach(), alpha.detach(), [leaves[i].grad for i in range(5)])
    (rt, at, gt), (rg, ag, gg) = outs["torch"], outs["gsplat"]
    results["render_max_abs"] = float((rt - rg).abs().max())
    results["render_mean_abs"] = float((rt - rg).abs().mean())
    results["alpha_max_abs"] = float((at - ag).abs().max())
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), gt, gg):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        results[f"grad_{name}_rel_l2"] = rel
        results[f"grad_{name}_cos"] = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    results["setup"] = f"{n} Gaussians, {width}x{height}, {channels}+1 channels"
    return results


def training_timings(n: int, size: int = 800) -> dict:
    from gsplat import rasterization

    from featurefield.fields.splat.rasterize_gsplat import channel_chunk

    dev = "cuda"
    means, quats, scales, opac, _, viewmat, K = random_scene(n, size, size, 3, dev)
    sh = torch.randn(n, 16, 3, device=dev) * 0.1
    out = {}

    def params(*ts):
        return [t.detach().clone().requires_grad_(True) for t in ts]

    def step_rgb():
        m, q, s, o, c = params(means, quats, scales, opac, sh)
        r, a, _ = rasterization(m, q, s, o, c, viewmat[None], K[None], size, size, sh_degree=3)
        r.sum().backward()

    out["rgb_sh3_ms"] = timed(step_rgb)
    for E in (8, 16, 32, 64):
        emb = torch.randn(n, E, device=dev)

        def step_joint():
            m, q, s, o, c, e = params(means, quats, scales, opac, sh[:, 0], emb)
            r, a, _ = rasterization(m, q, s, o, torch.cat([c, e], -1), viewmat[None], K[None], size, size,
                                    render_mode="RGB+ED")
            r.sum().backward()

        def step_chunked():  # what the field trains with now: no depth channel, compiled-size chunks
            m, q, s, o, c, e = params(means, quats, scales, opac, sh[:, 0], emb)
            r, a, _ = rasterization(m, q, s, o, torch.cat([c, e], -1), viewmat[None], K[None], size, size,
                                    channel_chunk=channel_chunk(3 + E))
            r.sum().backward()

        def step_two():
            m, q, s, o, c, e = params(means, quats, scales, opac, sh, emb)
            r, a, _ = rasterization(m, q, s, o, c, viewmat[None], K[None], size, size, sh_degree=3, render_mode="RGB+ED")
            r2, _, _ = rasterization(m, q, s, o, e, viewmat[None], K[None], size, size)
            (r.sum() + r2.sum()).backward()

        out[f"rgb+emb{E}_one_pass_ms"] = timed(step_joint)
        out[f"rgb+emb{E}_one_pass_chunked_ms"] = timed(step_chunked)
        out[f"rgb+emb{E}_two_pass_ms"] = timed(step_two)
    out["setup"] = f"{n} Gaussians, {size}x{size}, forward+backward"
    return out


@torch.no_grad()
def render_timings(n: int = 200_000, width: int = 1920, height: int = 1080, D: int = 256) -> dict:
    from gsplat import rasterization

    from featurefield.fields.splat.rasterize_gsplat import channel_chunk

    dev = "cuda"
    means, quats, scales, opac, _, viewmat, K = random_scene(n, width, height, 3, dev)
    out = {}
    full = torch.randn(n, D, device=dev)

    def direct():
        r, _, _ = rasterization(means, quats, scales, opac, full, viewmat[None], K[None], width, height)
        return r

    out[f"direct_{D}d_ms"] = timed(direct, reps=10)
    for E in (8, 14, 16, 32, 64):
        emb = torch.randn(n, E + 3, device=dev)
        W, b = torch.randn(E, D, device=dev), torch.randn(D, device=dev)

        def late():
            r, _, _ = rasterization(means, quats, scales, opac, emb, viewmat[None], K[None], width, height,
                                    render_mode="RGB+ED")
            return torch.addmm(b, r[0, ..., 3:3 + E].reshape(-1, E), W)  # [H*W, D]

        def late_half():
            r, _, _ = rasterization(means, quats, scales, opac, emb, viewmat[None], K[None], width, height,
                                    render_mode="RGB+ED")
            return torch.addmm(b.half(), r[0, ..., 3:3 + E].reshape(-1, E).half(), W.half())

        def late_chunked():
            r, _, _ = rasterization(means, quats, scales, opac, emb, viewmat[None], K[None], width, height,
                                    render_mode="RGB+ED", channel_chunk=channel_chunk(E + 4))
            return torch.addmm(b, r[0, ..., 3:3 + E].reshape(-1, E), W)

        out[f"rgb+emb{E}+decode{D}_ms"] = timed(late, reps=10)
        out[f"rgb+emb{E}+decode{D}_chunked_ms"] = timed(late_chunked, reps=10)
        out[f"rgb+emb{E}+decode{D}_fp16_ms"] = timed(late_half, reps=10)
    out["setup"] = f"{n} Gaussians, {width}x{height}, forward only"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gaussians", type=int, default=300_000)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/splat_raster.py needs a CUDA GPU")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import gsplat

    res["gsplat"] = gsplat.__version__
    res["parity"] = parity()
    print(json.dumps(res["parity"], indent=1), flush=True)
    res["training"] = training_timings(args.gaussians)
    print(json.dumps(res["training"], indent=1), flush=True)
    res["render"] = render_timings()
    print(json.dumps(res["render"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
