"""Training views resident or streamed from the caches: same training, bounded memory, resume, the ray pool."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from featurefield.data.demo_scene import make_demo_scene
from featurefield.data.image_cache import cached_images, view_uint8
from featurefield.data.view_source import DataConfig, ResidentViews, StreamedViews, choose_residency
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import TeacherTarget, TrainData
from featurefield.npyrows import NpyRows
from featurefield.run_config import CHECKPOINT
from featurefield.train import TrainConfig, Trainer, optimization_step, train

SCENE = {"size": 24, "views": 10, "points": 200}


@pytest.fixture
def one_thread():
    """CPU scatter-adds sum in a thread-dependent order: one thread makes two trainings comparable bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingRows(NpyRows):
    """An :class:`NpyRows` that records every row it reads."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.reads: list[int] = []

    def read(self, i, out=None):
        self.reads.append(int(i))
        return super().read(i, out)


def _state(run) -> dict[str, torch.Tensor]:
    return {k: v for k, v in run.field.state_dict().items() if torch.is_tensor(v)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5)
                                        for k in a)


@pytest.mark.parametrize("field", ["splat", "nerf"])
def test_streamed_training_matches_resident_training(tmp_path, field, one_thread):
    """The same seed draws the same samples from either residency, so the fields come out the same; for the NeRF
    streamed with a pool of every view (``pool_views >= N``), which is what resident training draws from."""
    runs = {}
    for residency in ("device", "stream"):
        cfg = TrainConfig(steps=8, device="cpu", progress=False, cache_dir=tmp_path / "cache", final_eval_views=2,
                          data=DataConfig(residency=residency, pool_views=64))
        runs[residency] = train("demo:1", tmp_path / residency, field=field, teachers=["toycolour"], config=cfg,
                                scene_options=SCENE)
    assert _same(_state(runs["device"]), _state(runs["stream"]))
    summaries = {r: json.loads((tmp_path / r / "metrics.json").read_text()) for r in runs}
    assert summaries["stream"]["data/residency"] == "stream" and summaries["device"]["data/residency"] == "device"
    assert summaries["stream"]["test/cosine/toycolour"] == pytest.approx(summaries["device"]["test/cosine/toycolour"])
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 1  # the decoded training views, once


def _streamed_scene(tmp_path, views: int, size: int = 16, prefetch: int = 3, **pool):
    """A demo scene of ``views`` views, its training views in the image cache and a toy 'feature' cache (each
    view's subsampled colour), read through counting readers."""
    scene = make_demo_scene(seed=4, size=size, views=views, points=100, supersample=1, test_every=views)
    images = cached_images(scene, scene.split["train"], tmp_path, progress=False)
    pooled = np.stack([images.read(k)[::4, ::4, :3].transpose(2, 0, 1) / 255 for k in range(len(images))])
    np.save(tmp_path / "feats.npy", pooled.astype(np.float16))  # [N, 3, size/4, size/4]
    images, feats = CountingRows(images.path), CountingRows(tmp_path / "feats.npy")
    source = StreamedViews(images, {"toy": feats}, "cpu", DataConfig(residency="stream", prefetch=prefetch, **pool), seed=1)
    return scene, source, images, feats


def test_a_streamed_splat_run_reads_only_the_views_it_trains_on(tmp_path, one_thread):
    """Over many views, the source reads each step's view (and a few ahead) and holds no more than the
    prefetch depth at once: nothing is materialised for all the views."""
    from featurefield.fields.splat.config import SplatConfig
    from featurefield.fields.splat.model import GaussianField

    scene, source, images, feats = _streamed_scene(tmp_path, views=301)
    n, steps = len(source), 12
    assert n == 300
    targets = [TeacherTarget("toy", 3, (4, 4))]
    fld = GaussianField.create(scene, targets, SplatConfig(sh_degree=0), max_steps=100, device="cpu")
    fld.train()
    data = TrainData(scene.canonical_cameras()[scene.split["train"]], background=torch.tensor(scene.background),
                     views=source)
    gen = torch.Generator().manual_seed(0)
    images.reads.clear()
    feats.reads.clear()
    for step in range(steps):
        losses = optimization_step(fld, data, step, gen)
    source.close()
    assert torch.isfinite(losses["loss"])
    trained = fld._perm[:steps].tolist()  # the views the steps drew, in order
    assert set(trained) <= set(images.reads) and len(images.reads) <= steps + source.lookahead
    assert sorted(feats.reads) == sorted(images.reads)
    assert source.max_held <= source.lookahead + 1


def test_the_ray_pool_holds_a_few_views_turns_over_all_of_them_and_depends_on_the_step_alone(tmp_path):
    scene, source, images, feats = _streamed_scene(tmp_path, views=41, pool_views=8, pool_every=2)
    n = len(source)
    truth = {v: view_uint8(scene, scene.split["train"][v])[..., :3] for v in range(n)}
    seen, reads_after_fill = set(), []
    for step in range(2 * n):
        pool = source.pool(step)
        ids = pool.ids.tolist()
        assert len(ids) == 8
        for slot, v in enumerate(ids):  # each slot holds its view's pixels and features
            assert np.array_equal(pool.images[slot].numpy(), truth[v])
            assert np.array_equal(pool.features["toy"][slot].permute(2, 0, 1).numpy(), feats.read(v))
        seen.update(ids)
        if step == 0:
            reads_after_fill = len(images.reads)
    assert seen == set(range(n))  # every view came round within 2 N steps (one view replaced every 2 steps)
    assert reads_after_fill <= 8 + source.lookahead
    assert len(images.reads) <= 8 + n + source.lookahead + 1  # one read per replaced view, no more
    assert source.max_held <= source.lookahead + 1
    # a resumed run rebuilds the same pool at any step: the pool is a function of the step
    later = source.pool(57).ids.tolist()
    _, fresh, _, _ = _streamed_scene(tmp_path / "again", views=41, pool_views=8, pool_every=2)
    assert sorted(fresh.pool(57).ids.tolist()) == sorted(later)
    source.close()
    fresh.close()


def test_a_streamed_nerf_run_resumes_to_the_same_result(tmp_path, monkeypatch, one_thread):
    """Stopped by a signal mid-run and resumed in stream mode, a NeRF whose rays come from a rotating pool of a
    few views ends where an uninterrupted streamed run does."""
    data = DataConfig(residency="stream", pool_views=3, pool_every=2, prefetch=2)
    options = dict(field="nerf", teachers=["toycolour"], scene_options=SCENE)

    def config(**kw):
        return TrainConfig(steps=10, device="cpu", progress=False, cache_dir=tmp_path / "cache", final_eval_views=1,
                           checkpoint_every=100, data=data, **kw)

    reference = train("demo:1", tmp_path / "reference", config=config(), **options)
    original = Trainer.step

    def stop_at_5(self, fld, step, generator, nonfinite):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, fld, step, generator, nonfinite)

    from featurefield.stopping import TrainingStopped

    monkeypatch.setattr(Trainer, "step", stop_at_5)
    with pytest.raises(TrainingStopped, match="at step 5 of 10"):
        train("demo:1", tmp_path / "stopped", config=config(), **options)
    monkeypatch.setattr(Trainer, "step", original)
    assert torch.load(tmp_path / "stopped" / CHECKPOINT, weights_only=False)["step"] == 5
    resumed = train("demo:1", tmp_path / "stopped", config=config(), resume=True, **options)
    assert json.loads((tmp_path / "stopped" / "metrics.json").read_text())["data/residency"] == "stream"
    assert _same(_state(reference), _state(resumed))


def test_residency_is_chosen_by_size_or_forced():
    cpu = torch.device("cpu")
    assert choose_residency(DataConfig(), 1 << 20, cpu) == "device"  # a small scene: resident
    assert choose_residency(DataConfig(), 1 << 60, cpu) == "stream"  # more than any host holds
    assert choose_residency(DataConfig(residency="stream"), 1, cpu) == "stream"
    assert choose_residency(DataConfig(residency="host"), 1 << 60, cpu) == "host"
    with pytest.raises(FeatureFieldError, match="--data.residency"):
        DataConfig(residency="disk")
    with pytest.raises(FeatureFieldError, match="--data.pool-views"):
        DataConfig(pool_views=0)
    assert TrainConfig(data={"residency": "stream"}).data == DataConfig(residency="stream")  # from a run's config.json


def test_resident_views_read_as_the_tensors_they_hold():
    images = torch.randint(0, 255, (5, 4, 6, 3), dtype=torch.uint8)
    feats = torch.randn(5, 2, 2, 3).half()
    source = ResidentViews(images, None, {"t": feats}, "cpu")
    assert torch.equal(source.view(3).image, images[3]) and torch.equal(source.view(3).features["t"], feats[3])
    pool = source.pool(0)
    assert pool.ids.tolist() == [0, 1, 2, 3, 4] and torch.equal(pool.features["t"], feats.permute(0, 2, 3, 1))
    assert torch.equal(source.view(2).features["t"], feats[2])  # after the pool's channels-last copy too


def test_the_image_cache_is_written_once_and_rewritten_when_broken(tmp_path):
    scene = make_demo_scene(seed=2, size=16, views=6, points=100, supersample=1)
    rows = cached_images(scene, [1, 2, 3], tmp_path, progress=False)
    assert rows.shape == (3, 16, 16, 3) and np.array_equal(rows.read(2), view_uint8(scene, 3))
    mtime = rows.path.stat().st_mtime_ns
    assert cached_images(scene, [1, 2, 3], tmp_path, progress=False).path.stat().st_mtime_ns == mtime
    with open(rows.path, "r+b") as f:  # cut short (a full disk, a copy stopped half way)
        f.truncate(rows.path.stat().st_size - 10)
    again = cached_images(scene, [1, 2, 3], tmp_path, progress=False)
    assert np.array_equal(again.read(2), view_uint8(scene, 3))
    assert cached_images(scene, [1, 2], tmp_path, progress=False).path != rows.path  # other views, another file
