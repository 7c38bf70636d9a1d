"""Outputs get the mode a plain open() would give them (0o666 less the umask), atomic writes included."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from featurefield.io import atomic_torch_save, atomic_write_json, default_mode


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_respect_the_umask(tmp_path, umask):
    from featurefield import viz
    from featurefield.export import write_point_cloud
    from featurefield.report import Report

    expected = 0o666 & ~umask
    assert default_mode() == expected and os.umask(umask) == umask  # reading it leaves it as it was
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == expected  # what every other file gets
    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    atomic_torch_save(tmp_path / "state.pt", {"a": torch.zeros(2)})
    viz.save_png(tmp_path / "picture.png", np.zeros((4, 4, 3), np.uint8))
    Report("t").write(tmp_path / "report.html")
    write_point_cloud(tmp_path / "points.ply", torch.zeros(3, 3), torch.zeros(3, 3))
    for name in ("metrics.json", "state.pt", "picture.png", "report.html", "points.ply"):
        assert _mode(tmp_path / name) == expected, name
