"""Run folders under faults (issue 23): one writer, resume that extends or repoints, broken folders, full and
read-only disks, divergence — each a one-line error that keeps the last good state."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from featurefield.errors import FeatureFieldError
from featurefield.fields.splat.config import SplatConfig
from featurefield.run import load_run
from featurefield.run_config import CHECKPOINT
from featurefield.train import TrainConfig, train

DEMO = {"size": 32, "views": 12}


def cfg(steps=4, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, checkpoint_every=2, log_every=1, device="cpu", progress=False, **kw)


def quick(out: Path, steps=4, scene="demo:1", **kw):
    return train(scene, out, field="splat", teachers=[], config=cfg(steps), scene_options=None if "demo" not in str(scene)
                 else DEMO, **kw)


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory) -> Path:
    """One small trained run that the tests damaging a run folder copy (training it once keeps the file fast)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    quick(run, steps=2)
    return run


def ckpt_step(run: Path) -> int:
    return int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)["step"])


@pytest.mark.parametrize(("kw", "words"), [
    ({"steps": 0}, "--steps must be at least 1"), ({"steps": -5}, "--steps"), ({"eval_every": -1}, "--eval-every"),
    ({"checkpoint_every": 0}, "--checkpoint-every"), ({"log_every": 0}, "--log-every"),
])
def test_bad_loop_values_are_refused(kw, words):
    with pytest.raises(FeatureFieldError, match=words):
        TrainConfig(**kw)


@pytest.mark.parametrize(("field_cfg", "words"), [
    (SplatConfig(embed_dim=0), "--splat.embed-dim must be at least 1"), (SplatConfig(sh_degree=9), "at most 3"),
    (SplatConfig(lr_scales=float("nan")), "finite"), (SplatConfig(lr_means=-1.0), ">= 0"),
    (SplatConfig(feature_supersample=0), "--splat.feature-supersample"),
])
def test_bad_field_values_are_refused_before_the_run_folder_exists(tmp_path, field_cfg, words):
    with pytest.raises(FeatureFieldError, match=words):
        train("demo:1", tmp_path / "run", teachers=["dino:pretrained=random,resolution=56"], config=cfg(),
              field_config=field_cfg, scene_options=DEMO)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("teacher", "words"), [
    ("sam:foo=1", "unknown option 'foo'"), ("dino:pretrained=random,resolution=abc", "resolution='abc'"),
    ("dino@abc", "loss weight"), ("dino@-1", "loss weight"), ("nosuch", "unknown teacher"),
])
def test_bad_teacher_options_are_refused_before_the_run_folder_exists(tmp_path, teacher, words):
    with pytest.raises(FeatureFieldError, match=words):
        train("demo:1", tmp_path / "run", teachers=[teacher], config=cfg(), scene_options=DEMO)
    assert not (tmp_path / "run").exists()


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    """Issue 23 (3): two trainings into one --output both 'succeeded', interleaving their files."""
    from featurefield.runlock import run_lock

    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):  # another training holds the folder
        with pytest.raises(FeatureFieldError, match=f"another training \\(pid {os.getpid()}"):
            quick(run)
    assert not (run / "config.json").exists()
    (run / ".lock").write_text("pid 999999 on a-host-long-gone\n")  # left by a killed process
    quick(run)
    assert ckpt_step(run) == 4


def test_resume_with_more_steps_extends_the_run_and_keeps_one_log(tmp_path):
    run = tmp_path / "run"
    quick(run, steps=4)
    with open(run / "metrics.jsonl", "a") as f:  # what a session killed after its last checkpoint had logged
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    train("demo:1", run, config=cfg(steps=8), resume=True)
    assert ckpt_step(run) == 8 and json.loads((run / "metrics.json").read_text())["steps"] == 8
    assert json.loads((run / "config.json").read_text())["trainer"]["steps"] == 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if not r.get("final")]
    assert steps == list(range(1, 9))  # no repeat, nothing out of order
    assert [r.get("final") for r in records].count(True) == 1 and records[-1].get("final")
    with pytest.raises(FeatureFieldError, match="at step 8, past --steps 6"):
        train("demo:1", run, config=cfg(steps=6), resume=True)
    assert ckpt_step(run) == 8


def test_resume_points_a_run_at_its_moved_scene_but_not_at_another(tmp_path):
    from featurefield.data import load_scene
    from featurefield.data.nerfstudio import write_nerfstudio

    write_nerfstudio(load_scene("demo:1", **DEMO), tmp_path / "scene")
    write_nerfstudio(load_scene("demo:2", **DEMO), tmp_path / "other")
    run = tmp_path / "run"
    quick(run, steps=2, scene=tmp_path / "scene")
    (tmp_path / "scene").rename(tmp_path / "moved")
    train(tmp_path / "moved", run, config=cfg(steps=4), resume=True)
    assert ckpt_step(run) == 4
    assert json.loads((run / "config.json").read_text())["scene"]["path"] == str((tmp_path / "moved").resolve())
    assert load_run(run, device="cpu").scene() is not None
    with pytest.raises(FeatureFieldError, match="is not the scene"):
        train(tmp_path / "other", run, config=cfg(steps=6), resume=True)
    with pytest.raises(FeatureFieldError, match="is not the scene"):
        train("demo:2", run, config=cfg(steps=6), resume=True, scene_options=DEMO)
    assert ckpt_step(run) == 4


@pytest.mark.parametrize(("damage", "words"), [
    (lambda r: (r / "config.json").write_text("{broken"), "broken JSON"),
    (lambda r: (r / "config.json").write_text("[]"), "not a featurefield run config"),
    (lambda r: (r / "config.json").write_text("{}"), "not a featurefield run config"),
    (lambda r: (r / "normalization.json").unlink(), "normalization.json is missing"),
    (lambda r: (r / "normalization.json").write_text('{"center": "x", "scale": 1}'), "normalization.json: broken"),
    (lambda r: (r / CHECKPOINT).write_bytes((r / CHECKPOINT).read_bytes()[:500]), "cannot read checkpoint"),
])
def test_a_broken_run_folder_is_one_line_for_resume_and_load(tmp_path, two_step_run, damage, words):
    run = tmp_path / "run"
    shutil.copytree(two_step_run, run)
    damage(run)
    with pytest.raises(FeatureFieldError, match=words):
        train("demo:1", run, config=cfg(steps=4), resume=True)
    with pytest.raises(FeatureFieldError):  # render, eval, query, export load it this way
        load_run(run, device="cpu")


def test_output_paths_that_cannot_be_a_run_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatureFieldError, match="names an existing file"):
        quick(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    import featurefield.outputs as outputs

    # a read-only place (tests run as root in CI, where permission bits do not stop writes: simulate the mount)
    monkeypatch.setattr(outputs, "read_only_fs", lambda p: True)
    with pytest.raises(FeatureFieldError, match="is not writable"):
        quick(tmp_path / "ro" / "run")
    assert not (tmp_path / "ro").exists()


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import featurefield.train as train_mod

    real = train_mod.atomic_torch_save
    calls = []

    def fills_up(path, obj):  # the second checkpoint finds the disk full mid-write
        calls.append(path)
        if len(calls) == 2:
            with open(path.with_name(".half.tmp"), "wb") as f:
                f.write(b"x" * 100)
            os.unlink(path.with_name(".half.tmp"))
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/3: "
                               "file write failed")
        return real(path, obj)

    monkeypatch.setattr(train_mod, "atomic_torch_save", fills_up)
    run = tmp_path / "run"
    with pytest.raises(FeatureFieldError, match=r"cannot write the checkpoint of step 4 .* previous checkpoint \(step 2\) is intact"):
        quick(run, steps=6)
    assert ckpt_step(run) == 2
    monkeypatch.setattr(train_mod, "atomic_torch_save", real)
    train("demo:1", run, config=cfg(steps=6), resume=True)  # space again: it continues
    assert ckpt_step(run) == 6


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    """Issue 23: free space is checked before training, in one line saying how much is needed and how much is free."""
    import featurefield.train as train_mod

    real_usage = shutil.disk_usage
    free = {"bytes": 1 << 20}  # 1 MiB: less than one checkpoint of the demo's Gaussians (~3 MiB)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=free["bytes"]))
    started, real_loop = [], train_mod.Trainer._loop
    monkeypatch.setattr(train_mod.Trainer, "_loop", lambda self, *a: started.append(a) or real_loop(self, *a))
    run = tmp_path / "run"
    with pytest.raises(FeatureFieldError, match=r"needs about \d.* MiB free .* but 1\.0 MiB are free.*run the same command") as info:
        quick(run, steps=4)
    assert "\n" not in str(info.value) and not started and not (run / CHECKPOINT).exists()
    free["bytes"] = 1 << 40
    quick(run, steps=4)  # space again: the same command trains
    assert ckpt_step(run) == 4
    free["bytes"] = 1 << 20
    with pytest.raises(FeatureFieldError, match=r"checkpoint of step 4 is intact\), then continue with .* --resume"):
        train("demo:1", run, config=cfg(steps=8), resume=True)
    assert ckpt_step(run) == 4


def test_the_checkpoint_size_estimate_is_close_to_the_written_file(tmp_path):
    """The free-space check sizes a checkpoint from the field before one exists: within 25% of the real file."""
    from featurefield.train import checkpoint_bytes

    for teachers in ([], ["dino:pretrained=random,resolution=56"]):
        out = tmp_path / f"run{len(teachers)}"
        run = train("demo:1", out, teachers=teachers, config=cfg(steps=2), scene_options=DEMO)
        written = (out / CHECKPOINT).stat().st_size
        assert 0.8 * written <= checkpoint_bytes(run.field) <= 1.25 * written, (checkpoint_bytes(run.field), written)


def test_a_full_disk_anywhere_else_is_one_line_too(tmp_path, monkeypatch):
    import featurefield.train as train_mod

    real = train_mod.Trainer.evaluate

    def enospc(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.json"))

    monkeypatch.setattr(train_mod.Trainer, "evaluate", enospc)
    with pytest.raises(FeatureFieldError, match="No space left on device.*checkpoint \\(step 4\\) is intact"):
        quick(tmp_path / "run", steps=4)
    monkeypatch.setattr(train_mod.Trainer, "evaluate", real)


@pytest.mark.parametrize(("field_cfg", "setting"), [
    (SplatConfig(lr_scales=1e6), "--splat.lr-scales 1e+06 (default 0.005)"),
    (SplatConfig(lr_means=1e9), "--splat.lr-means 1e+09"),
])
def test_divergence_whatever_the_cause_names_the_likely_setting(tmp_path, field_cfg, setting):
    """lr-scales 1e6 used to end in 'element 0 of tensors does not require grad'."""
    with pytest.raises(FeatureFieldError, match="training diverged") as info:
        train("demo:1", tmp_path / "run", teachers=[], config=cfg(steps=40), field_config=field_cfg, scene_options=DEMO)
    msg = str(info.value)
    assert setting in msg and "\n" not in msg
    if (tmp_path / "run" / CHECKPOINT).exists():  # the last good one: finite, loadable
        assert f"(step {ckpt_step(tmp_path / 'run')})" in msg
        load_run(tmp_path / "run", device="cpu")
    else:
        assert "no checkpoint was written yet" in msg


def test_divergence_is_found_within_ten_steps_not_at_the_next_checkpoint(tmp_path):
    """With --splat.lr-scales 1e6 the parameters turn NaN within a few steps while the loss stays finite (the rasterizer
    culls such Gaussians): it used to train on until the checkpoint (step 20 here) before saying so."""
    config = TrainConfig(steps=20, checkpoint_every=20, log_every=100, device="cpu", progress=False)
    with pytest.raises(FeatureFieldError, match=r"training diverged at step \d+ \(non-finite parameters: ") as info:
        train("demo:1", tmp_path / "run", teachers=[], config=config, field_config=SplatConfig(lr_scales=1e6),
              scene_options=DEMO)
    step = int(str(info.value).split("at step ")[1].split()[0])
    assert step in (0, 9) and "--splat.lr-scales 1e+06" in str(info.value)  # a scan on a CPU, not the checkpoint's 19


def test_the_demo_scene_options_are_checked(tmp_path):
    for options, words in (({"size": "abc"}, "size must be a whole number"), ({"background": [0, 0]}, "background"),
                           ({"views": 1}, "views")):
        with pytest.raises(FeatureFieldError, match=words):
            train("demo:1", tmp_path / "run", teachers=[], config=cfg(), scene_options=options)
    with pytest.raises(FeatureFieldError, match="demo:SEED"):
        train("demo:abc", tmp_path / "run", teachers=[], config=cfg())
    assert not (tmp_path / "run").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
