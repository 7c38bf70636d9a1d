"""Fuzzed scene files and command-line values (hypothesis, bounded): every outcome is exit 0, or exit 2 with
exactly one line on stderr and nothing written; never a traceback (issue 23)."""

from __future__ import annotations

import json
import math
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from featurefield.cli import main  # noqa: E402

# small and derandomized: the whole file takes well under a minute on 2 idle cores; the deadline catches a
# case that stalls (a truncated COLMAP file used to take 81 s) without flaking on a busy CI machine
FUZZ = settings(max_examples=15, deadline=timedelta(seconds=60), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: any JSON value a hand-edited file might hold where a number is expected
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 2000) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=6,
)


def _outcome(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run the CLI in this process; an exception escaping ``main`` fails the test (it would be a traceback)."""
    try:
        code = main(argv)
    except SystemExit as e:  # tyro's own parse errors
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def _assert_clean(code, err, written: Path | None = None):
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1, err
        assert "Traceback" not in err[0]
        if written is not None:
            assert not written.exists(), f"{written} was written before the refusal"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 16, 4), dtype=np.uint8)).save(folder / f"r_{i}.png")
    return folder


def _frames(n=3):
    out = []
    for i in range(n):
        c2w = np.eye(4)
        c2w[:3, 3] = [math.cos(i), math.sin(i), 2.0]
        out.append({"file_path": f"./img/r_{i}", "transform_matrix": c2w.tolist()})
    return out


@FUZZ
@given(key=st.sampled_from(["camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h", "frames"]), value=json_values,
       frame_key=st.sampled_from(["file_path", "transform_matrix", None]), frame_value=json_values)
def test_fuzzed_blender_files_are_loaded_or_refused_in_one_line(tmp_path, images, capsys, key, value, frame_key,
                                                                frame_value):
    root = tmp_path / "scene"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "img").symlink_to(images)
    for split in ("train", "test"):
        meta = {"camera_angle_x": 0.7, "frames": _frames()}
        if split == "train":
            meta[key] = value
            if frame_key is not None and isinstance(meta["frames"], list) and meta["frames"]:
                meta["frames"][1][frame_key] = frame_value
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    _assert_clean(*_outcome(["inspect", str(root)], capsys))


@FUZZ
@given(steps=st.integers(-3, 2), checkpoint_every=st.integers(-2, 3), eval_every=st.integers(-2, 2),
       embed_dim=st.integers(-1, 3), size=st.one_of(st.integers(-5, 20).map(str), st.text(max_size=4)),
       seed=st.one_of(st.integers(0, 3).map(str), st.text(max_size=3)),
       teacher=st.one_of(st.none(), st.sampled_from(["dino:pretrained=random,resolution=28", "dino:resolution=x",
                                                      "sam:foo=1", "dino@-1", "dino@x", "nosuch", "dino:pretrained"])))
def test_fuzzed_train_values_train_or_are_refused_before_any_file(tmp_path, capsys, steps, checkpoint_every,
                                                                   eval_every, embed_dim, size, seed, teacher):
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", f"demo:{seed}", "--output", str(out), "--device", "cpu", "--steps", str(steps),
            "--checkpoint-every", str(checkpoint_every), "--eval-every", str(eval_every),
            "--splat.embed-dim", str(embed_dim), "--splat.init-points-random", "200", "--final-eval-views", "1",
            "--cache-dir", str(tmp_path / "cache"), "--scene-option", f"size={size}", "views=4"]
    argv += ["--no-features"] if teacher is None else ["--teacher", teacher]
    code, err = _outcome(argv, capsys)
    _assert_clean(code, err, out)
    if code == 0:
        assert (out / "checkpoints" / "latest.pt").is_file()


@FUZZ
@given(verb=st.sampled_from(["render", "eval", "export"]), frames=st.integers(-2, 2), fps=st.integers(-1, 2),
       max_views=st.integers(-1, 1), to_file=st.booleans())
def test_fuzzed_values_on_a_trained_run(tmp_path_factory, trained, capsys, verb, frames, fps, max_views, to_file):
    run = trained
    out = tmp_path_factory.mktemp("out") / "o"
    if to_file:  # the wrong kind of thing where the output goes: a file for a folder (a folder for eval's JSON)
        out.mkdir() if verb == "eval" else out.write_text("x")
    argv = {"render": ["render", str(run), "--path", "orbit", "--frames", str(frames), "--fps", str(fps),
                       "--outputs", "rgb"],
            "eval": ["eval", str(run), "--max-views", str(max_views), "--no-lpips"],
            "export": ["export", str(run)]}[verb]
    code, err = _outcome([*argv, "--output", str(out), "--device", "cpu"], capsys)
    _assert_clean(code, err, None if to_file else out)
    if to_file:
        assert code == 2 and (out.is_dir() and not any(out.iterdir()) if verb == "eval" else out.read_text() == "x")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fuzz_run") / "run"
    assert main(["train", "demo:1", "--output", str(run), "--device", "cpu", "--steps", "2", "--no-features",
                 "--scene-option", "size=16", "views=4", "--splat.init-points-random", "200"]) == 0
    return run
