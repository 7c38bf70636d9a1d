"""A run records where its teachers' weights were found: `view`, `eval` and `query` need no `--weights` (they take one
to override), old runs without the record still load, and showing colour builds no teacher."""

from __future__ import annotations

import json
import shutil

import pytest

from featurefield.cli import main
from tests.toyteachers import PromptTeacher, write_toyprompt_weights


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    """A tiny splat run of ``toyprompt`` trained with ``--weights`` given as a relative path; its weights folder."""
    from featurefield.train import TrainConfig, train

    root = tmp_path_factory.mktemp("weights")
    weights = write_toyprompt_weights(root / "w")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("FEATUREFIELD_WEIGHTS", str(root / "nowhere"))
        mp.setenv("XDG_CACHE_HOME", str(root / "nowhere"))
        cfg = TrainConfig(steps=15, checkpoint_every=15, device="cpu", progress=False, cache_dir=root / "cache")
        run = train("demo:2", root / "run", field="splat", teachers=["toyprompt"], config=cfg, weights="w",
                    scene_options={"size": 24, "views": 12, "test_every": 4, "points": 300})
    return run.path, weights


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Another working folder, with no weights in $FEATUREFIELD_WEIGHTS or the user cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "none"))
    return tmp_path


def test_the_run_records_the_weights_folder_resolved(prompt_run):
    run, weights = prompt_run
    teacher = json.loads((run / "config.json").read_text())["teachers"][0]
    assert teacher["name"] == "toyprompt" and teacher["weights"] == str(weights.resolve())


def test_query_and_eval_find_the_recorded_weights(prompt_run, elsewhere, capsys):
    run, _ = prompt_run
    made = PromptTeacher.made
    assert main(["query", str(run), "--point", "12", "12", "--output", str(elsewhere / "q"), "--device", "cpu"]) == 0
    assert (elsewhere / "q" / "mask_prompt.png").is_file() and PromptTeacher.made == made + 1
    assert main(["eval", str(run), "--no-lpips", "--output", str(elsewhere / "m.json"), "--device", "cpu"]) == 0
    assert "mask_iou_rendered_vs_teacher" in json.loads((elsewhere / "m.json").read_text())["toyprompt"]


def test_moved_weights_are_found_with_the_weights_option(prompt_run, elsewhere, capsys):
    run, weights = prompt_run
    moved = elsewhere / "moved"
    shutil.copytree(run, moved / "run")
    config = json.loads((moved / "run" / "config.json").read_text())
    config["teachers"][0]["weights"] = str(moved / "gone")  # the recorded folder is no longer there
    (moved / "run" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["query", str(moved / "run"), "--point", "12", "12", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "toyprompt.bin" in err and "--weights PATH" in err
    assert main(["query", str(moved / "run"), "--point", "12", "12", "--device", "cpu", "--weights", str(weights)]) == 0
    # an option that does not exist is refused before any work, naming it
    assert main(["view", str(moved / "run"), "--weights", str(moved / "nothing")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_a_run_without_the_record_still_loads(prompt_run, elsewhere, monkeypatch):
    """A config.json written before the weights were recorded: the usual places are looked in."""
    from featurefield.run import load_run

    run, weights = prompt_run
    old = elsewhere / "old"
    shutil.copytree(run, old)
    config = json.loads((old / "config.json").read_text())
    for t in config["teachers"]:
        t.pop("weights")
        t["options"].pop("weights")
    (old / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(weights))
    loaded = load_run(old, device="cpu")
    assert loaded.teacher("toyprompt").weights_path == weights / "toyprompt.bin"


def test_showing_colour_and_features_builds_no_teacher(prompt_run, elsewhere):
    """The viewer's colour, depth and feature PCA need no teacher model; its prompt decoder is made when asked."""
    from featurefield.run import load_run
    from featurefield.viewer.renderer import ViewRenderer

    run, _ = prompt_run
    loaded = load_run(run, device="cpu")
    made, decoders = PromptTeacher.made, PromptTeacher.decoders
    renderer = ViewRenderer(loaded)
    cam = loaded.cameras("test")[[0]]
    for output in ("colour", "depth", "features: toyprompt"):
        renderer.render(cam, output)
    assert (PromptTeacher.made, PromptTeacher.decoders) == (made, decoders)
    assert "prompt: toyprompt" in renderer.outputs
    renderer.decoder()
    assert (PromptTeacher.made, PromptTeacher.decoders) == (made + 1, decoders + 1)


def test_everything_writes_a_legend_and_the_decoders_once(prompt_run, elsewhere, capsys):
    import imageio.v3 as iio
    import numpy as np

    from featurefield.fields.splat.ply import field_from_ply

    run, _ = prompt_run
    out = elsewhere / "all"
    capsys.readouterr()
    assert main(["query", str(run), "--everything", "--points-per-side", "6", "--extract", "--output", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    legend = json.loads((out / "legend.json").read_text())
    segments = legend["segments"]
    assert len(segments) >= 2 and len(printed) <= 4 and str(out) in printed[-1]
    assert sorted(p.name for p in out.glob("*.decoders.pt")) == [] and legend["decoders"] == "decoders.pt"
    assert (out / "decoders.pt").is_file() and (out / "legend.png").is_file()
    assert len({tuple(s["colour"]) for s in segments}) == len(segments)  # one colour per segment
    tinted = iio.imread(out / "segments.png")
    for s in segments:
        assert s["files"] and all((out / f).is_file() for f in s["files"])
        assert s["files"][0] == f"segment_{s['segment']:02d}.ply"
        assert s["points"] > 0 and s["pixels"] >= s["visible_pixels"]
    # the segment's colour is where its mask shows (tinted over the render)
    rgb = iio.imread(out / "rgb.png").astype(float)
    top = segments[0]
    expected = (0.45 * rgb + 0.55 * np.array(top["colour"], dtype=float)).round()
    assert (abs(tinted.astype(float) - expected).max(-1) < 1.5).sum() >= top["visible_pixels"]
    # each part's Gaussians read back with the shared decoders
    part = field_from_ply(out / segments[0]["files"][1])
    assert "toyprompt" in part.decoders


def test_the_viewer_starts_without_the_prompt_decoder(prompt_run, elsewhere):
    """`featurefield view` loads the prompt decoder when a prompt output is first chosen, not as it starts."""
    import socket
    import time

    from featurefield.viewer.server import serve

    run, _ = prompt_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    made, decoders = PromptTeacher.made, PromptTeacher.decoders
    server = serve(run, port=port, max_side=32, device="cpu", verbose=False)
    try:
        time.sleep(0.5)  # where it was loaded at start, in a thread of its own, a toy decoder takes no longer
        assert (PromptTeacher.made, PromptTeacher.decoders) == (made, decoders)
    finally:
        server.stop()
