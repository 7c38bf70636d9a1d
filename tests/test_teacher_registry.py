"""Teacher registry: built-ins, entry-point plug-ins, unknown names."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from featurefield.errors import FeatureFieldError
from featurefield.teachers import base


def test_builtins_registered():
    names = base.available_teachers()
    assert {"sam", "clip", "dino"} <= set(names)


def test_entry_point_plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "ffplugin_demo.py"
    pkg.write_text(textwrap.dedent("""
        import torch
        from featurefield.teachers.base import Teacher

        class Const(Teacher):
            name = "const"
            dim = 5
            def feature_grid(self, height, width):
                return height // 2, width // 2
            def extract(self, images):
                n, _, h, w = images.shape
                return torch.ones(n, 5, h // 2, w // 2)

        def make(**options):
            return Const()
    """))
    dist = tmp_path / "ffplugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ffplugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[featurefield.teachers]\nconst = ffplugin_demo:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(base._REGISTRY, "const", raising=False)
    assert "const" in base.available_teachers()
    t = base.create_teacher("const")
    assert t.extract(torch.zeros(2, 3, 8, 6)).shape == (2, 5, 4, 3)
    base._REGISTRY.pop("const", None)
    sys.modules.pop("ffplugin_demo", None)


def test_unknown_teacher():
    with pytest.raises(FeatureFieldError, match="unknown teacher"):
        base.create_teacher("no-such-teacher")


def test_teachers_command_lists_all(capsys):
    from featurefield.commands.teachers import teachers_command

    assert teachers_command() == 0
    out = capsys.readouterr().out
    for name in ("sam", "clip", "dino"):
        assert name in out
