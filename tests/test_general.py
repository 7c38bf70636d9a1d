"""The generalizable field: pixel-aligned sampling, rendering, training over instances, queries, eval, CLI errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurefield.cameras import Cameras
from featurefield.cli import main
from featurefield.data.category import generate_category
from featurefield.errors import FeatureFieldError
from featurefield.fields.general.model import GeneralConfig, GeneralField
from featurefield.fields.general.rendering import composite, feature_volume, render_view
from featurefield.fields.general.sampling import pixel_aligned, project
from featurefield.fields.general.train import GeneralTrainConfig, train_general
from featurefield.teachers.base import Teacher
from tests.conftest import cuda


class TinyTeacher(Teacher):
    """A fixed random 4x4/stride-4 conv with tanh: cheap, deterministic, image-dependent features."""

    name = "tiny"
    dim = 8

    def __init__(self) -> None:
        self.weight = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5

    def feature_grid(self, height, width):
        return height // 4, width // 4

    def extract(self, images):
        return torch.tanh(F.conv2d(images * 2 - 1, self.weight.to(images), stride=4))


TINY = dict(width=48, blocks=3, condition_blocks=2, descriptor_block=2, samples=12, cnn_dim=16, frequencies=4,
            dir_frequencies=2)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mugs(tmp_path_factory):
    """Three tiny mugs (two to train on, one held out), six 32 px views each."""
    out = tmp_path_factory.mktemp("general") / "mugs"
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return generate_category("mugs", 3, out, views=6, size=32, seed=0, shard_size=2, supersample=1, workers=1,
                                 progress=False)


def _toy_camera(eye, size=4, focal=2.0) -> Cameras:
    c2w = torch.eye(4)[None]
    c2w[0, :3, 3] = torch.tensor(eye, dtype=torch.float32)
    return Cameras(c2w=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


def test_pixel_aligned_sampling_matches_a_hand_computation():
    # camera at the origin looking along +z, f = 2, principal point (2, 2), 4x4 image; a 2x2 feature map
    # covers it: cell centres sit at pixel positions 1 and 3
    cam = _toy_camera([0.0, 0.0, 0.0])
    maps = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None, None]  # [B=1, S=1, C=1, 2, 2]
    w2c, K = cam.w2c()[None], cam.K()[None]
    pts = torch.tensor([[[0.0, -0.5, 1.0],    # -> (u, v) = (2, 1): between the top cells: (1 + 2) / 2
                         [-0.5, -0.5, 1.0],   # -> (1, 1): the centre of cell (0, 0): 1
                         [0.25, 0.25, 1.0],   # -> (2.5, 2.5): bilinear of all four at (0.75, 0.75) cell offsets
                         [0.0, 0.0, -1.0]]])  # behind the camera: no view sees it -> 0
    uv, z = project(pts, w2c, K)
    torch.testing.assert_close(uv[0, 0, :3], torch.tensor([[2.0, 1.0], [1.0, 1.0], [2.5, 2.5]]))
    out = pixel_aligned(pts, maps, w2c, K, (4, 4))[0, :, 0]
    # at (2.5, 2.5) the map coordinate is 0.75 cells from cell 0 along x and y: bilinear by hand
    hand = 1 * 0.25 * 0.25 + 2 * 0.75 * 0.25 + 3 * 0.25 * 0.75 + 4 * 0.75 * 0.75
    torch.testing.assert_close(out, torch.tensor([1.5, 1.0, hand, 0.0]))

    # two views: the mean over the views that have the point in front of them
    cam2 = _toy_camera([0.5, 0.0, 0.0])  # shifted right: the point (0, -0.5, 1) lands at (1, 1) -> 1
    maps2 = torch.cat([maps, maps], 1)
    w2c2 = torch.stack([cam.w2c()[0], cam2.w2c()[0]])[None]
    K2 = torch.stack([cam.K()[0], cam2.K()[0]])[None]
    out2 = pixel_aligned(pts[:, :1], maps2, w2c2, K2, (4, 4))
    torch.testing.assert_close(out2[0, 0, 0], torch.tensor((1.5 + 1.0) / 2))


def test_compositing_weights():
    sigma = torch.tensor([[0.0, 1e4, 5.0]])
    w = composite(sigma, torch.full_like(sigma, 0.1))
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-4, rtol=0)
    w = composite(torch.tensor([[math.log(2) / 0.1] * 2]), torch.full((1, 2), 0.1))
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.25]]))


def _view_metrics(fld, data, teacher, instance, view):
    """PSNR and teacher-feature cosine on the object of ``view`` rendered from view 0 of ``instance``."""
    inst = data.instance(instance)
    cond = fld.encode(inst["rgb"][:1].permute(0, 3, 1, 2), inst["cameras"][0])
    r = render_view(fld, cond, inst["cameras"][view])
    mse = float(((r["rgb"] - inst["rgb"][view]) ** 2).mean())
    t = teacher.extract(inst["rgb"][view].permute(2, 0, 1)[None])
    t = F.interpolate(t, size=r["feature"].shape[:2], mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    mask = inst["depth"][view] > 0
    cos = float(F.cosine_similarity(r["feature"][mask], t[mask], dim=-1).mean())
    return -10 * math.log10(mse), cos


@pytest.mark.parametrize("encoder", ["cnn", "teacher"])
def test_tiny_model_learns_two_instances(mugs, tmp_path, encoder):
    from featurefield.data.category import CategoryData
    from featurefield.fields.general.run import load_general_run

    data = CategoryData(mugs)
    teacher = TinyTeacher()
    torch.manual_seed(0)
    fresh = GeneralField(GeneralConfig(encoder=encoder, image_size=(32, 32), feature_dim=8, **TINY), teacher).eval()
    before = np.array([[_view_metrics(fresh, data, teacher, i, v) for v in range(1, 6)] for i in (0, 1)]).mean(1)
    run_dir = tmp_path / "run"
    summary = train_general(mugs, run_dir, teacher=teacher, config=GeneralConfig(encoder=encoder, **TINY),
                            train=GeneralTrainConfig(steps=160, batch=2, rays=128, lr=1e-2, workers=0, progress=False,
                                                     log_every=40, checkpoint_every=80))
    assert summary["done"] == 160 and summary["stopped"] is None
    run = load_general_run(run_dir, device="cpu", teacher=teacher)
    assert run.step == 160
    after = np.array([[_view_metrics(run.field, data, teacher, i, v) for v in range(1, 6)] for i in (0, 1)]).mean(1)
    # each instance's views 1-5 rendered from its view 0 alone: PSNR and feature cosine on the object
    for (p0, c0), (p1, c1) in zip(before, after):
        assert p1 > p0 + 2.5, (before, after)
        assert c1 > c0 + 0.3 and c1 > 0.5, (before, after)


def test_training_resumes_and_stops_at_the_deadline(mugs, tmp_path):
    teacher = TinyTeacher()
    cfg = GeneralConfig(encoder="cnn", **TINY)
    run_dir = tmp_path / "run"
    stopped = train_general(mugs, run_dir, teacher=teacher, config=cfg,
                            train=GeneralTrainConfig(steps=6, batch=1, rays=32, workers=0, progress=False, deadline=0.0))
    assert stopped["stopped"] == "deadline" and stopped["done"] == 1
    assert not (run_dir / "metrics.json").exists()
    with pytest.raises(FeatureFieldError, match="--resume"):
        train_general(mugs, run_dir, teacher=teacher, config=cfg, train=GeneralTrainConfig(steps=6, workers=0, progress=False))
    done = train_general(mugs, run_dir, teacher=teacher, config=cfg, resume=True,
                         train=GeneralTrainConfig(steps=6, batch=1, rays=32, workers=0, progress=False))
    assert done["done"] == 6 and done["stopped"] is None
    assert json.loads((run_dir / "metrics.json").read_text())["done"] == 6
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["step"] == 6


def test_the_run_records_where_the_teacher_weights_were(mugs, tmp_path, monkeypatch):
    """Found through $FEATUREFIELD_WEIGHTS while training, read from the run's record later (or --weights)."""
    from featurefield.fields.general.run import load_general_run
    from tests.toyteachers import write_toyprompt_weights

    weights = write_toyprompt_weights(tmp_path / "w")
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(weights))
    run_dir = tmp_path / "run"
    train_general(mugs, run_dir, teacher="toyprompt", config=GeneralConfig(encoder="cnn", **TINY),
                  train=GeneralTrainConfig(steps=1, batch=1, rays=32, workers=0, progress=False))
    assert json.loads((run_dir / "config.json").read_text())["teacher"]["weights"] == str(weights.resolve())
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "none"))
    assert load_general_run(run_dir, device="cpu").teacher().weights_path == weights.resolve() / "toyprompt.bin"
    moved = write_toyprompt_weights(tmp_path / "moved")
    assert load_general_run(run_dir, device="cpu", weights=moved).teacher().weights_path == moved / "toyprompt.bin"


def test_volume_queries_and_evaluation_run_on_a_trained_field(mugs, tmp_path):
    from featurefield.fields.general.evaluate import evaluate_general
    from featurefield.fields.general.queries import descriptor_map, transfer_keypoints, transfer_keypoints_3d
    from featurefield.fields.general.run import load_general_run

    teacher = TinyTeacher()
    run_dir = tmp_path / "run"
    train_general(mugs, run_dir, teacher=teacher, config=GeneralConfig(encoder="cnn", **TINY),
                  train=GeneralTrainConfig(steps=3, batch=1, rays=32, workers=0, progress=False))
    run = load_general_run(run_dir, device="cpu", teacher=teacher)
    data = run.data()
    a, b = data.instance(0, views=[0]), data.instance(2, views=[1])
    cond_a = run.field.encode(a["rgb"].permute(0, 3, 1, 2), a["cameras"])
    vol = feature_volume(run.field, cond_a, resolution=8, need=("feature", "descriptor"))
    assert vol["feature"].shape == (8, 8, 8, 8) and vol["descriptor"].shape == (8, 8, 8, 48) and vol["sigma"].shape == (8, 8, 8)
    uv_a = torch.tensor([[10.5, 12.5], [20.5, 16.5]])
    for source in ("teacher", "feature", "descriptor"):
        da, _ = descriptor_map(run.field, a["rgb"][0].permute(2, 0, 1), a["cameras"], source, teacher)
        db, _ = descriptor_map(run.field, b["rgb"][0].permute(2, 0, 1), b["cameras"], source, teacher)
        mask_b = b["depth"][0] > 0
        uv_b, score = transfer_keypoints(da, uv_a, db, mask_b)
        px = torch.floor(uv_b).long()
        assert mask_b[px[:, 1], px[:, 0]].all() and (score <= 1 + 1e-5).all()
        # a map matched against itself finds each query's own pixel
        uv_self, _ = transfer_keypoints(da, uv_a, da, torch.ones_like(mask_b))
        torch.testing.assert_close(uv_self, uv_a)
    cond_b = run.field.encode(b["rgb"].permute(0, 3, 1, 2), b["cameras"])
    xyz, _ = transfer_keypoints_3d(run.field, cond_a, a["cameras"], uv_a, cond_b, resolution=8)
    assert xyz.shape == (2, 3) and (xyz.abs() <= run.field.config.bound).all()
    from featurefield.fields.general.queries import orbit_cameras

    orbit = orbit_cameras(a["cameras"], 4)  # the input camera first, then around the object at its distance
    torch.testing.assert_close(orbit.c2w[0], a["cameras"].c2w[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(orbit.centers.norm(dim=-1), a["cameras"].centers.norm(dim=-1).expand(4))
    torch.testing.assert_close(orbit.centers[2, :2], -orbit.centers[0, :2], atol=1e-5, rtol=0)
    metrics = evaluate_general(run, instances=3, pairs=2, shots=(1,), novel_views=1, split="all", pairs_3d=1,
                               resolution_3d=8)
    for key in ("novel_view_psnr", "pck@0.1/teacher", "pck@0.1/feature", "pck@0.1/descriptor", "miou@1/teacher",
                "miou@1/descriptor", "kp3d_error/feature", "kp3d_error/descriptor", "pck3d@0.1/descriptor"):
        assert key in metrics and np.isfinite(metrics[key]), key


def test_wrong_image_size_is_a_user_error():
    fld = GeneralField(GeneralConfig(encoder="cnn", image_size=(32, 32), feature_dim=8, **TINY))
    with pytest.raises(FeatureFieldError, match="resize them to that size"):
        fld.encode(torch.zeros(1, 3, 24, 32), _toy_camera([0, 0, -3.0], size=32))


def test_cli_bad_inputs_give_one_line_and_exit_2(mugs, tmp_path, capsys):
    from featurefield.data.category import CategoryData
    from featurefield.fields.general.run import write_view

    teacher = TinyTeacher()
    run_dir = tmp_path / "run"
    train_general(mugs, run_dir, teacher=teacher, config=GeneralConfig(encoder="cnn", **TINY),
                  train=GeneralTrainConfig(steps=1, batch=1, rays=16, workers=0, progress=False))
    data = CategoryData(mugs)
    good = write_view(data, 0, 0, tmp_path / "a.png")
    from PIL import Image

    Image.new("RGB", (48, 40)).save(tmp_path / "small.png")
    (tmp_path / "small.json").write_text(good.with_suffix(".json").read_text())
    capsys.readouterr()
    code = main(["query", str(run_dir), "--image", str(tmp_path / "small.png"), "--keypoints", "10", "12",
                 "--to-image", str(good)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "48x40" in err and "32x32" in err
    # a run of another field kind
    other = tmp_path / "splat_run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"field": "splat"}))
    from featurefield.commands.general import general_eval_command

    with pytest.raises(FeatureFieldError, match="not a generalizable one"):
        general_eval_command(other)
    code = main(["train", "general", str(mugs), "--output", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--resume" in err
    # a verb for scene runs, given a general run
    code = main(["render", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "holds a general field" in err


def test_cli_make_category_and_query_a_general_run(mugs, tmp_path, capsys):
    from featurefield.data.category import CategoryData
    from featurefield.fields.general.run import write_view

    assert main(["make-category", "chairs", str(tmp_path / "chairs"), "--instances", "3", "--views", "2", "--size", "16",
                 "--workers", "1", "--supersample", "1", "--examples", "1"]) == 0
    assert CategoryData(tmp_path / "chairs").count == 3
    assert (tmp_path / "chairs" / "examples" / "instance00002_view00.png").is_file()
    run_dir = tmp_path / "run"
    train_general(mugs, run_dir, teacher=TinyTeacher(), config=GeneralConfig(encoder="cnn", **TINY),
                  train=GeneralTrainConfig(steps=1, batch=1, rays=16, workers=0, progress=False))
    data = CategoryData(mugs)
    a, b = write_view(data, 0, 0, tmp_path / "a.png"), write_view(data, 2, 1, tmp_path / "b.png")
    out = tmp_path / "q"
    assert main(["query", str(run_dir), "--image", str(a), "--keypoints", "10", "12", "20.5", "15",
                 "--to-image", str(b), "--segment", "2", "--output", str(out)]) == 0
    result = json.loads((out / "query.json").read_text())
    uv = np.array(result["to_keypoints"])
    assert uv.shape == (2, 2) and (uv >= 0).all() and (uv <= 32).all() and len(result["to_keypoints_3d"]) == 2
    assert set(result["parts"]) == {"background", "body", "handle", "rim"}
    for name in ("keypoints.png", "parts.png", "reconstruction.png", "novel_views.png", "novel_features.png"):
        assert (out / name).is_file(), name


class _BallField:
    """A stand-in field with analytic density (a ball of radius 0.3 at (0.2, 0, 0)) and position colours."""

    def __init__(self) -> None:
        self.config = GeneralConfig(encoder="cnn", samples=48, image_size=(24, 24), feature_dim=4)
        self.device = torch.device("cpu")
        self.calls: list[int] = []

    def __call__(self, points, dirs, cond, need=("rgb", "feature")):
        self.calls.append(points.shape[1])
        inside = (points - torch.tensor([0.2, 0.0, 0.0])).norm(dim=-1) < 0.3
        out = {"sigma": inside.float() * 30.0}
        if "rgb" in need:
            out["rgb"] = torch.sigmoid(points * 3)
        if "feature" in need:
            out["feature"] = torch.cat([points, points.square().sum(-1, keepdim=True)], -1)
        return out


def test_empty_space_skipping_matches_the_dense_render():
    from featurefield.fields.general.rendering import occupancy_grid

    fld = _BallField()
    cam = Cameras(c2w=torch.tensor([[[1.0, 0, 0, 0.1], [0, 0, 1, -2.5], [0, -1, 0, 0.1], [0, 0, 0, 1]]]),
                  fx=30.0, fy=30.0, cx=12.0, cy=12.0, width=24, height=24)  # looks along +y at the ball
    dense = render_view(fld, None, cam)
    grid = occupancy_grid(fld, None, resolution=16)
    assert 0 < grid.float().mean() < 0.1
    fld.calls.clear()
    fast = render_view(fld, None, cam, occupancy=grid)
    assert sum(fld.calls) < 0.2 * 24 * 24 * 48  # most samples skipped
    assert dense["alpha"].max() > 0.99 and dense["alpha"].min() < 0.01
    for key in ("alpha", "depth", "rgb", "feature"):
        torch.testing.assert_close(fast[key], dense[key], atol=1e-5, rtol=1e-5)


def test_teacher_cache_serves_the_teachers_features(mugs):
    import itertools

    from featurefield.data.category import CategoryData, InstanceStream
    from featurefield.fields.general.train import TeacherCache, _collate, _teacher_maps

    class Counting(TinyTeacher):
        calls = 0

        def extract(self, images):
            Counting.calls += 1
            return super().extract(images)

    data, teacher = CategoryData(mugs), Counting()
    cache = TeacherCache(teacher, 1.0, torch.device("cpu"))
    batches = [_collate(list(itertools.islice(iter(InstanceStream(mugs, seed=s)), 2))) for s in range(4)]
    for batch in batches:
        tgt = batch["tgt_rgb"].permute(0, 3, 1, 2).float() / 255
        direct = teacher.extract(tgt)
        torch.testing.assert_close(_teacher_maps(teacher, cache, data, batch, tgt, "tgt_view"), direct, atol=2e-3, rtol=0)
    assert set(cache.maps) == {0, 1} and Counting.calls == 4 + 2  # the 4 direct calls, one per cached instance
    assert _teacher_maps(teacher, TeacherCache(teacher, 1e-9, torch.device("cpu")), data, batches[0],
                         batches[0]["tgt_rgb"].permute(0, 3, 1, 2).float() / 255, "tgt_view").shape == (2, 8, 8, 8)


def test_a_loaded_scene_view_becomes_an_input_framed_like_the_category():
    from featurefield.data.category.render import DISTANCE
    from featurefield.data.demo_scene import make_demo_scene
    from featurefield.fields.general.run import view_from_scene

    scene = make_demo_scene(seed=0, size=48, height=40, views=2, supersample=1, points=64)
    img, cam = view_from_scene(scene, 1, (32, 32))
    assert img.shape == (3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert abs(float(cam.centers[0].norm()) - DISTANCE) < 1e-4
    # a scene point projects to the same place, up to the crop (48 x 40 -> centred 40 x 40) and resize (x 0.8)
    p = torch.tensor([[0.1, -0.2, 0.15]])
    canon = scene.normalization.cameras_to_canonical(scene.cameras[[1]])
    world_uv, _ = scene.cameras.project(p, 1)
    c = scene.normalization.to_canonical(p)
    s = DISTANCE / float(canon.centers[0].norm())
    uv, _ = cam.project(c * s, 0)  # scaling the frame about the origin keeps projections
    torch.testing.assert_close(uv, (world_uv - torch.tensor([4.0, 0.0])) * 0.8, atol=1e-3, rtol=0)
    # the picture follows: the crop's centre pixel is the original's
    orig = scene.images.load(1)
    torch.testing.assert_close(img[:, 16, 16], F.interpolate(orig[:, 4:44].permute(2, 0, 1)[None], size=(32, 32), mode="bilinear",
                                                              align_corners=False, antialias=True)[0, :, 16, 16])


@cuda
def test_cuda_renders_match_the_cpu(mugs):
    """The same field renders the same view, volume, skipped and marched view on the GPU as on the CPU (fp32)."""
    from featurefield.data.category import CategoryData
    from featurefield.fields.general.marching import march_view
    from featurefield.fields.general.rendering import occupancy_grid

    inst = CategoryData(mugs).instance(0, views=[0, 1])
    torch.manual_seed(0)
    cpu = GeneralField(GeneralConfig(encoder="cnn", image_size=(32, 32), feature_dim=8, **TINY)).eval()
    gpu = GeneralField(GeneralConfig(encoder="cnn", image_size=(32, 32), feature_dim=8, **TINY)).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda")
    outs = []
    for fld in (cpu, gpu):
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # the CNN's convolutions in true fp32
            cond = fld.encode(inst["rgb"][:1].permute(0, 3, 1, 2), inst["cameras"][0])
        view = render_view(fld, cond, inst["cameras"][1], need=("rgb", "feature", "descriptor"))
        vol = feature_volume(fld, cond, 8, need=("feature",))
        occ = occupancy_grid(fld, cond, 8)
        skipped = render_view(fld, cond, inst["cameras"][1], occupancy=occ)
        marched = march_view(fld, fld.fold(cond), inst["cameras"][1], occ, need=("rgb", "feature"))
        outs.append({**{f"view_{k}": v for k, v in view.items()}, "volume": vol["feature"], "skipped": skipped["rgb"],
                     "marched_rgb": marched["rgb"], "marched_feature": marched["feature"]})
    for key, value in outs[0].items():
        torch.testing.assert_close(outs[1][key].cpu(), value, atol=2e-4, rtol=1e-3, msg=key)
    # the GPU's fast settings: fp16 folded maps and autocast, and the fused Triton trunk (TINY's width 48 is not
    # a power of two: a width-64 twin), within fp16 rounding of the fp32 march
    with torch.autocast("cuda", dtype=torch.float16):
        half = march_view(gpu, gpu.fold(cond, torch.float16), inst["cameras"][1], occ, need=("rgb", "feature"))
    for key in ("rgb", "feature"):
        torch.testing.assert_close(half[key].cpu(), outs[0][f"marched_{key}"], atol=2e-2, rtol=2e-2, msg=key)
    from featurefield.fields.general.trunk_triton import FusedTrunk

    wide = GeneralField(GeneralConfig(encoder="cnn", image_size=(32, 32), feature_dim=8, **{**TINY, "width": 64})).eval().to("cuda")
    cond = wide.encode(inst["rgb"][:1].permute(0, 3, 1, 2), inst["cameras"][0])
    folded = wide.fold(cond, torch.float16)
    fused = FusedTrunk(wide, torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        plain = march_view(wide, folded, inst["cameras"][1], occ, need=("rgb", "feature", "descriptor"))
        kernel = march_view(wide, folded, inst["cameras"][1], occ, need=("rgb", "feature", "descriptor"), trunk=fused)
    assert fused.error is None, fused.error
    for key in plain:
        torch.testing.assert_close(kernel[key], plain[key], atol=2e-2, rtol=2e-2, msg=key)


def test_a_diverging_training_stops_with_one_line_and_keeps_the_last_good_checkpoint(mugs, tmp_path):
    class Broken(TinyTeacher):
        def extract(self, images):
            return super().extract(images) * float("nan")

    cfg = GeneralConfig(encoder="cnn", **TINY)
    run_dir = tmp_path / "run"
    train_general(mugs, run_dir, teacher=TinyTeacher(), config=cfg,
                  train=GeneralTrainConfig(steps=2, batch=1, rays=16, workers=0, progress=False))
    good = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    with pytest.raises(FeatureFieldError, match="diverged at step 3.*--resume"):
        train_general(mugs, run_dir, teacher=Broken(), config=cfg, resume=True,
                      train=GeneralTrainConfig(steps=4, batch=1, rays=16, workers=0, progress=False))
    kept = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert kept["step"] == 2
    for k, v in good["field_state"].items():
        torch.testing.assert_close(kept["field_state"][k], v)


def _look_at(eye, size: int, focal: float) -> Cameras:
    """A camera at ``eye`` looking at the origin, z up."""
    eye = torch.tensor(eye, dtype=torch.float32)
    f = -eye / eye.norm()
    r = torch.linalg.cross(f, torch.tensor([0.0, 0.0, 1.0]))
    r = r / r.norm()
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, torch.linalg.cross(f, r), f, eye
    return Cameras(c2w=c2w[None], fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


def _blob_field(occupied: float = 0.3, sharpness: float = 200.0, feature_dim: int = 8):
    """A tiny random field (CNN encoder, nonlinear trunk) whose density is steep random blobs filling about
    ``occupied`` of the sphere: many rays turn opaque, many stay empty. Returns the field and its encoded input."""
    from featurefield.fields.general.sampling import pixel_aligned

    torch.manual_seed(0)
    fld = GeneralField(GeneralConfig(encoder="cnn", image_size=(32, 32), feature_dim=feature_dim,
                                     **{**TINY, "frequencies": 1, "samples": 32}))
    fld.eval()
    cond = fld.encode(torch.rand(1, 3, 32, 32), _look_at([0.3, -2.6, 0.5], 32, 40.0))
    with torch.no_grad():
        for block in fld.trunk:  # blocks start as the identity; make the trunk nonlinear
            torch.nn.init.normal_(block.fc1.weight, std=0.2)
            torch.nn.init.normal_(block.fc1.bias, std=0.1)
        pts = torch.rand(1, 8000, 3) * 2 - 1
        z = pixel_aligned(pts, cond.maps, cond.w2c, cond.K, cond.image_size)
        d = fld.density(fld.run_trunk(pts, [layer(z) for layer in fld.cond])[0]).squeeze(-1)
        scale = sharpness / d.std()
        fld.density.weight.mul_(scale)
        fld.density.bias.sub_(d.quantile(1 - occupied)).mul_(scale)
    return fld, cond


def test_folded_conditioning_gives_the_pixel_aligned_terms():
    """Sampling the maps after the conditioning layers (embedding bags) = the layers after pixel_aligned."""
    from featurefield.fields.general.model import Conditioning
    from featurefield.fields.general.sampling import pixel_aligned

    torch.manual_seed(1)
    fld = GeneralField(GeneralConfig(encoder="cnn", image_size=(24, 32), feature_dim=8, **TINY)).eval()
    # two objects seen by two 32 x 24 views each
    cams = [[_look_at([0.4 * b, -2.6, 0.5], 32, 30.0), _look_at([2.4, 0.6 * b - 1, 0.3], 32, 30.0)] for b in range(2)]
    w2c = torch.stack([torch.cat([c.w2c() for c in views]) for views in cams])
    K = torch.stack([torch.cat([c.K() for c in views]) for views in cams])
    K[..., 1, 2] = 12.0
    cond = Conditioning(fld.encoder(torch.rand(4, 3, 24, 32)).reshape(2, 2, -1, 12, 16), w2c, K, (24, 32))
    # points around the object, some outside every image and some behind the first camera
    pts = torch.cat([torch.rand(2, 300, 3) * 2 - 1, torch.tensor([[0.0, -3.0, 0.5], [9.0, 9.0, 0.0]]).expand(2, 2, 3)], 1)
    z = pixel_aligned(pts, cond.maps, cond.w2c, cond.K, cond.image_size)
    assert 0.5 < float((z.abs().sum(-1) > 0).float().mean()) < 1  # most points are seen, not all
    plain = [layer(z) for layer in fld.cond]
    folded = fld.folded_terms(pts, fld.fold(cond))
    assert len(folded) == len(plain) == TINY["condition_blocks"]
    for a, b in zip(folded, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature_dim", [8, 64])  # features decoded per sample / once per ray (wider than the head)
def test_march_matches_the_skipped_render_and_evaluates_fewer_samples(feature_dim):
    from featurefield.fields.general.marching import march_view
    from featurefield.fields.general.rendering import occupancy_grid

    fld, cond = _blob_field(feature_dim=feature_dim)
    cam = _look_at([2.2, -1.2, 0.8], 24, 30.0)
    need = ("rgb", "feature", "descriptor")
    dense = render_view(fld, cond, cam, need=need)
    assert float((dense["alpha"] > 0.99).float().mean()) > 0.2 and float((dense["alpha"] < 0.01).float().mean()) > 0.2
    grid = occupancy_grid(fld, cond, 16)
    skipped = render_view(fld, cond, cam, need=need, occupancy=grid)
    folded = fld.fold(cond)
    exact_stats, fast_stats = {}, {}
    exact = march_view(fld, folded, cam, grid, need, transmittance=0, min_weight=0, stats=exact_stats)
    fast = march_view(fld, folded, cam, grid, need, stats=fast_stats)
    for key in ("alpha", "depth", "rgb", "feature", "descriptor"):
        # without its approximations the march is the skipped render (sums in another order)
        torch.testing.assert_close(exact[key], skipped[key], atol=2e-5, rtol=1e-5, msg=key)
        # early termination and head pruning move a ray by ~1e-4 of its values
        torch.testing.assert_close(fast[key], skipped[key], atol=5e-4 * float(skipped[key].abs().max()), rtol=0, msg=key)
    assert exact_stats["trunk_samples"] == exact_stats["head_samples"] or exact_stats["head_samples"] < exact_stats["trunk_samples"]
    assert fast_stats["trunk_samples"] < 0.85 * exact_stats["trunk_samples"]  # rays stop at their surface
    assert fast_stats["head_samples"] < 0.6 * exact_stats["head_samples"]


def test_volume_mode_is_the_trilinear_render_and_nears_the_field_as_the_volume_grows():
    from featurefield.fields.general.marching import march_volume
    from featurefield.fields.general.rendering import occupancy_grid

    fld, cond = _blob_field()
    cam = _look_at([2.2, -1.2, 0.8], 24, 30.0)
    field_view = render_view(fld, cond, cam, need=("feature",))
    errors = []
    for res in (8, 32):
        vol = feature_volume(fld, cond, res, need=("feature",))
        view = march_volume(vol, cam, fld.config.samples, fld.config.bound, need=("feature",))
        # its plain twin: the field replaced by trilinear lookups of the volume at every sample
        lookup = _TrilinearField(vol, fld.config)
        plain = render_view(lookup, None, cam, need=("feature",))
        for key in ("alpha", "depth", "feature"):
            torch.testing.assert_close(view[key], plain[key], atol=5e-4, rtol=1e-4, msg=key)
        errors.append(float((view["feature"] - field_view["feature"]).norm() / field_view["feature"].norm()))
    assert errors[1] < 0.5 * errors[0], errors
    assert occupancy_grid(fld, cond, 8).shape == (8, 8, 8)


class _TrilinearField:
    """A stand-in field that answers with trilinear lookups of a cached volume (the volume mode's plain twin)."""

    def __init__(self, vol, config) -> None:
        self.vol, self.config, self.device = vol, config, torch.device("cpu")

    def __call__(self, points, dirs, cond, need=("feature",)):
        def lookup(v):  # v [R, R, R, C] indexed x, y, z; grid_sample wants [C, z, y, x] and (x, y, z) coordinates
            grid = (points / self.config.bound).reshape(1, 1, 1, -1, 3)
            out = F.grid_sample(v.permute(3, 2, 1, 0)[None], grid, padding_mode="border", align_corners=False)
            return out.reshape(v.shape[-1], -1).T[None]

        out = {"sigma": lookup(self.vol["sigma"][..., None])[..., 0]}
        if "feature" in need:
            out["feature"] = lookup(self.vol["feature"])
        return out


def test_a_trunk_that_cannot_compile_runs_plain(monkeypatch):
    from featurefield.fields.general.marching import compile_trunk

    def broken(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    fld, cond = _blob_field()
    pts = torch.rand(1, 50, 3)
    terms = fld.folded_terms(pts, fld.fold(cond))
    trunk = compile_trunk(fld.run_trunk)
    h, _ = trunk(pts, terms)
    torch.testing.assert_close(h, fld.run_trunk(pts, terms)[0])
    assert trunk.error == "RuntimeError: no compiler here"


_FUSED_TRUNK_SCRIPT = textwrap.dedent("""
    import torch
    from featurefield.cameras import Cameras
    from featurefield.fields.general.marching import march_view, plain_trunk
    from featurefield.fields.general.model import GeneralConfig, GeneralField
    from featurefield.fields.general.trunk_triton import FusedTrunk

    def field(width):
        torch.manual_seed(0)
        fld = GeneralField(GeneralConfig(encoder="cnn", image_size=(16, 16), feature_dim=4, width=width, blocks=3,
                                         condition_blocks=2, descriptor_block=2, samples=8, cnn_dim=8, frequencies=2,
                                         dir_frequencies=1)).eval()
        for block in fld.trunk:  # blocks start as the identity: make every weight and bias count
            torch.nn.init.normal_(block.fc1.weight, std=0.2)
            torch.nn.init.normal_(block.fc1.bias, std=0.1)
        return fld

    c2w = torch.eye(4)[None]
    c2w[0, :3, 3] = torch.tensor([0.1, 0.0, -2.5])
    cam = Cameras(c2w=c2w, fx=15.0, fy=15.0, cx=8.0, cy=8.0, width=16, height=16)
    with torch.no_grad():
        fld = field(32)
        folded = fld.fold(fld.encode(torch.rand(1, 3, 16, 16), cam))
        pts = torch.rand(37, 3) * 2 - 1  # 3 blocks of 16 over 2 persistent programs, the last one partial
        h0, d0 = plain_trunk(fld, pts, folded, True)
        exact = FusedTrunk(fld, torch.float32, block=16, programs=2)
        h, d = exact(fld, pts, folded, True)
        assert exact.error is None, exact.error
        assert float((h - h0).abs().max()) < 1e-5 and float((d - d0).abs().max()) < 1e-5
        h16, _ = FusedTrunk(fld, torch.float16, block=16, programs=3)(fld, pts, folded, False)
        assert h16.dtype == torch.float16 and float((h16.float() - h0).abs().max()) < 1e-2 * float(h0.abs().max())
        # in the march, it renders what the plain trunk renders
        occ = torch.ones(8, 8, 8, dtype=torch.bool)  # every sample evaluated
        a = march_view(fld, folded, cam, occ, ("rgb", "feature", "descriptor"))
        b = march_view(fld, folded, cam, occ, ("rgb", "feature", "descriptor"), trunk=exact)
        for key in a:
            assert float((a[key] - b[key]).abs().max()) < 1e-5, key
        # a width the kernel does not take: the plain trunk, and why
        odd = field(24)
        fused = FusedTrunk(odd, torch.float32)
        h, _ = fused(odd, pts, odd.fold(odd.encode(torch.rand(1, 3, 16, 16), cam)), False)
        assert h.shape == (37, 24) and "power of two" in fused.error
    print("OK")
""")


def test_fused_trunk_kernel_matches_the_plain_trunk_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _FUSED_TRUNK_SCRIPT], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
