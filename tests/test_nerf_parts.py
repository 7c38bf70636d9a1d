"""Pieces of the NeRF field: contraction, encodings, samplers, volume rendering, proposal losses."""

from __future__ import annotations

import math

import torch

from featurefield.fields.nerf.contraction import Contraction, contract_linf, uncontract_linf
from featurefield.fields.nerf.encodings import frequency_encoding, spherical_harmonics
from featurefield.fields.nerf.losses import distortion_loss, interlevel_loss, outer_weights
from featurefield.fields.nerf.rendering import (
    accumulate,
    composite_rgb,
    expected_distance,
    median_distance,
    weights_from_density,
)
from featurefield.fields.nerf.samplers import pdf_edges, ray_aabb, spacing_to_distance, uniform_edges


def test_linf_contraction_identity_inside_bounded_outside_and_invertible():
    inside = torch.rand(50, 3) * 2 - 1
    torch.testing.assert_close(contract_linf(inside), inside)
    far = torch.randn(50, 3) * 1e4
    y = contract_linf(far)
    assert (y.abs().amax(-1) < 2).all() and (y.abs().amax(-1) > 1.99).all()
    mid = torch.randn(50, 3) * 3
    torch.testing.assert_close(uncontract_linf(contract_linf(mid)), mid, rtol=1e-4, atol=1e-4)
    # direction preserved
    torch.testing.assert_close(torch.nn.functional.normalize(y, dim=-1), torch.nn.functional.normalize(far, dim=-1))


def test_contraction_to_unit_cube():
    c = Contraction("linf")
    u, inside = c(torch.tensor([[0.0, 0.0, 0.0], [1e6, -1e6, 0.0]]))
    torch.testing.assert_close(u[0], torch.full((3,), 0.5))
    assert inside.all() and (u >= 0).all() and (u <= 1).all()
    box = Contraction("aabb", torch.tensor([[-1.0, 0.0, 0.0], [1.0, 2.0, 4.0]]))
    u, inside = box(torch.tensor([[0.0, 1.0, 1.0], [2.0, 1.0, 1.0]]))
    torch.testing.assert_close(u[0], torch.tensor([0.5, 0.5, 0.25]))
    assert inside.tolist() == [True, False]
    torch.testing.assert_close(box.inverse(u[:1]), torch.tensor([[0.0, 1.0, 1.0]]))


def test_spherical_harmonics_orthonormal():
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=gen, dtype=torch.float64), dim=-1)
    Y = spherical_harmonics(d, 4)
    assert Y.shape == (400_000, 16)
    gram = 4 * math.pi * (Y.T @ Y) / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_frequency_encoding_values():
    x = torch.tensor([[0.25, 0.0, 0.5]])
    e = frequency_encoding(x, 2)
    assert e.shape == (1, 12)
    torch.testing.assert_close(e[0, :6], torch.sin(torch.tensor([0.25, 0.5, 0.0, 0.0, 0.5, 1.0]) * math.pi))
    torch.testing.assert_close(e[0, 6:], torch.cos(torch.tensor([0.25, 0.5, 0.0, 0.0, 0.5, 1.0]) * math.pi))


def test_uniform_edges_sorted_and_stratified():
    e = uniform_edges(100, 8, "cpu", jitter=True, single_jitter=False)
    assert e.shape == (100, 9)
    assert (e[:, 1:] >= e[:, :-1]).all() and (e >= 0).all() and (e <= 1).all()
    fixed = uniform_edges(2, 4, "cpu", jitter=False)
    torch.testing.assert_close(fixed[0], torch.linspace(0, 1, 5))


def test_spacing_to_distance_endpoints_and_monotone():
    near, far = torch.tensor([0.05, 2.0]), torch.tensor([1000.0, 3.0])
    s = torch.linspace(0, 1, 33).expand(2, -1)
    for kind in ("uniform", "lindisp"):
        t = spacing_to_distance(s, near, far, kind)
        torch.testing.assert_close(t[:, 0], near, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(t[:, -1], far, rtol=1e-3, atol=1e-3)
        assert (t[:, 1:] > t[:, :-1]).all()
    t = spacing_to_distance(s[:1], near[:1], far[:1], "lindisp")
    assert (t[0] < 1).sum() > 12  # lindisp spends about half its samples before distance 1


def test_pdf_resampling_follows_weights():
    edges = torch.linspace(0, 1, 11).expand(4, -1).contiguous()
    w = torch.zeros(4, 10)
    w[:, 3] = 1.0
    new = pdf_edges(edges, w, 32, jitter=False, padding=0.0)
    assert new.shape == (4, 33) and (new[:, 1:] >= new[:, :-1]).all()
    assert ((new >= 0.3 - 1e-6) & (new <= 0.4 + 1e-6)).float().mean() > 0.9
    jit = pdf_edges(edges, w, 32, jitter=True, padding=0.01)
    assert ((jit >= 0.3) & (jit <= 0.4)).float().mean() > 0.5


def test_ray_aabb_hits_and_misses():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = ray_aabb(o, d, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(near[0], torch.tensor(2.0))
    torch.testing.assert_close(far[0], torch.tensor(4.0))
    assert far[1] == near[1]


def test_weights_sum_to_accumulation():
    density = torch.rand(5, 16) * 3
    deltas = torch.rand(5, 16) * 0.2
    w = weights_from_density(density, deltas)
    acc = 1 - torch.exp(-(density * deltas).sum(-1))
    torch.testing.assert_close(w.sum(-1), acc)
    # an opaque first sample takes all the weight
    dens = torch.zeros(1, 4)
    dens[0, 1] = 1e4
    w1 = weights_from_density(dens, torch.ones(1, 4))
    torch.testing.assert_close(w1, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    t = torch.arange(4.0)[None]
    assert float(expected_distance(w1, t)) == 1.0 and float(median_distance(w1, t)) == 1.0


def test_accumulate_and_background_composite():
    w = torch.tensor([[0.2, 0.3]])
    v = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 4.0]]])
    torch.testing.assert_close(accumulate(w, v), torch.tensor([[0.2, 0.3, 1.6]]))
    rgb = composite_rgb(w, v, torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(rgb, torch.tensor([[0.7, 0.8, 2.1]]))


def test_outer_weights_sum_overlapping_bins():
    env_edges = torch.tensor([[0.0, 0.5, 1.0]])
    env_w = torch.tensor([[0.3, 0.6]])
    fine = torch.tensor([[0.0, 0.2, 0.45, 0.7, 1.0]])
    torch.testing.assert_close(outer_weights(fine, env_edges, env_w), torch.tensor([[0.3, 0.3, 0.9, 0.6]]))


def test_interlevel_loss_zero_when_bounded_positive_when_not():
    edges = torch.linspace(0, 1, 9).expand(3, -1).contiguous()
    w = torch.softmax(torch.randn(3, 8), -1) * 0.9
    assert float(interlevel_loss([edges, edges], [w, w])) < 1e-9
    wrong = torch.roll(w, 4, dims=-1)
    loss = interlevel_loss([edges, edges], [wrong.requires_grad_(True), w])
    assert float(loss.detach()) > 1e-3
    loss.backward()  # the proposal weights get the gradient
    assert wrong.grad.abs().sum() > 0


def test_distortion_loss_matches_quadratic_formula():
    gen = torch.Generator().manual_seed(1)
    e = torch.sort(torch.rand(4, 13, generator=gen), -1).values
    w = torch.rand(4, 12, generator=gen)
    mid = (e[:, 1:] + e[:, :-1]) / 2
    brute = (w[:, :, None] * w[:, None, :] * (mid[:, :, None] - mid[:, None, :]).abs()).sum((1, 2))
    brute = (brute + (w**2 * (e[:, 1:] - e[:, :-1])).sum(-1) / 3).mean()
    torch.testing.assert_close(distortion_loss(e, w), brute)
    # concentrated weight costs less than spread weight
    edges = torch.linspace(0, 1, 9)[None]
    peak = torch.zeros(1, 8)
    peak[0, 4] = 1.0
    assert float(distortion_loss(edges, peak)) < float(distortion_loss(edges, torch.full((1, 8), 1 / 8)))


def test_scatter_hash_encoding_matches_reference_and_is_the_cpu_path():
    from featurefield.fields.nerf.hashgrid import HashGrid, hash_encode_scatter, hash_encode_torch

    torch.manual_seed(0)
    # (levels, features, log2 T, min res, max res): dense and hashed levels, F = 3, one dense level only
    for cfg in [(3, 2, 8, 4, 32), (4, 3, 9, 2, 40), (8, 2, 15, 16, 256), (1, 2, 10, 4, 4)]:
        g = HashGrid(*cfg, backend="torch")
        g.table.data.normal_()
        x = torch.rand(300, 3)
        x[:3] = torch.tensor([[1.0, 0.0, 0.999999], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # box faces and corners
        ref = hash_encode_torch(x, g.table, g.resolutions, g.dense)
        go = torch.randn_like(ref)
        (gref,) = torch.autograd.grad(ref, g.table, go)
        out = hash_encode_scatter(x, g.table, g.resolutions, g.dense)
        (gout,) = torch.autograd.grad(out, g.table, go)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gout, gref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=1e-5)  # the module's CPU path
    # positions that need a gradient (normals) take the reference path
    xg = torch.rand(5, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(g(xg).sum(), xg)
    assert gx.abs().sum() > 0
