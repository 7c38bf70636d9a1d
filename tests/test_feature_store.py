"""FeatureStore: cache hits, invalidation, truncation/corruption recovery, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featurefield.cameras import Cameras
from featurefield.data.scene import Normalization, Scene
from featurefield.errors import FeatureFieldWarning
from featurefield.teachers.store import FeatureStore
from tests.toystore import Pooled, expected, make_scene


def test_extract_then_hit(tmp_path):
    scene = make_scene()
    store = FeatureStore(tmp_path, shard_images=2)
    t = Pooled()
    f = store.load_or_extract(scene, t, [0, 2, 3, 5], device="cpu", batch_size=3, progress=False)
    assert f.dtype == torch.float16 and f.shape == (4, 3, 4, 3)
    assert torch.equal(f, expected(scene, [0, 2, 3, 5]))
    t2 = Pooled()
    f2 = store.load_or_extract(scene, t2, [0, 2, 3, 5], device="cpu", progress=False)
    assert t2.calls == 0 and torch.equal(f, f2)


def test_invalidation_on_image_and_setting_change(tmp_path):
    scene = make_scene()
    store = FeatureStore(tmp_path, shard_images=2)
    store.load_or_extract(scene, Pooled(), None, device="cpu", progress=False)
    scene.images.images[4] = torch.zeros(16, 12, 3)  # one image changes
    t = Pooled()
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.images_seen == 1  # only the changed image; the others are reused from the old set
    assert torch.equal(f, expected(scene, range(6)))
    t = Pooled(offset=1.0)  # a teacher setting changes: everything again
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.images_seen == 6 and torch.equal(f, expected(scene, range(6), 1.0))


def test_truncated_and_corrupt_shards(tmp_path):
    scene = make_scene()
    store = FeatureStore(tmp_path, shard_images=2)
    store.load_or_extract(scene, Pooled(), None, device="cpu", progress=False)
    (npy,) = list(store.teacher_dir(Pooled()).glob("*.npy"))
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) - 100])  # truncated
    t = Pooled()
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.images_seen == 6 and torch.equal(f, expected(scene, range(6)))
    del f
    arr = np.load(npy, mmap_mode="r+")
    arr[3] += 1.0  # silent corruption inside shard 1 (rows 2-3)
    arr.flush()
    del arr
    t = Pooled()
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.images_seen == 2 and torch.equal(f, expected(scene, range(6)))


def test_resume_after_interruption(tmp_path):
    scene = make_scene(n=7)
    store = FeatureStore(tmp_path, shard_images=2)
    t = Pooled(fail_after=4)  # dies while extracting the third shard
    with pytest.raises(KeyboardInterrupt):
        store.load_or_extract(scene, t, None, device="cpu", batch_size=1, progress=False)
    t = Pooled()
    f = store.load_or_extract(scene, t, None, device="cpu", batch_size=1, progress=False)
    assert t.images_seen == 3  # images 4, 5, 6: the two finished shards are kept
    assert torch.equal(f, expected(scene, range(7)))


def test_features_command_writes_pca(tmp_path, monkeypatch):
    from featurefield.commands import teachers as commands
    from featurefield.teachers import base

    scene = make_scene()
    scene.name = "toy"
    monkeypatch.setitem(base._REGISTRY, "pooled", lambda **o: Pooled())
    monkeypatch.setattr("featurefield.data.registry.load_scene", lambda *a, **k: scene)
    rc = commands.features_command("toy", teacher=["pooled"], views="all", cache_dir=tmp_path / "c", pca=2,
                                   output=tmp_path / "o", device="cpu")
    assert rc == 0
    pics = sorted((tmp_path / "o" / "pooled").glob("*.png"))
    assert len(pics) == 2


def run_together(*works) -> None:
    """Call ``works[k](k)`` in threads released at the same moment (each as if another process); re-raise."""
    import threading

    start, errors = threading.Barrier(len(works)), []

    def go(k):
        try:
            start.wait()
            works[k](k)
        except Exception as err:  # pragma: no cover - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_processes_sharing_a_cache_take_turns(tmp_path):
    """Two extractions of the same views at once: one extracts, the other waits and reads its shards."""
    import time

    class Slow(Pooled):
        def extract(self, images):
            time.sleep(0.05)
            return super().extract(images)

    scene = make_scene(n=6)
    teachers, results = [Slow(), Slow()], [None, None]

    def work(k):
        store = FeatureStore(tmp_path, shard_images=2)  # each its own store and lock file handle
        results[k] = store.load_or_extract(scene, teachers[k], None, device="cpu", batch_size=1, progress=False)

    run_together(work, work)
    assert sorted(t.images_seen for t in teachers) == [0, 6]
    for f in results:
        assert torch.equal(f, expected(scene, range(6)))


def test_different_sets_extract_side_by_side_and_both_stay_indexed(tmp_path):
    """Two processes extracting different views do not wait for each other, and neither loses the other's entry."""
    import json
    import time

    inside, overlap = [0], []

    class Slow(Pooled):
        def extract(self, images):
            inside[0] += 1
            overlap.append(inside[0])
            time.sleep(0.05)
            inside[0] -= 1
            return super().extract(images)

    scene = make_scene(n=8)
    halves = [[0, 2, 4, 6], [1, 3, 5, 7]]

    def work(k):
        FeatureStore(tmp_path, shard_images=1).load_or_extract(scene, Slow(), halves[k], device="cpu", batch_size=1,
                                                                progress=False)

    run_together(work, work)
    assert max(overlap) == 2  # both were extracting at the same time
    store = FeatureStore(tmp_path, shard_images=1)
    index = json.loads((store.teacher_dir(Pooled()) / "index.json").read_text())
    assert len(index["sets"]) == 2 and all(len(e["shards"]) == 4 for e in index["sets"].values())
    t = Pooled()
    f = store.load_or_extract(scene, t, list(range(8)), device="cpu", progress=False)
    assert t.images_seen == 0 and torch.equal(f, expected(scene, range(8)))  # every row copied from the halves
    store.discard(scene, t, halves[0])
    index = json.loads((store.teacher_dir(t) / "index.json").read_text())
    files = {p.stem for p in store.teacher_dir(t).glob("*.npy")}
    assert len(index["sets"]) == 2 and files == set(index["sets"])  # the half and the whole remain


@pytest.mark.slow
def test_torchrun_shards_the_extraction_into_one_set(tmp_path):
    import json
    import subprocess
    import sys

    from featurefield.data.registry import load_scene
    from featurefield.teachers.dino import DinoTeacher

    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "featurefield.cli",
           "features", "demo", "--teacher", "dino:pretrained=random,resolution=28", "--views", "all", "--pca", "0",
           "--cache-dir", str(cache), "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    scene = load_scene("demo")
    n = len(scene)
    for r in range(2):
        assert f"dino: rank {r} of 2 extracted {len(range(r, n, 2))} views" in res.stdout
    teacher = DinoTeacher(pretrained="random", resolution=28)
    folder = FeatureStore(cache).teacher_dir(teacher)
    index = json.loads((folder / "index.json").read_text())
    assert [e["shape"][0] for e in index["sets"].values()] == [n]  # the shards were merged and dropped
    assert len(list(folder.glob("*.npy"))) == 1
    sharded = FeatureStore(cache).load_or_extract(scene, teacher, None, device="cpu", progress=False)
    alone = FeatureStore(tmp_path / "alone").load_or_extract(scene, teacher, None, device="cpu", progress=False)
    assert torch.allclose(sharded.float(), alone.float(), atol=2e-3, rtol=1e-2)


def _files_scene(tmp_path, n=4, background=(1.0, 1.0, 1.0), masks=True):
    """A scene of PNG files with mask files (the masks become alpha), like a nerfstudio capture."""
    from PIL import Image

    from featurefield.data.images import ImageFiles

    g = np.random.default_rng(0)
    paths, mpaths = [], []
    for i in range(n):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(g.integers(0, 255, (16, 12, 3), dtype=np.uint8)).save(paths[-1])
        mpaths.append(tmp_path / f"mask{i}.png")
        Image.fromarray(np.where(np.arange(12)[None, :] < 6, 255, 0).repeat(16, 0).astype(np.uint8)).save(mpaths[-1])
    c2w = torch.eye(4).repeat(n, 1, 1)
    cams = Cameras(c2w=c2w, fx=10.0, fy=10.0, cx=6.0, cy=8.0, width=12, height=16)
    return Scene(cameras=cams, images=ImageFiles(paths, masks=mpaths if masks else None),
                 split={"train": list(range(n)), "test": []}, normalization=Normalization.identity(),
                 background=background), mpaths


def test_a_corrupt_row_of_another_set_is_never_copied(tmp_path):
    """Issue 23 (1): rows copied from another cached set are checked against that set's crc first."""
    scene = make_scene()
    store = FeatureStore(tmp_path / "cache", shard_images=2)
    store.load_or_extract(scene, Pooled(), None, device="cpu", progress=False)  # 'all views' set
    (npy,) = list(store.teacher_dir(Pooled()).glob("*.npy"))
    arr = np.load(npy, mmap_mode="r+")
    arr[3] = 7.0  # a bit-rotted row of the source set
    arr.flush()
    del arr
    t = Pooled()
    with pytest.warns(FeatureFieldWarning, match="fails its checksum"):  # said, in one line
        f = store.load_or_extract(scene, t, [1, 3, 4], device="cpu", progress=False)  # a subset: rows are copied
    assert torch.equal(f, expected(scene, [1, 3, 4]))  # the bad row was extracted again, not copied
    assert t.images_seen == 1
    del f
    t = Pooled()  # the source's bad shard (rows 2-3) is rebuilt: row 3 from the subset's verified copy
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert torch.equal(f, expected(scene, range(6))) and t.images_seen == 1


def test_a_truncated_other_set_is_skipped_with_a_warning(tmp_path):
    """Issue 23: a truncated .npy of another cached set is no traceback: extracted instead, rebuilt later."""
    scene = make_scene()
    store = FeatureStore(tmp_path / "cache", shard_images=2)
    store.load_or_extract(scene, Pooled(), None, device="cpu", progress=False)
    (npy,) = list(store.teacher_dir(Pooled()).glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:-50])
    t = Pooled()
    with pytest.warns(FeatureFieldWarning) as seen:
        f = store.load_or_extract(scene, t, [0, 5], device="cpu", progress=False)
    assert torch.equal(f, expected(scene, [0, 5])) and t.images_seen == 2
    (message,) = [str(w.message) for w in seen]
    assert "truncated" in message and npy.name in message and "\n" not in message
    t = Pooled()
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert torch.equal(f, expected(scene, range(6)))
    assert t.images_seen == 4  # rebuilt: rows 0 and 5 are copied from the subset's set, verified


def test_the_key_covers_the_background_and_the_masks(tmp_path):
    """Issue 23 (2): the same photos composited on another background, or under other masks, are new inputs."""
    scene, mpaths = _files_scene(tmp_path)
    store = FeatureStore(tmp_path / "cache", shard_images=2)
    white = store.load_or_extract(scene, Pooled(), None, device="cpu", progress=False).clone()
    assert torch.equal(white, expected(scene, range(4)))
    scene.background = (0.0, 0.0, 0.0)
    t = Pooled()
    black = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.images_seen == 4 and torch.equal(black, expected(scene, range(4)))
    assert not torch.equal(black, white)
    from PIL import Image

    Image.fromarray(np.full((16, 12), 255, np.uint8)).save(mpaths[2])  # one mask changes
    import os

    os.utime(mpaths[2], ns=(1, 1))  # even with an old mtime: the size or path differs
    scene.images._cache.clear()
    t = Pooled()
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.images_seen == 1 and torch.equal(f, expected(scene, range(4)))


def test_a_full_disk_is_one_line_before_any_work_never_a_sigbus(tmp_path, monkeypatch):
    """Issue 23: the cache file is preallocated; no space is a FeatureFieldError naming how much is needed."""
    import shutil

    from featurefield.errors import FeatureFieldError
    from featurefield.teachers import store as store_mod

    scene = make_scene()
    store = FeatureStore(tmp_path / "cache", shard_images=2)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: usage._replace(free=100))
    t = Pooled()
    with pytest.raises(FeatureFieldError, match=r"needs \d+ KiB for .* but 0 KiB are free"):  # not '0 MiB'
        store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.calls == 0
    monkeypatch.undo()

    def enospc(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, "posix_fallocate", enospc, raising=False)
    with pytest.raises(FeatureFieldError, match="not enough disk space"):
        store.load_or_extract(scene, t, None, device="cpu", progress=False)
    assert t.calls == 0 and not list(store.teacher_dir(t).glob("*.tmp"))
    monkeypatch.undo()
    f = store.load_or_extract(scene, t, None, device="cpu", progress=False)  # space again: it works
    assert torch.equal(f, expected(scene, range(6)))


def test_the_cache_file_is_allocated_not_sparse(tmp_path):
    """Blocks are reserved before mapping (a sparse file's first write on a full disk is a SIGBUS)."""
    store = FeatureStore(tmp_path)
    path = tmp_path / "set.npy"
    arr = store._open(path, [64, 3, 64, 64], {"shards": {}})
    del arr
    st = path.stat()
    assert st.st_size > 1_500_000 and st.st_blocks * 512 >= st.st_size


def test_extraction_and_rows_never_map_the_cache_file(tmp_path):
    """Mapped, every row written or checked would stay in the process's memory until the map is closed (a
    thousand views' worth); written and read by positioned I/O, the process holds a shard at most."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps (Linux)")
    scene = make_scene(n=7)
    store = FeatureStore(tmp_path, shard_images=2)
    mapped = []

    class Watching(Pooled):
        def extract(self, images):  # mid-extraction: earlier shards are written, checked and committed
            mapped.extend(line for line in maps.read_text().splitlines() if str(tmp_path) in line)
            return super().extract(images)

    rows = store.rows(scene, Watching(), [6, 1, 2, 4, 0], device="cpu", batch_size=1, progress=False)
    assert not mapped
    assert not [line for line in maps.read_text().splitlines() if str(tmp_path) in line]
    want = expected(scene, [6, 1, 2, 4, 0])
    assert len(rows) == 5 and all(np.array_equal(rows.read(k), want[k].numpy()) for k in range(5))
    again = store.rows(scene, Watching(), [0, 4], device="cpu", progress=False)  # copied from the first set's rows
    assert not mapped and np.array_equal(again.read(1), want[3].numpy())
