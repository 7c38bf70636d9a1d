"""SIGKILL in the middle of the two long writes (issue 23): a feature extraction and a checkpoint. What was
finished before the kill survives, nothing half-written is ever read, and the next run completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from featurefield.run import load_run
from featurefield.run_config import CHECKPOINT
from featurefield.teachers.store import FeatureStore
from featurefield.train import TrainConfig, train
from tests.toystore import Pooled, expected, make_scene

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_kill_during_feature_extraction_resumes_to_the_same_features(tmp_path):
    killed = _python(f"""
        import os, signal
        from tests.toystore import Pooled, make_scene
        from featurefield.teachers.store import FeatureStore

        class Dies(Pooled):
            def extract(self, images):
                if self.images_seen >= 5:  # mid-way through the third shard
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().extract(images)

        FeatureStore({str(tmp_path / 'cache')!r}, shard_images=2).load_or_extract(
            make_scene(n=8), Dies(), None, device="cpu", batch_size=1, progress=False)
    """, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    scene = make_scene(n=8)
    t = Pooled()
    f = FeatureStore(tmp_path / "cache", shard_images=2).load_or_extract(scene, t, None, device="cpu", batch_size=1,
                                                                         progress=False)
    assert torch.equal(f, expected(scene, range(8)))
    assert t.images_seen == 4  # shards 0 and 1 were finished and kept; 2 and 3 are extracted again


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    run = tmp_path / "run"
    killed = _python(f"""
        import os, signal, torch
        from featurefield.train import TrainConfig, train

        save, calls = torch.save, []

        def dies_mid_write(obj, f, *a, **kw):
            calls.append(f)
            if len(calls) == 2:  # the second checkpoint: half a file, then the power goes
                with open(f, "wb") as out:
                    out.write(b"PK" + b"x" * 4096)
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, f, *a, **kw)

        torch.save = dies_mid_write
        train("demo:1", {str(run)!r}, field="splat", teachers=[], scene_options={{"size": 32, "views": 12}},
              config=TrainConfig(steps=6, checkpoint_every=2, device="cpu", progress=False))
    """, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)["step"]) == 2
    assert list((run / "checkpoints").glob(".latest.pt.*"))  # the half-written file never replaced the good one
    train("demo:1", run, config=TrainConfig(device="cpu", progress=False), resume=True)
    assert load_run(run, device="cpu").step == 6
    assert not list((run / "checkpoints").glob(".latest.pt.*"))  # the resume cleared what the kill left
    steps = [int(line.split('"step": ')[1].split(",")[0].rstrip("}")) for line in
             (run / "metrics.jsonl").read_text().splitlines() if '"final"' not in line]
    assert steps == sorted(set(steps))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_really_full_disk_during_extraction_is_one_line_not_a_sigbus(tmp_path):
    """A 1 MiB tmpfs as the cache: the extraction is refused up front (it used to die of SIGBUS, exit -7)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN)")
    try:
        res = _python(f"""
            import torch
            from featurefield.errors import FeatureFieldError
            from featurefield.teachers.store import FeatureStore
            from tests.toystore import Pooled, make_scene

            class Wide(Pooled):  # 64 channels at full resolution: 1.5 MiB for 64 views of 16 x 12
                dim = 64
                def feature_grid(self, h, w):
                    return h, w
                def extract(self, images):
                    return images.repeat(1, 22, 1, 1)[:, :64]

            scene = make_scene(n=64)
            try:
                FeatureStore({str(mnt)!r}).load_or_extract(scene, Wide(), None, device="cpu", progress=False)
            except FeatureFieldError as err:
                print("ERR", err)
        """, tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("ERR") and "MiB" in res.stdout and len(res.stdout.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert np.prod([64, 64, 16, 12]) * 2 > 1 << 20  # the set really did not fit


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_really_small_disk_for_training_is_refused_before_the_first_step(tmp_path):
    """A 2 MiB tmpfs as the run folder: one checkpoint of the demo's Gaussians (~3 MiB) cannot fit, so training is
    refused before it starts, saying how much it needs and how much is free."""
    from featurefield.errors import FeatureFieldError

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN)")
    try:
        with pytest.raises(FeatureFieldError, match=r"needs about .* MiB free .* but .* are free") as info:
            train("demo:1", mnt / "run", teachers=[], scene_options={"size": 32, "views": 12},
                  config=TrainConfig(steps=50, checkpoint_every=10, log_every=1, device="cpu", progress=False))
        assert "\n" not in str(info.value)
        assert not (mnt / "run" / CHECKPOINT).exists() and not (mnt / "run" / "metrics.jsonl").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
