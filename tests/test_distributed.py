"""Training on several ranks (featurefield.distributed), as two CPU processes joined over gloo.

One two-rank session (tests/toydist.py) trains a Gaussian run that densifies, a NeRF run stopped by a signal to
one rank and resumed, and continues a one-rank run on two; it also takes one step of each field. The tests
read what each rank recorded, the run folders, and compare with one process doing the same work.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from featurefield.cli import main
from featurefield.distributed import rank_specific, run_steps
from featurefield.errors import FeatureFieldError
from featurefield.run import load_checkpoint
from featurefield.run_config import CHECKPOINT
from featurefield.stopping import StopRequest
from featurefield.train import TrainConfig, train
from tests.toydist import (
    SCENE,
    fresh_field,
    gradients,
    no_jitter,
    parameters,
    run_ranks,
    session,
    splat_config,
    tiny_data,
    tiny_scene,
)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``(folder, [rank 0's record, rank 1's])`` of :func:`tests.toydist.session`, after the parent trained the
    one-rank run the session continues."""
    out = tmp_path_factory.mktemp("ranks")
    train("demo:1", out / "runs" / "one", field="splat", teachers=[], scene_options=SCENE, field_config=splat_config(),
          config=TrainConfig(steps=6, device="cpu", progress=False, checkpoint_every=3, log_every=2))
    run_ranks(session, 2, out)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ranks_hold_the_same_gaussians_through_densification(two_ranks):
    out, (r0, r1) = two_ranks
    counts = [n for *_, n in r0["steps"]["splat"]]
    assert len(set(counts)) > 2  # Gaussians were added (and removed) during the run
    assert [n for *_, n in r1["steps"]["splat"]] == counts
    assert _same(r0["splat"], r1["splat"])
    saved = load_checkpoint(out / "runs" / "splat" / CHECKPOINT)["field_state"]
    assert _same({k: saved[k] for k in r0["splat"]}, r0["splat"])


def test_ranks_train_on_different_views_of_one_shuffled_order(two_ranks):
    _, (r0, r1) = two_ranks
    v0, v1 = [v for _, v, *_ in r0["steps"]["splat"]], [v for _, v, *_ in r1["steps"]["splat"]]
    assert all(a != b for a, b in zip(v0, v1))
    assert sorted(v0[:5] + v1[:5]) == list(range(10))  # 5 steps of 2 views: each of the 10 training views once


def test_steps_count_the_views_of_all_ranks(two_ranks):
    out, (r0, _) = two_ranks
    run = out / "runs" / "splat"
    trainer = json.loads((run / "config.json").read_text())["trainer"]
    assert (trainer["steps"], trainer["ranks"]) == (12, 2)  # --steps 24 on 2 ranks: 12 steps of 2 views
    assert [s for s, *_ in r0["steps"]["splat"]] == list(range(12))
    summary = json.loads((run / "metrics.json").read_text())
    assert (summary["steps"], summary["ranks"]) == (12, 2)
    assert run_steps(30_000, 2) == 15_000 and run_steps(7, 2) == 4 and run_steps(5, 1) == 5


def test_only_rank_zero_writes_the_runs(two_ranks):
    out, (r0, r1) = two_ranks
    assert r1["writes"] == []
    written = set(r0["writes"])
    for run in ("splat", "nerf"):
        assert {f"{run}/config.json", f"{run}/metrics.json", f"{run}/metrics.jsonl", f"{run}/.lock"} <= written
    assert r0["writes"].count(os.path.join("splat", "checkpoints", "latest.pt")) == 3  # steps 4, 8, 12: once each
    for run in ("splat", "nerf", "one"):
        log = _log(out / "runs" / run)
        steps = [r["step"] for r in log if not r.get("final")]
        assert steps == sorted(set(steps))  # one line a step, in order: nothing interleaved or repeated


def test_the_logged_loss_is_the_mean_of_the_ranks(two_ranks):
    out, (r0, r1) = two_ranks
    for run in ("splat", "nerf"):
        logged = [r for r in _log(out / "runs" / run) if "loss" in r and not r.get("final")]
        assert len(logged) >= 3
        for record in logged:
            step = record["step"] - 1
            key = "nerf-resumed" if run == "nerf" and step >= 4 else run
            l0, l1 = (r["steps"][key] for r in (r0, r1))
            losses = [next(loss for s, _, loss, _ in steps if s == step) for steps in (l0, l1)]
            assert losses[0] != losses[1]
            assert record["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_the_feature_cache_is_filled_once_from_shards(two_ranks):
    out, _ = two_ranks
    (folder,) = [d for d in (out / "cache").iterdir() if d.name.startswith("toycolour")]
    sets = json.loads((folder / "index.json").read_text())["sets"].values()
    assert sorted(s["shape"][0] for s in sets) == [2, 10]  # the 10 training views (merged, shards of 5 dropped), 2 test
    assert len(list(folder.glob("*.npy"))) == 2


def test_a_streamed_run_trains_as_the_resident_one_and_rank_zero_writes_the_image_cache(two_ranks):
    out, (r0, r1) = two_ranks
    for r in (r0, r1):
        assert [v for _, v, *_ in r["steps"]["splat-stream"]] == [v for _, v, *_ in r["steps"]["splat"]]
        assert _same(r["splat-stream"], r["splat"])  # the same views, read from the caches on disk
    summary = json.loads((out / "runs" / "splat-stream" / "metrics.json").read_text())
    assert (summary["data/residency"], summary["ranks"]) == ("stream", 2)
    assert r0["image_writes"] and r1["image_writes"] == []
    assert len(list((out / "cache" / "images").glob("*.npy"))) == 1  # one file for both streamed runs


def test_a_streamed_nerf_draws_each_rank_its_own_rays_from_one_rotating_pool(two_ranks):
    out, (r0, r1) = two_ranks
    s0, s1 = r0["steps"]["nerf-stream"], r1["steps"]["nerf-stream"]
    assert [s for s, *_ in s0] == [s for s, *_ in s1] == [0, 1, 2, 3]
    for (_, views0, loss0, _), (_, views1, loss1, _) in zip(s0, s1):
        assert len(set(views0) | set(views1)) <= 4  # both ranks draw from the step's pool of 4 views
        assert loss0 != loss1  # ... rays of their own
    assert len({v for _, views, *_ in s0 + s1 for v in views}) > 4  # the pool turned over
    assert _same(r0["nerf-stream"], r1["nerf-stream"])
    assert json.loads((out / "runs" / "nerf-stream" / "metrics.json").read_text())["data/residency"] == "stream"


def test_a_signal_to_one_rank_stops_both_at_the_same_step(two_ranks):
    out, (r0, r1) = two_ranks
    assert "at step 4 of 8" in r0["nerf_stopped"] and "another rank" in r0["nerf_stopped"]
    assert "SIGTERM at step 4 of 8" in r1["nerf_stopped"]
    for r in (r0, r1):
        assert [s for s, *_ in r["steps"]["nerf"]] == [0, 1, 2, 3]
        assert [s for s, *_ in r["steps"]["nerf-resumed"]] == [4, 5, 6, 7]
    assert _same(r0["nerf_at_stop"], r1["nerf_at_stop"])
    assert _same(r0["nerf"], r1["nerf"])
    assert load_checkpoint(out / "runs" / "nerf" / CHECKPOINT)["step"] == 8


def test_a_one_rank_run_continues_on_two(two_ranks):
    out, (r0, r1) = two_ranks
    run = out / "runs" / "one"
    for r in (r0, r1):
        assert [s for s, *_ in r["steps"]["one-to-two"]] == list(range(6, 12))
    assert _same(r0["one-to-two"], r1["one-to-two"])
    assert load_checkpoint(run / CHECKPOINT)["step"] == 12
    assert json.loads((run / "metrics.json").read_text())["sessions"] == 2


def test_a_two_rank_run_continues_on_one(two_ranks, tmp_path):
    out, _ = two_ranks
    run = tmp_path / "splat"
    shutil.copytree(out / "runs" / "splat", run)
    before = load_checkpoint(run / CHECKPOINT)
    resumed = train(None, run, resume=True, config=TrainConfig(steps=32, device="cpu", progress=False))
    assert resumed.step == 16  # --steps 32 read as the run started: 2 views a step
    steps = [r["step"] for r in _log(run) if not r.get("final")]
    assert steps == sorted(set(steps)) and steps[-1] == 16 and 13 in steps
    assert json.loads((run / "metrics.json").read_text())["sessions"] == 2
    means = before["field_state"]["params.means"]
    assert resumed.field.params["means"].shape != means.shape or not torch.equal(resumed.field.params["means"], means)


def test_checkpoints_hold_one_rank_adam_while_the_ranks_use_the_scaled(two_ranks):
    out, (r0, _) = two_ranks
    fresh = fresh_field("splat", tiny_scene()).optimizers()["adam"].param_groups
    saved = load_checkpoint(out / "runs" / "splat" / CHECKPOINT)["optimizers"]["adam"]["param_groups"]
    for live, kept, one in zip(r0["adam"], saved, fresh):
        assert kept["eps"] == one["eps"] and tuple(kept["betas"]) == tuple(one["betas"])
        assert live[1] == pytest.approx(one["eps"] / math.sqrt(2))
        assert live[2] == pytest.approx(tuple(1 - 2 * (1 - b) for b in one["betas"]))
        assert live[0] == pytest.approx(kept["lr"] * math.sqrt(2))
        if kept["name"] != "means":  # the means' rate decays; the others stay at the one-rank setting
            assert kept["lr"] == pytest.approx(one["lr"])


def test_a_two_rank_splat_step_takes_the_mean_of_two_views_gradients(two_ranks):
    _, ranks = two_ranks
    scene = tiny_scene()
    data = tiny_data(scene)
    fld = fresh_field("splat", scene)
    gen = torch.Generator().manual_seed(0)
    views = [fld.sample_batch(data, 0, gen) for _ in range(2)]
    loss = sum(fld.training_loss(b, data, 0)["loss"] for b in views) / 2
    loss.backward()
    grads = gradients(fld)
    for opt in fld.optimizers().values():
        opt.step()
    for r in ranks:
        step = r["step/splat"]
        assert step["grads"].keys() == grads.keys()
        for k, g in grads.items():
            torch.testing.assert_close(step["grads"][k], g, rtol=1e-4, atol=1e-8)
        after = parameters(fld)
        compared = 0
        for k, g in grads.items():  # Adam's first step is about lr * sign(gradient): where the gradient is
            moved = g.abs() > 1e-7  # rounding noise, so is its sign, and those entries are left out
            torch.testing.assert_close(step["params"][k][moved], after[k][moved], rtol=1e-4, atol=1e-6)
            compared += int(moved.sum())
        assert compared > 1000
    assert _same(ranks[0]["step/splat"]["params"], ranks[1]["step/splat"]["params"])


def test_a_two_rank_nerf_step_is_one_step_over_the_union_of_their_rays(two_ranks):
    _, ranks = two_ranks
    scene = tiny_scene()
    data = tiny_data(scene)
    with no_jitter():
        fld = fresh_field("nerf", scene, rays=128)  # the two ranks' 64 rays each, as one batch
        batch = fld.sample_batch(data, 0, torch.Generator().manual_seed(0))
        fld.training_loss(batch, data, 0)["loss"].backward()
    grads = gradients(fld)
    assert len(grads) > 10
    for r in ranks:
        for k, g in grads.items():
            torch.testing.assert_close(r["step/nerf"]["grads"][k], g, rtol=1e-4, atol=1e-7)


def test_a_second_signal_to_a_rank_waits_for_its_checkpoint():
    with StopRequest(interrupt_on_second=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun passes on the Ctrl-C the rank has already had
    assert stop.signum == signal.SIGINT


def test_ranks_other_than_zero_print_only_their_own_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "splat", "demo:1", "--steps", "0", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ""  # every rank has this one: rank 0 says it
    monkeypatch.setattr("featurefield.commands.train.train", lambda *a, **k: (_ for _ in ()).throw(
        rank_specific(FeatureFieldError("out of GPU memory at step 7"))))
    assert main(["train", "splat", "demo:1", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "featurefield train: error: rank 1: out of GPU memory at step 7"


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "featurefield.cli",
           "train", "splat", *args, "--device", "cpu", "--no-features"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_train_under_torchrun_reports_once(tmp_path):
    res = _torchrun(tmp_path, "demo:1", "--scene-option", "size=32", "views=12", "points=300", "--steps", "8",
                    "--output", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("trained ") == 1 and "ranks 2" in res.stdout
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["step"] == 4


@pytest.mark.slow
def test_a_bad_argument_under_torchrun_is_one_line(tmp_path):
    res = _torchrun(tmp_path, str(tmp_path / "missing"), "--output", str(tmp_path / "run"))
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("featurefield train")]
    assert len(ours) == 1 and "missing" in ours[0]
    assert not any('File "' in line and "featurefield" in line for line in res.stderr.splitlines())  # no rank's traceback
