"""The plain-PyTorch Gaussian rasterizer: analytic single Gaussian, occlusion, gradients, and gsplat parity."""

from __future__ import annotations

import pytest
import torch

from featurefield.fields.splat import rasterize_torch as rt
from featurefield.fields.splat.sh import eval_sh, rgb_to_sh, sh_to_rgb
from tests.conftest import cuda


def _camera(size=32, f=40.0):
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return torch.eye(4), K


def test_single_gaussian_matches_analytic_2d_gaussian():
    viewmat, K = _camera()
    z, s, o = 4.0, 0.2, 0.8
    means = torch.tensor([[0.0, 0.0, z]])  # on the axis: the EWA Jacobian is f/z * I there
    img, alpha, info = rt.rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]),
                                    torch.ones(1, 1), viewmat, K, 32, 32, expected_depth=True)
    # EWA: isotropic sigma f*s/z pixels plus the 0.3 dilation, centred at the projected mean
    var = (40.0 * s / z) ** 2 + 0.3
    u0, v0 = 16.0, 16.0
    v, u = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    a = torch.clamp_max(o * torch.exp(-0.5 * ((u - u0) ** 2 + (v - v0) ** 2) / var), 0.999)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    assert torch.allclose(alpha[..., 0], a, atol=1e-5)
    assert torch.allclose(img[..., 0], a, atol=1e-5)
    covered = alpha[..., 0] > 0
    assert torch.allclose(img[..., 1][covered], torch.full_like(img[..., 1][covered], z), atol=1e-4)  # expected depth
    assert torch.allclose(info["means2d"][0, 0], torch.tensor([u0, v0]), atol=1e-5)
    off = torch.tensor([[0.4, -0.2, z]])
    _, _, info = rt.rasterize(off, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]),
                              torch.ones(1, 1), viewmat, K, 32, 32)
    assert torch.allclose(info["means2d"][0, 0], torch.tensor([16 + 40 * 0.4 / z, 16 - 40 * 0.2 / z]), atol=1e-5)


def test_front_gaussian_occludes_back_and_order_is_by_depth():
    viewmat, K = _camera()
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    scales = torch.full((2, 3), 0.5)
    opac = torch.tensor([0.99, 0.99])
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    for order in ([0, 1], [1, 0]):  # listing order must not matter, only depth
        means = torch.tensor([[0, 0, 3.0], [0, 0, 6.0]])[order]
        img, alpha, _ = rt.rasterize(means, quats, scales, opac, colors[order], viewmat, K, 32, 32, torch.zeros(3))
        centre = img[16, 16]
        assert centre[0] > 0.98 and centre[2] < 0.02, centre  # red (front) hides blue (back)
        assert centre[3] == pytest.approx(3.0, abs=0.05)


def test_background_and_culling_behind_camera():
    viewmat, K = _camera()
    means = torch.tensor([[0, 0, -2.0]])  # behind the camera: culled
    img, alpha, info = rt.rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.3), torch.tensor([0.9]),
                                    torch.ones(1, 2), viewmat, K, 32, 32, torch.tensor([0.2, 0.7]), expected_depth=False)
    assert (alpha == 0).all() and torch.allclose(img, torch.tensor([0.2, 0.7]).expand(32, 32, 2))
    assert (info["radii"] == 0).all()


def test_gradcheck_float64_tiny():
    torch.manual_seed(0)
    viewmat, K = _camera(size=12, f=14.0)
    viewmat, K = viewmat.double(), K.double()
    means = (torch.tensor([[0.05, 0.02, 3.0], [-0.1, 0.05, 3.5], [0.02, -0.08, 4.0]], dtype=torch.float64))
    quats = torch.randn(3, 4, dtype=torch.float64)
    log_scales = torch.log(torch.tensor([[0.3, 0.2, 0.25], [0.2, 0.35, 0.3], [0.4, 0.3, 0.2]], dtype=torch.float64))
    opac = torch.tensor([0.6, 0.5, 0.7], dtype=torch.float64)
    colors = torch.rand(3, 2, dtype=torch.float64)

    def f(m, q, ls, o, c):
        img, alpha, _ = rt.rasterize(m, q, torch.exp(ls), o, c, viewmat, K, 12, 12, torch.tensor([0.3, 0.1], dtype=torch.float64))
        return img, alpha

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, log_scales, opac, colors)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_sh_degree0_roundtrip_and_degree1_direction():
    rgb = torch.rand(5, 3)
    assert torch.allclose(sh_to_rgb(rgb_to_sh(rgb)), rgb, atol=1e-6)
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 2] = 1.0  # the z-aligned degree-1 basis (index 2 = +0.4886 z)
    up = eval_sh(1, torch.tensor([[0, 0, 1.0]]), coeffs)
    down = eval_sh(1, torch.tensor([[0, 0, -1.0]]), coeffs)
    assert up[0, 0] == pytest.approx(0.4886025, abs=1e-6) and down[0, 0] == pytest.approx(-0.4886025, abs=1e-6)


@cuda
def test_matches_gsplat_forward_and_gradients():
    pytest.importorskip("gsplat")
    from featurefield.fields.splat import rasterize_gsplat as rg

    torch.manual_seed(0)
    n, W, H, C = 3000, 96, 64, 7
    means = torch.rand(n, 3, device="cuda") * 2 - 1
    means[:, 2] += 4
    args = [means, torch.randn(n, 4, device="cuda"), torch.exp(torch.randn(n, 3, device="cuda") * 0.4 - 3.5),
            torch.sigmoid(torch.randn(n, device="cuda")), torch.rand(n, C, device="cuda")]
    K = torch.tensor([[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]], device="cuda")
    bg = torch.rand(C, device="cuda")
    outs = []
    for mod in (rt, rg):
        leaves = [a.clone().requires_grad_(True) for a in args]
        img, alpha, _ = mod.rasterize(*leaves, torch.eye(4, device="cuda"), K, W, H, bg)
        torch.manual_seed(1)
        (img * torch.randn_like(img)).sum().add((alpha * torch.randn_like(alpha)).sum()).backward()
        outs.append((img.detach(), alpha.detach(), [x.grad for x in leaves]))
    (i1, a1, g1), (i2, a2, g2) = outs
    # stated tolerance: mean abs image error < 1e-5, max < 5e-3 (fp32 order of operations near the
    # 1/255 threshold), gradients within 1e-3 relative L2 (measured ~1e-4 on an H100)
    assert (i1 - i2).abs().mean() < 1e-5 and (i1 - i2).abs().max() < 5e-3
    assert (a1 - a2).abs().max() < 5e-3
    for x, y in zip(g1, g2):
        assert float((x - y).norm() / y.norm()) < 1e-3


def test_gsplat_channel_chunks_rasterize_no_more_channels_than_padding():
    from featurefield.fields.splat.rasterize_gsplat import NATIVE_CHANNELS, channel_chunk, padded

    for channels in range(1, 300):
        chunk = channel_chunk(channels)
        if chunk == channels:  # one pass, padded by gsplat where no kernel is compiled for the count
            assert padded(channels) in NATIVE_CHANNELS
            if channels not in NATIVE_CHANNELS:  # chunking would have rasterized as many channels or more
                top = 1 << (channels.bit_length() - 1)
                assert padded(channels) <= top + padded(channels - top)
        else:  # a compiled chunk, one remainder smaller than it, fewer channels in all than the padding
            assert chunk in NATIVE_CHANNELS and 0 < channels - chunk < chunk
            assert chunk + padded(channels - chunk) < padded(channels)
    assert channel_chunk(3 + 16) == 16 and channel_chunk(3 + 16 + 1) == 16  # training and renders at E = 16
    assert channel_chunk(3 + 14) == 17 and channel_chunk(14) == 14 and channel_chunk(15) == 15  # E = 14: one pass


def _random_scene(n, W, H, C, seed=0, opaque=False):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2.4 - 1.2  # some beyond the image's edges, some behind the camera
    means[:, 2] = means[:, 2] * 2 + 3.5
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 3.0)
    opac = torch.full((n,), 0.99) if opaque else torch.sigmoid(torch.randn(n, generator=g) * 2)
    K = torch.tensor([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]])
    return (means, torch.randn(n, 4, generator=g), scales, opac, torch.rand(n, C, generator=g), torch.eye(4), K,
            W, H, torch.rand(C, generator=g))


@pytest.mark.parametrize("tile,budget", [(8, 1 << 22), (4, 1 << 22), (16, 1 << 22), (8, 5000)])
@pytest.mark.parametrize("opaque", [False, True])
def test_tiled_composite_matches_the_reference(tile, budget, opaque):
    """The forward-only tiled path composites what the reference does: image sizes that are no multiple of
    the tile, Gaussians across the edges, deep stacks that stop early, and groups split by a small budget."""
    from featurefield.fields.splat.composite_tiles import composite_tiles

    means, quats, scales, opac, colors, viewmat, K, W, H, bg = _random_scene(2000, 61, 43, 5, opaque=opaque)
    projected = rt.project(means, rt.covariances(quats, scales), opac, viewmat, K, W, H)
    means2d, conics, depths, radii = projected
    args = (means2d, conics, opac, colors, radii, depths, W, H, bg)
    ref, ref_alpha = rt.composite(*args)
    out, alpha = composite_tiles(*args, budget=budget, tile=tile)
    assert out.shape == ref.shape == (43, 61, 5) and alpha.shape == ref_alpha.shape == (43, 61, 1)
    assert float(ref_alpha.mean()) > 0.8  # the scene covers the image
    if opaque:  # deep stacks: the transmittance reaches the early stop in many pixels
        assert float(((1 - ref_alpha) < 1e-3).float().mean()) > 0.3
    assert (out - ref).abs().max() < 1e-4 and (out - ref).abs().mean() < 1e-6
    assert (alpha - ref_alpha).abs().max() < 1e-5


def test_renders_without_gradients_take_the_tiled_path():
    scene = _random_scene(300, 40, 30, 3)
    with torch.no_grad():
        plain, _, _ = rt.rasterize(*scene)
    tiled, _, _ = rt.rasterize(*scene, tiled=True)
    assert torch.equal(plain, tiled)
    leaves = [x.clone().requires_grad_(True) for x in scene[:5]]
    img, alpha, _ = rt.rasterize(*leaves, *scene[5:])  # a gradient is needed: the reference
    (img.sum() + alpha.sum()).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in leaves)
