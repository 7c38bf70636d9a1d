"""The shared trainer: run folders, checkpoints, resume after a kill or a stop signal, NaN guard, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featurefield.cli import main
from featurefield.errors import FeatureFieldError
from featurefield.run import load_run
from featurefield.run_config import CHECKPOINT
from featurefield.stopping import StopRequest
from featurefield.teachers import TeacherSpec
from featurefield.train import TrainConfig, train

DEMO = {"size": 32, "views": 12}


def _train_cmd(out: Path, steps: int, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "featurefield.cli", "train", "demo:1", "--output", str(out), "--field", "splat",
            "--no-features", "--steps", str(steps), "--checkpoint-every", "10", "--device", "cpu",
            "--scene-option", "size=32", "views=12", *extra]


def test_parse_teacher_options_and_weight():
    spec = TeacherSpec.parse("clip:model=ViT-B-16,pretrained=random,size=224@0.5")
    assert spec == TeacherSpec("clip", {"model": "ViT-B-16", "pretrained": "random", "size": 224}, 0.5)
    assert spec.to_dict() == {"name": "clip", "options": spec.options, "weight": 0.5}
    # --weights goes to the teachers whose weights are a file or folder on disk (sam), not to the others
    assert TeacherSpec.parse("sam", weights=Path("/w")).options == {"weights": "/w"}
    assert TeacherSpec.parse("dino", weights=Path("/w")).options == {}
    assert TeacherSpec.parse({"name": "sam", "options": {"weights": "/x"}}, weights=Path("/w")).options == {"weights": "/x"}
    with pytest.raises(FeatureFieldError):
        TeacherSpec.parse("clip:model")
    with pytest.raises(FeatureFieldError, match="loss weight"):
        TeacherSpec.parse("clip@heavy")


def test_the_final_evaluation_covers_all_test_views_unless_capped(tmp_path):
    capped = TrainConfig(steps=2, device="cpu", progress=False, final_eval_views=1)
    train("demo:1", tmp_path / "capped", field="splat", teachers=[], config=capped, scene_options=DEMO)
    train("demo:1", tmp_path / "all", field="splat", teachers=[], config=TrainConfig(steps=2, device="cpu", progress=False),
          scene_options=DEMO)
    views = {k: json.loads((tmp_path / k / "metrics.json").read_text())["test/views"] for k in ("capped", "all")}
    assert views["capped"] == 1 < views["all"]
    with pytest.raises(FeatureFieldError, match="--final-eval-views"):
        TrainConfig(final_eval_views=0)


def test_run_folder_is_complete_and_reloads(tmp_path):
    run = train("demo:1", tmp_path / "run", field="splat", teachers=[],
                config=TrainConfig(steps=30, checkpoint_every=10, device="cpu", progress=False), scene_options=DEMO)
    for name in ("config.json", "normalization.json", "metrics.json", "metrics.jsonl", str(CHECKPOINT)):
        assert (tmp_path / "run" / name).is_file(), name
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["scene"]["path"] == "demo:1" and cfg["scene"]["options"] == DEMO and cfg["field"] == "splat"
    assert cfg["field_config"]["strategy"] == "default"  # "auto" as resolved on the CPU, so the config reproduces it
    assert run.step == 30
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["steps"] == 30 and summary["test/psnr"] > 5
    again = load_run(tmp_path / "run", device="cpu")
    a = {k: v for k, v in run.field.state_dict().items() if torch.is_tensor(v)}
    b = {k: v for k, v in again.field.state_dict().items() if torch.is_tensor(v)}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a second train into the same folder must not clobber it
    with pytest.raises(FeatureFieldError, match="--resume"):
        train("demo:1", tmp_path / "run", field="splat", teachers=[], config=TrainConfig(steps=5, device="cpu"),
              scene_options=DEMO)


@pytest.mark.slow
def test_resume_after_kill_or_stop_reaches_the_same_result(tmp_path):
    # One thread in every leg: CPU index_put_(accumulate=True) (the backward of gathers) sums in a
    # thread-dependent order, so two multi-threaded runs may differ in the last bits even without a kill.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    steps = 60
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, steps), check=True, capture_output=True, timeout=600, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    ckpt = killed / CHECKPOINT
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] >= 20:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail("training finished before it could be killed; raise the step count")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert 10 <= step_at_kill < steps
    resumed = subprocess.run([sys.executable, "-m", "featurefield.cli", "train", "demo:1", "--output", str(killed),
                              "--resume", "--device", "cpu"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {step_at_kill}" in " ".join(resumed.stderr.split())

    a = torch.load(reference / CHECKPOINT, weights_only=False)
    b = torch.load(killed / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"] == steps
    assert a["elapsed"]["sessions"] == 1 and b["elapsed"]["sessions"] == 2
    summary = json.loads((killed / "metrics.json").read_text())  # timings add up over both sessions
    assert summary["sessions"] == 2 and summary["train_seconds"] > summary["session_train_seconds"] > 0
    _assert_same_state(a["field_state"], b["field_state"])

    # SIGTERM (a scheduler's limit, `timeout`): the step finishes, a checkpoint is written at it, exit 143;
    # no periodic checkpoint here, so the one found is the stop's
    stopped = tmp_path / "stopped"
    step_at_stop, err = _stop_with_sigterm(_train_cmd(stopped, steps, ["--checkpoint-every", "1000"]), stopped, env)
    assert 1 <= step_at_stop < steps and f"at step {step_at_stop} of {steps}" in err and "--resume" in err
    assert not (stopped / "metrics.json").exists()
    _resume(stopped, env)
    _assert_same_state(a["field_state"], torch.load(stopped / CHECKPOINT, weights_only=False)["field_state"])


def _stop_with_sigterm(cmd: list[str], out: Path, env: dict) -> tuple[int, str]:
    """Start a training, send SIGTERM once it is in its loop; the step its checkpoint holds, and its stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("training finished before it could be stopped; raise the step count")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    return int(torch.load(out / CHECKPOINT, weights_only=False)["step"]), err


def _resume(out: Path, env: dict) -> None:
    resumed = subprocess.run([sys.executable, "-m", "featurefield.cli", "train", "demo:1", "--output", str(out), "--resume",
                              "--device", "cpu"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr


def _assert_same_state(a: dict, b: dict) -> None:
    for k, v in a.items():
        if torch.is_tensor(v) and v.is_floating_point():
            assert torch.allclose(v, b[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.slow
def test_a_nerf_stopped_by_sigterm_resumes_to_the_same_result(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "featurefield.cli", "train", "demo:1", "--field", "nerf", "--no-features", "--steps", "80",
            "--checkpoint-every", "1000", "--device", "cpu", "--scene-option", "size=32", "views=12", "--output"]
    subprocess.run([*base, str(tmp_path / "reference")], check=True, capture_output=True, timeout=600, env=env)
    stopped = tmp_path / "stopped"
    step, _ = _stop_with_sigterm([*base, str(stopped)], stopped, env)
    assert 1 <= step < 80
    _resume(stopped, env)
    # the proposal schedule, the step counter (a buffer) and the RNG all continue where they stopped
    a = torch.load(tmp_path / "reference" / CHECKPOINT, weights_only=False)["field_state"]
    b = torch.load(stopped / CHECKPOINT, weights_only=False)["field_state"]
    _assert_same_state(a, b)
    assert torch.equal(a["steps_done"], b["steps_done"])


def test_a_stop_during_the_last_step_leaves_the_final_evaluation_to_resume(tmp_path, monkeypatch):
    from featurefield.stopping import TrainingStopped
    from featurefield.train import Trainer

    original = Trainer.step

    def step(self, fld, step, generator, nonfinite):
        if step == 4:  # the last of 5
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, fld, step, generator, nonfinite)

    monkeypatch.setattr(Trainer, "step", step)
    cfg = TrainConfig(steps=5, checkpoint_every=100, device="cpu", progress=False)
    with pytest.raises(TrainingStopped, match="at step 5 of 5") as stopped:
        train("demo:1", tmp_path / "run", field="splat", teachers=[], config=cfg, scene_options=DEMO)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["step"] == 5
    assert not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.setattr(Trainer, "step", original)
    train("demo:1", tmp_path / "run", field="splat", teachers=[], config=cfg, scene_options=DEMO, resume=True)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 5


def test_stop_request_catches_the_first_signal_and_interrupts_on_the_second():
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_commands_other_than_train_and_features_refuse_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["export", str(tmp_path / "run"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torchrun" in err and "features" in err and "train" in err
    assert not (tmp_path / "o").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
    assert main(["render", str(tmp_path)]) == 2
    assert "not a featurefield run" in capsys.readouterr().err
    assert main(["train", "demo:1", "--output", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_broken_checkpoint_is_a_clear_error(tmp_path, capsys):
    train("demo:1", tmp_path / "run", field="splat", teachers=[],
          config=TrainConfig(steps=5, checkpoint_every=5, device="cpu", progress=False), scene_options=DEMO)
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "run")]) == 2
    assert "broken" in capsys.readouterr().err


def test_reloaded_scene_keeps_the_runs_recorded_normalization(tmp_path):
    train("demo:1", tmp_path / "run", field="splat", teachers=[],
          config=TrainConfig(steps=4, checkpoint_every=4, device="cpu", progress=False), scene_options=DEMO)
    path = tmp_path / "run" / "normalization.json"
    recorded = json.loads(path.read_text())
    recorded["scale"] *= 1.5  # as if the scene folder had changed since training
    path.write_text(json.dumps(recorded))
    run = load_run(tmp_path / "run", device="cpu")
    assert run.scene().normalization.scale == pytest.approx(recorded["scale"])
    assert main(["train", "demo:1", "--output", str(tmp_path / "run"), "--resume", "--device", "cpu"]) == 0
    assert json.loads(path.read_text()) == recorded  # resuming neither re-fits nor rewrites it


def test_nan_loss_stops_with_the_last_good_checkpoint_kept(tmp_path, monkeypatch):
    from featurefield.fields.splat.model import GaussianField

    original = GaussianField.training_loss

    def poisoned(self, batch, data, step):
        out = original(self, batch, data, step)
        if step >= 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GaussianField, "training_loss", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(FeatureFieldError, match="diverged.*last good checkpoint"):
        train("demo:1", run_dir, field="splat", teachers=[], scene_options=DEMO,
              config=TrainConfig(steps=20, checkpoint_every=2, device="cpu", progress=False))
    ckpt = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert ckpt["step"] == 4  # written before the first bad step; never overwritten with NaNs
    assert all(torch.isfinite(v).all() for v in ckpt["field_state"].values() if torch.is_tensor(v) and v.is_floating_point())


def test_out_of_gpu_memory_names_the_options_that_lower_it_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from featurefield.fields.splat.model import GaussianField

    original = GaussianField.training_loss

    def exhausted(self, batch, data, step):
        if step >= 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch, data, step)

    monkeypatch.setattr(GaussianField, "training_loss", exhausted)
    run_dir = tmp_path / "run"
    with pytest.raises(FeatureFieldError, match="out of GPU memory at step 5") as err:
        train("demo:1", run_dir, field="splat", teachers=[], scene_options=DEMO,
              config=TrainConfig(steps=20, checkpoint_every=2, device="cpu", progress=False))
    message = str(err.value)
    assert "\n" not in message and "--splat.max-gaussians" in message and "--downscale" in message
    assert torch.load(run_dir / CHECKPOINT, weights_only=False)["step"] == 4  # what was written is kept


def test_test_view_features_are_extracted_only_when_an_evaluation_needs_them(tmp_path):
    import torch.nn.functional as F

    from featurefield.data import load_scene
    from featurefield.teachers.base import Teacher, register_teacher
    from featurefield.train import Trainer

    seen: list[int] = []

    class CountingTeacher(Teacher):
        dim = 4

        def feature_grid(self, height, width):
            return height // 4, width // 4

        def extract(self, images):
            seen.append(len(images))
            return F.avg_pool2d(images.float(), 4)[:, [0, 1, 2, 0]]

        def settings(self):
            return {"name": "toycount", "dim": 4, "version": 1}

    register_teacher("toycount")(lambda **o: CountingTeacher())
    scene = load_scene("demo:1", **DEMO)
    train_views, test_views = scene.split["train"], scene.split["test"]
    trainer = Trainer(tmp_path / "run", scene, "splat", None, [TeacherSpec.parse("toycount")],
                      TrainConfig(device="cpu", progress=False, cache_dir=tmp_path / "cache"))
    trainer.prepare()
    assert sum(seen) == len(train_views)  # the training views only
    first = trainer.test_features("toycount", test_views[:1])
    assert sum(seen) == len(train_views) + 1 and first.read(0).shape == (4, 8, 8)
    both = trainer.test_features("toycount", test_views[:2])
    assert sum(seen) == len(train_views) + 2 and (both.read(0) == first.read(0)).all()  # the first one is kept


def test_a_nerf_run_records_its_resolved_settings(tmp_path):
    """The NeRF's preset "auto" is resolved on creation ("small" on the CPU); the run's config says what was built."""
    from featurefield.fields.nerf.config import NerfConfig

    cfg = TrainConfig(steps=2, device="cpu", progress=False)
    run = train("demo:1", tmp_path / "run", field="nerf", teachers=[], config=cfg, scene_options=DEMO)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["field_config"]
    assert NerfConfig().preset == "auto" and recorded["preset"] == "small" == run.field.config.preset
    assert recorded["num_levels"] == run.field.config.num_levels != NerfConfig().num_levels


def test_train_takes_the_field_as_a_subcommand_or_as_field(tmp_path, capsys):
    common = ["demo:1", "--no-features", "--steps", "2", "--device", "cpu", "--scene-option", "size=24", "views=8"]
    assert main(["train", "nerf", *common, "--output", str(tmp_path / "a"), "--nerf.rays-per-batch", "64"]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["field_config"]["rays_per_batch"] == 64
    assert main(["train", *common, "--field", "nerf", "--output", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["field"] == "nerf"
    assert main(["train", "nowhere", *common[1:], "--output", str(tmp_path / "c")]) == 2  # no scene folder "nowhere"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "voxels", *common, "--output", str(tmp_path / "d")])  # no such field


def test_a_field_backend_plugs_in_through_an_entry_point(tmp_path, monkeypatch, capsys):
    """One module and one spec: the registry finds the backend, the trainer and `train --help` offer it."""
    import textwrap

    from featurefield.fields import registry

    (tmp_path / "fffield_demo.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        from featurefield.fields.registry import FieldSpec

        @dataclass
        class BlobConfig:
            blobs: int = 3

        SPEC = FieldSpec("blob", "fffield_demo:BlobConfig", "tests.toyfield:ToySpheres", summary="toy blobs",
                         cpu_steps=7, oom_advice="fewer blobs")
    """))
    dist = tmp_path / "fffield_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fffield-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[featurefield.fields]\nblob = fffield_demo:SPEC\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_PLUGINS", None)
    spec = registry.field_spec("blob")
    assert list(registry.registered())[-1] == "blob" and spec.default_steps("cpu") == 7
    assert spec.config_class()().blobs == 3 and spec.capabilities() == frozenset()
    assert spec.field_class().create(None, []).kind == "toy"
    with pytest.raises(FeatureFieldError, match="unknown field 'voxels'; expected one of splat, nerf, general, blob"):
        registry.field_spec("voxels")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "toy blobs" in capsys.readouterr().out
    monkeypatch.setattr(registry, "_PLUGINS", None)  # forget the plug-in for the other tests
def test_training_piped_to_a_file_reports_progress_as_it_goes(tmp_path):
    """Through a pipe (not a terminal), plain progress lines, each flushed as the run passes a tenth."""
    proc = subprocess.Popen(_train_cmd(tmp_path / "run", 20, ["--checkpoint-every", "20"]), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter(), line.rstrip()))
    assert proc.wait(timeout=300) == 0
    steps = [text for _, text in lines if text.startswith("train splat: step ")]
    assert [s.split()[3] for s in steps] == [f"{k}/20" for k in range(2, 21, 2)]
    assert "left" in steps[0] and "it/s" in steps[0] and "left" not in steps[-1]
    first, final = next(t for t, text in lines if text == steps[0]), lines[-1][0]
    assert first < final  # printed while training, not all at the end


def test_plain_progress_line_reads_as_words():
    from featurefield.train import _plain_progress_line

    line = _plain_progress_line("splat", 52, 520, 0, 10.0, {"loss": 0.12345, "psnr": 21.049})
    assert line == "train splat: step 52/520 (10%)  loss 0.1235  psnr 21.05  5.2 it/s  about 1 min 30 s left"
