"""Parts of the Gaussian field's training step: resampling, the shared Adam, the strategy statistics,
the separate feature pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, remove

from featurefield.fields.splat.resample import resample, resample_hwc
from featurefield.fields.splat.strategy import SyncFreeDefaultStrategy, group_optimizers
from featurefield.fields.splat.views import views_of
from tests.conftest import cuda
from tests.toysplat import make_field, run_steps, toy_scene, train_data


@pytest.mark.parametrize("size,grid", [((800, 600), (50, 38)), ((32, 48), (64, 20)), ((16, 16), (16, 16))])
def test_resample_matches_interpolate(size, grid):
    x = torch.randn(5, *size, dtype=torch.float32)
    shrink = grid[0] < size[0] or grid[1] < size[1]
    ref = F.interpolate(x[None], size=grid, mode="bilinear", align_corners=False, antialias=shrink)[0]
    assert torch.allclose(resample(x, grid), ref, atol=1e-5)
    assert torch.allclose(resample_hwc(x.permute(1, 2, 0), grid), ref.permute(1, 2, 0), atol=1e-5)


def test_sync_free_statistics_equal_gsplats():
    g = torch.Generator().manual_seed(0)
    n = 500
    params = {"means": torch.zeros(n, 3)}
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.randn(1, n, 2, generator=g)
    radii = torch.randint(0, 3, (1, n, 2), generator=g, dtype=torch.int32)
    info = {"width": 80, "height": 60, "n_cameras": 1, "radii": radii, "gaussian_ids": None, "means2d": means2d}
    ours, ref = SyncFreeDefaultStrategy(refine_scale2d_stop_iter=100), DefaultStrategy(refine_scale2d_stop_iter=100)
    s_ours, s_ref = ours.initialize_state(), ref.initialize_state()
    for _ in range(3):
        ours._update_state(params, s_ours, info)
        ref._update_state(params, s_ref, info)
    assert (radii > 0).all(-1).sum() < n  # some invisible Gaussians are left out
    for key in ("grad2d", "count", "radii"):
        assert torch.allclose(s_ours[key], s_ref[key], atol=1e-6), key


def test_shared_adam_equals_one_adam_per_parameter_and_follows_densification():
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3)
    data = train_data(scene, feats)
    field = make_field(scene, feats, steps=100)
    ref = {name: p.detach().clone().requires_grad_(True) for name, p in field.params.items()}
    lrs = {g["name"]: g["lr"] for g in field.optimizers()["adam"].param_groups}
    ref_opts = {name: torch.optim.Adam([p], lr=lrs[name], eps=1e-15) for name, p in ref.items()}
    for name, p in field.params.items():
        grad = torch.randn_like(p)
        p.grad, ref[name].grad = grad.clone(), grad.clone()
        ref_opts[name].step()
    field.optimizers()["adam"].step()
    for name, p in field.params.items():
        assert torch.allclose(p, ref[name], atol=1e-6), name

    # gsplat's ops edit the shared optimizer through the per-group views
    views = group_optimizers(field.optimizers()["adam"], tuple(field.params.keys()))
    n = field.num_gaussians
    state = {"grad2d": torch.zeros(n), "count": torch.zeros(n)}
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:7] = True
    duplicate(field.params, views, state, mask)
    remove(field.params, views, state, torch.arange(n + 7) % 5 == 0)
    m = n + 7 - len(range(0, n + 7, 5))
    opt = field.optimizers()["adam"]
    for group in opt.param_groups[:len(field.params)]:
        p = group["params"][0]
        assert p is field.params[group["name"]] and p.shape[0] == m
        assert opt.state[p]["exp_avg"].shape == p.shape
    losses = run_steps(field, data, 3)  # trains on after the edits
    assert torch.isfinite(losses["loss"])


def test_separate_feature_pass_size_and_detached_geometry():
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3, size=64, grid=(4, 4))
    data = train_data(scene, feats)
    view = views_of(scene.canonical_cameras()[:1])[0]
    assert make_field(scene, feats, 10).feature_pass_size(view) is None  # default: one joint pass
    assert make_field(scene, feats, 10, feature_render="separate").feature_pass_size(view) == (16, 16)  # 4 x grid
    assert make_field(scene, feats, 10, feature_render="separate", feature_supersample=32).feature_pass_size(view) == (64, 64)

    torch.manual_seed(0)
    field = make_field(scene, feats, 10)
    with torch.no_grad():
        field.params["embedding"].normal_()
        field.params["scales"].add_(torch.randn_like(field.params["scales"]) * 0.3)  # rotations matter too
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in field.state_dict().items()}

    def grads(weight: float, **cfg):
        fld = make_field(scene, feats, 10, feature_weight=weight, **cfg)
        fld.load_state_dict(state)
        fld.training_loss({"view": 0}, data, 0)["loss"].backward()
        return fld, {k: fld.params[k].grad.clone() for k in ("means", "scales", "quats", "opacities", "embedding")}

    field, separate = grads(1.0, feature_render="separate")
    _, colour_only = grads(0.0, feature_render="separate")
    assert separate["embedding"].abs().sum() > 0
    for name in ("means", "scales", "quats", "opacities"):  # detached: features never move the geometry
        assert torch.allclose(separate[name], colour_only[name], atol=1e-7), name
    _, attached = grads(1.0, feature_render="separate", feature_detach=False)
    joint, joint_grads = grads(1.0, feature_render="joint")
    for moved in (attached, joint_grads):  # otherwise they do
        assert not torch.allclose(moved["means"], colour_only["means"])
    with torch.no_grad():  # the low-resolution pass sees the same features at the teacher's grid
        low = resample_hwc(field._render_embedding(0, view, (16, 16)), (4, 4))
        full = resample_hwc(joint.rasterize(view, joint.params["embedding"], rgb=False, depth=False)[1], (4, 4))
    assert F.cosine_similarity(low.reshape(-1, 16), full.reshape(-1, 16), dim=-1).mean() > 0.97


def test_training_with_separate_feature_pass_fits_colour_and_features():
    torch.manual_seed(0)
    scene, feats = toy_scene(size=48, grid=(6, 6))
    data = train_data(scene, feats)
    field = make_field(scene, feats, steps=80, feature_render="separate", feature_supersample=4)
    first = run_steps(field, data, 1)
    last = run_steps(field, data, 79, start=1)
    assert last["psnr"] > first["psnr"] + 5
    assert last["feature/toy"] < 0.8 * first["feature/toy"]


def _loss_and_grads(rasterizer: str, mode: str, device: str):
    """Training loss and parameter gradients of one step of a fixed toy field (SH degree 1 active)."""
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3, size=64, grid=(4, 4))
    data = train_data(scene, feats)
    data = type(data)(data.cameras.to(device), data.images.to(device), data.alphas.to(device),
                      {k: v.to(device) for k, v in data.features.items()}, data.background.to(device))
    torch.manual_seed(1)
    fld = make_field(scene, feats, 10, feature_render=mode, rasterizer=rasterizer)
    with torch.no_grad():
        fld.params["embedding"].normal_()
        fld.params["shN"].normal_(std=0.1)
        fld.params["scales"].add_(torch.randn_like(fld.params["scales"]) * 0.3)  # anisotropic: rotations matter
    fld = fld.to(device)
    out = fld.training_loss({"view": 1}, data, 5)
    out["loss"].backward()
    grads = {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in fld.params.items()}
    return float(out["loss"].detach()), grads


@cuda
@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_training_loss_on_gsplat_matches_the_torch_twin(mode):
    """A whole training loss (colour, SSIM, features through the decoder) and its gradients, gsplat vs torch."""
    pytest.importorskip("gsplat")
    l1, g1 = _loss_and_grads("torch", mode, "cuda")
    l2, g2 = _loss_and_grads("gsplat", mode, "cuda")
    assert abs(l1 - l2) < 1e-4 * max(1.0, abs(l1))
    for k in g1:
        assert float((g1[k] - g2[k]).norm()) <= 2e-3 * float(g2[k].norm()) + 1e-8, k


def test_alpha_loss_empties_what_the_images_see_as_background():
    """--splat.alpha-weight: the rendered opacity is pulled towards the images' alpha."""
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3, size=32, grid=(4, 4))
    data = train_data(scene, feats)
    assert data.alphas is not None and (data.alphas < 128).any()

    def alpha_loss_after(weight: float, steps: int) -> tuple[dict, float]:
        torch.manual_seed(1)
        fld = make_field(scene, feats, steps, alpha_weight=weight)
        out = run_steps(fld, data, steps)
        with torch.no_grad():
            err = 0.0
            for i in range(len(data.cameras)):
                alpha = fld.rasterize(fld._train_view(data, i), depth=False)[3]
                err += float((alpha[..., 0] - data.alphas[i].float() / 255).abs().mean())
        return out, err / len(data.cameras)

    out, with_loss = alpha_loss_after(1.0, 40)
    assert "alpha" in out
    plain_out, without = alpha_loss_after(0.0, 40)
    assert "alpha" not in plain_out
    assert with_loss < 0.8 * without


def test_random_background_recomposites_the_target():
    """With random_background each step's target is the image re-composited on that step's colour."""
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=2, size=32, grid=(4, 4))
    data = train_data(scene, feats)
    field = make_field(scene, feats, 10, random_background=True)
    batch = field.sample_batch(data, 0, torch.Generator().manual_seed(0))
    assert "background" in batch
    transparent = data.alphas[batch["view"]] == 0
    assert transparent.any()
    # a field that renders nothing shows the background; the target is the image on that background
    with torch.no_grad():
        field.params["opacities"].fill_(-30.0)
    out = field.training_loss({**batch}, data, 0)
    rgb = data.images[batch["view"]].float() / 255
    a = data.alphas[batch["view"]].float()[..., None] / 255
    recomposited = rgb + (batch["background"] - data.background.float()) * (1 - a)
    assert torch.allclose(out["rgb"], (recomposited - batch["background"]).abs().mean(), atol=1e-5)
    assert not torch.allclose(out["rgb"], (rgb - batch["background"]).abs().mean(), atol=1e-3)


def test_feature_geometry_weight_scales_what_the_features_do_to_the_geometry_alone():
    """--splat.feature-geometry-weight w: the geometry's gradient is colour + w x the features' share; the
    embedding's gradient is w x its own (the same Adam step), the decoder's unchanged."""
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3, size=64, grid=(4, 4))
    data = train_data(scene, feats)
    field = make_field(scene, feats, 10)
    with torch.no_grad():
        field.params["embedding"].normal_()
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in field.state_dict().items()}

    def grads(**cfg):
        fld = make_field(scene, feats, 10, **cfg)
        fld.load_state_dict(state)
        out = fld.training_loss({"view": 0}, data, 0)
        out["loss"].backward()
        g = {k: fld.params[k].grad.clone() for k in ("means", "scales", "opacities", "embedding")}
        return float(out["loss"]), g, fld.decoders["toy"].weight.grad.clone()

    loss1, full, dec1 = grads()
    _, colour, _ = grads(feature_weight=0.0)
    loss_q, quarter, dec_q = grads(feature_geometry_weight=0.25)
    assert loss_q == loss1  # the forward pass is unchanged
    for name in ("means", "scales", "opacities"):
        torch.testing.assert_close(quarter[name], colour[name] + 0.25 * (full[name] - colour[name]), rtol=1e-4, atol=1e-9)
        assert not torch.allclose(quarter[name], full[name])
    torch.testing.assert_close(quarter["embedding"], 0.25 * full["embedding"])
    torch.testing.assert_close(dec_q, dec1)
    from featurefield.errors import FeatureFieldError

    with pytest.raises(FeatureFieldError, match="--splat.feature-geometry-weight"):
        make_field(scene, feats, 10, feature_geometry_weight=0.0)


def _mcmc_field(scene, feats, steps: int, device: str):
    from gsplat.strategy import MCMCStrategy

    from featurefield.fields.base import TeacherTarget
    from featurefield.fields.splat.config import SplatConfig
    from featurefield.fields.splat.model import GaussianField

    targets = [TeacherTarget("toy", feats.shape[1], tuple(feats.shape[-2:]))]
    config = SplatConfig(sh_degree=1, strategy="mcmc", mcmc=MCMCStrategy(cap_max=900), init_points_random=500)
    return GaussianField.create(scene, targets, config, max_steps=steps, device=device)


def test_auto_strategy_is_mcmc_only_where_gsplat_rasterizes_on_cuda():
    from gsplat.strategy import MCMCStrategy

    from featurefield.fields.splat.config import MCMC_MIN_AUTO_CAP, SplatConfig

    auto = SplatConfig()
    assert auto.strategy == "auto" and auto.mcmc.cap_max == 0
    off = auto.resolved(gsplat_on_cuda=False, initial_gaussians=100_000)
    assert (off.strategy, off.mcmc.cap_max) == ("default", 0)
    on = auto.resolved(gsplat_on_cuda=True, initial_gaussians=100_000)
    assert (on.strategy, on.mcmc.cap_max) == ("mcmc", MCMC_MIN_AUTO_CAP)  # lego's random init: the 300k budget
    assert auto.resolved(gsplat_on_cuda=True, initial_gaussians=250_000).mcmc.cap_max == 750_000  # 3 x an SfM init
    capped = SplatConfig(max_gaussians=200_000).resolved(gsplat_on_cuda=True, initial_gaussians=100_000)
    assert capped.mcmc.cap_max == 200_000
    given = SplatConfig(mcmc=MCMCStrategy(cap_max=123_456)).resolved(gsplat_on_cuda=True, initial_gaussians=100_000)
    assert given.mcmc.cap_max == 123_456
    assert SplatConfig(strategy="default").resolved(gsplat_on_cuda=True, initial_gaussians=10).strategy == "default"


def test_automatic_mcmc_budget_and_random_init_scale_with_small_views():
    """128 x 128 views get about 12k Gaussians, not 300k; lego's 800 x 800 views keep 300k."""
    from featurefield.fields.base import TeacherTarget
    from featurefield.fields.splat.config import INIT_PIXELS_PER_GAUSSIAN, MCMC_MIN_AUTO_CAP, SplatConfig
    from featurefield.fields.splat.model import GaussianField

    auto = SplatConfig()
    small = auto.resolved(gsplat_on_cuda=True, initial_gaussians=128 * 128 // 4, pixels_per_view=128 * 128)
    assert small.mcmc.cap_max == 3 * 128 * 128 // 4  # three times the init beats half the pixels (8192)
    assert auto.resolved(gsplat_on_cuda=True, initial_gaussians=1_000, pixels_per_view=128 * 128).mcmc.cap_max == 8192
    lego = auto.resolved(gsplat_on_cuda=True, initial_gaussians=100_000, pixels_per_view=800 * 800)
    assert lego.mcmc.cap_max == MCMC_MIN_AUTO_CAP
    sfm = auto.resolved(gsplat_on_cuda=True, initial_gaussians=250_000, pixels_per_view=64 * 64)
    assert sfm.mcmc.cap_max == 750_000  # never below what the points already hold

    scene, feats = toy_scene(n_views=3)
    pixels = int(scene.canonical_cameras().width[0] * scene.canonical_cameras().height[0])
    targets = [TeacherTarget("toy", feats.shape[1], tuple(feats.shape[-2:]))]
    field = GaussianField.create(scene, targets, SplatConfig(init="random", cpu_max_init=10**6), max_steps=10)
    assert field.num_gaussians == pixels // INIT_PIXELS_PER_GAUSSIAN < SplatConfig().init_points_random


def test_created_field_records_the_resolved_strategy():
    """On the CPU the automatic strategy is 3DGS's; the run's config says so, and a reload builds the same one."""
    from featurefield.fields.splat.model import GaussianField
    from featurefield.fields.splat.strategy import SyncFreeDefaultStrategy

    scene, feats = toy_scene(n_views=3)
    field = make_field(scene, feats, 10)
    assert field.config.strategy == "default"
    assert field.config_dict()["config"]["strategy"] == "default"
    assert isinstance(field._strategy, SyncFreeDefaultStrategy)
    again = GaussianField.from_config(field.config_dict(), field.state_dict())
    assert again.config.strategy == "default" and isinstance(again._strategy, SyncFreeDefaultStrategy)


def test_a_run_trained_with_mcmc_opens_and_renders_on_the_cpu():
    """What a GPU trained (MCMC, the default there) reloads on a laptop: the strategy is rebuilt, not run."""
    from gsplat.strategy import MCMCStrategy

    from featurefield.fields.splat.model import GaussianField

    scene, feats = toy_scene(n_views=3)
    trained = make_field(scene, feats, 10)
    config = trained.config_dict()
    config["config"] = {**config["config"], "strategy": "mcmc", "mcmc": {**config["config"]["mcmc"], "cap_max": 300_000}}
    mcmc_state = MCMCStrategy(cap_max=300_000).initialize_state()  # what an MCMC checkpoint holds
    state = {**trained.state_dict(), "_extra_state": {"strategy_state": mcmc_state, "perm": None, "cursor": 0}}
    field = GaussianField.from_config(config, state)
    assert isinstance(field._strategy, MCMCStrategy) and field.config.strategy == "mcmc"
    assert field._strategy.cap_max == 300_000
    # an automatic budget never resolved (a field built directly) follows the same rule: here, --splat.max-gaussians
    config["config"]["mcmc"]["cap_max"] = 0
    config["config"]["max_gaussians"] = 1_000
    assert GaussianField.from_config(config, state)._strategy.cap_max == 1_000
    r = field.render(scene.canonical_cameras()[0], background=torch.ones(3))
    torch.testing.assert_close(r.rgb, trained.render(scene.canonical_cameras()[0], background=torch.ones(3)).rgb)


def test_the_strategies_are_gsplats_own_settings_scaled_to_the_run():
    """The config nests gsplat's strategy dataclasses; their step numbers scale with the run length, and a config
    written before they were nested (flat refine_* / mcmc_* settings) reads into them."""
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    from featurefield.fields.splat.config import SplatConfig

    cfg = SplatConfig(strategy="default", default=DefaultStrategy(refine_stop_iter=15_000, reset_every=3_000))
    short = cfg.scaled_strategy(3_000)  # a tenth of the 30k schedule
    assert isinstance(short, DefaultStrategy)
    assert (short.refine_start_iter, short.refine_stop_iter, short.reset_every, short.refine_every) == (50, 1_500, 300, 10)
    assert cfg.scaled_strategy(30_000) == cfg.default
    mcmc = SplatConfig(strategy="mcmc").scaled_strategy(3_000)
    assert isinstance(mcmc, MCMCStrategy) and mcmc.refine_stop_iter == 2_500
    assert SplatConfig.from_dict(SplatConfig(strategy="mcmc").to_dict()) == SplatConfig(strategy="mcmc")
    old = SplatConfig.from_dict({"strategy": "default", "refine_stop": 9_000, "grow_grad2d": 0.0004, "absgrad": True,
                                 "prune_opacity": 0.01, "mcmc_cap_max": 50_000, "embed_dim": 8})
    assert (old.default.refine_stop_iter, old.default.grow_grad2d, old.default.prune_opa) == (9_000, 0.0004, 0.01)
    assert old.absgrad and old.mcmc.cap_max == 50_000 and old.mcmc.min_opacity == 0.01 and old.embed_dim == 8


def test_mcmc_strategy_off_cuda_is_a_clear_error():
    from featurefield.errors import FeatureFieldError

    scene, feats = toy_scene(n_views=3)
    with pytest.raises(FeatureFieldError, match="relocation kernel"):
        _mcmc_field(scene, feats, 10, "cpu")


@cuda
def test_mcmc_strategy_grows_to_its_cap_and_fits():
    """gsplat's MCMC strategy through the field: Gaussians added up to the cap, colour and features fitted."""
    pytest.importorskip("gsplat")
    torch.manual_seed(0)
    scene, feats = toy_scene(size=48, grid=(6, 6))
    data = train_data(scene, feats)
    data = type(data)(data.cameras.to("cuda"), data.images.to("cuda"), data.alphas.to("cuda"),
                      {k: v.to("cuda") for k, v in data.features.items()}, data.background.to("cuda"))
    field = _mcmc_field(scene, feats, 200, "cuda")
    assert field.num_gaussians == 500
    first = run_steps(field, data, 1)
    last = run_steps(field, data, 199, start=1)
    assert field.num_gaussians == 900  # 5% more per refinement (every 10 steps here), capped
    assert last["psnr"] > first["psnr"] + 3
    assert last["feature/toy"] < 0.8 * first["feature/toy"]


def _noise_params(n: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"means": torch.randn(n, 3, generator=g).to(device), "quats": torch.randn(n, 4, generator=g).to(device),
            "scales": (torch.randn(n, 3, generator=g) - 3).to(device),
            "opacities": torch.cat([torch.full((n // 2,), -8.0), torch.randn(n - n // 2, generator=g)]).to(device)}


def test_mcmc_position_noise_is_covariance_times_a_normal_sample_for_transparent_gaussians():
    """The lean noise against the formula written out with a batched matrix product (gsplat's einsum)."""
    pytest.importorskip("gsplat")
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    from featurefield.fields.splat.strategy import inject_position_noise

    params = _noise_params(400, "cpu")
    before = params["means"].clone()
    torch.manual_seed(5)
    inject_position_noise(params, scaler=0.3)
    torch.manual_seed(5)
    covars = _quat_scale_to_covar_preci(params["quats"], torch.exp(params["scales"]), True, False)[0]
    gate = 1 / (1 + torch.exp(-100 * ((1 - torch.sigmoid(params["opacities"])) - 0.995)))
    expected = torch.einsum("bij,bj->bi", covars, torch.randn(400, 3) * gate[:, None] * 0.3)
    torch.testing.assert_close(params["means"] - before, expected, atol=1e-6, rtol=1e-5)
    moved = (params["means"] - before).norm(dim=-1)
    assert (moved[:200] > 0).all() and moved[200:].max() < 1e-3 * moved[:200].median()  # opaque ones barely move


@cuda
def test_mcmc_position_noise_matches_gsplat_on_cuda():
    from gsplat.strategy.ops import inject_noise_to_position

    from featurefield.fields.splat.strategy import inject_position_noise

    ours, theirs = _noise_params(10_000, "cuda"), _noise_params(10_000, "cuda")
    torch.manual_seed(3)
    inject_position_noise(ours, scaler=0.2)
    torch.manual_seed(3)
    inject_noise_to_position(theirs, {}, {}, scaler=0.2)
    torch.testing.assert_close(ours["means"], theirs["means"], atol=1e-6, rtol=1e-5)
