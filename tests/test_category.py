"""The procedural categories: determinism, keypoint labels and visibility, the sharded format and its stream."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from featurefield.data.category import CATEGORIES, CategoryData, InstanceStream, generate_category
from featurefield.data.category.generate import render_instance_arrays
from featurefield.errors import FeatureFieldError


@pytest.fixture(autouse=True)
def one_thread():
    """Rendering is many small elementwise ops: one thread avoids hand-off costs on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_generation_is_deterministic_per_seed(category):
    a = render_instance_arrays(category, 3, seed=5, views=2, size=32, supersample=1)
    b = render_instance_arrays(category, 3, seed=5, views=2, size=32, supersample=1)
    c = render_instance_arrays(category, 3, seed=6, views=2, size=32, supersample=1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["rgb"], c["rgb"])
    assert not np.array_equal(a["keypoints"], c["keypoints"])
    parts = np.unique(a["parts"])
    assert parts[0] == 0 and len(parts) >= 3  # background and at least two parts in two views


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_visible_keypoints_land_on_their_part(category):
    cat = CATEGORIES[category]
    checked = 0
    for i in range(4):
        arr = render_instance_arrays(category, i, seed=1, views=6, size=64, supersample=1)
        inst = cat.build(np.random.default_rng([1, i]))
        kp_parts = np.array([k.part for k in inst.keypoints])
        v, k = np.nonzero(arr["visible"])
        uv = np.floor(arr["uv"][v, k]).astype(int)
        labels = arr["parts"][v, uv[:, 1], uv[:, 0]]
        np.testing.assert_array_equal(labels, kp_parts[k])
        # the depth there is the keypoint's own depth: what is marked visible is really seen
        assert (arr["depth"][v, uv[:, 1], uv[:, 0]] > 0).all()
        checked += len(v)
        # hidden keypoints are hidden for a reason: behind something, outside the image or facing away
        assert 0 < arr["visible"].mean() < 1
    assert checked >= 40
    assert len(cat.keypoints) == len(kp_parts) and set(kp_parts) <= set(range(1, len(cat.parts)))


def test_shards_written_read_lazily_and_resumed(tmp_path):
    out = generate_category("chairs", 5, tmp_path / "chairs", views=3, size=24, seed=2, shard_size=2, supersample=1,
                            workers=1, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert [s["instances"] for s in index["shards"]] == [2, 2, 1]
    data = CategoryData(out)
    assert data.split("train") == [0, 1, 2, 3] and data.split("test") == [4]
    arrays, j = data.locate(3)
    assert isinstance(arrays["rgb"], np.memmap) and j == 1  # memory-mapped, not loaded
    inst = data.instance(3, views=[2, 0])
    direct = render_instance_arrays("chairs", 3, seed=2, views=3, size=24, supersample=1)
    np.testing.assert_array_equal((inst["rgb"].numpy() * 255).round().astype(np.uint8), direct["rgb"][[2, 0]])
    np.testing.assert_allclose(inst["cameras"].c2w.numpy(), direct["c2w"][[2, 0]])

    # an interrupted generation (a shard missing) is completed with identical data; others are kept
    before = np.load(out / "shard-00001" / "rgb.npy")
    shutil.rmtree(out / "shard-00001")
    mtime = (out / "shard-00000" / "rgb.npy").stat().st_mtime_ns
    generate_category("chairs", 5, out, views=3, size=24, seed=2, shard_size=2, supersample=1, workers=1, progress=False)
    np.testing.assert_array_equal(np.load(out / "shard-00001" / "rgb.npy"), before)
    assert (out / "shard-00000" / "rgb.npy").stat().st_mtime_ns == mtime
    with pytest.raises(FeatureFieldError, match="another generation"):
        generate_category("mugs", 5, out, views=3, size=24, seed=2, shard_size=2, workers=1, progress=False)

    # the stream draws training instances only, each with distinct source and target views
    samples = list(itertools.islice(iter(InstanceStream(out, "train", sources=1, seed=0)), 12))
    assert {s["instance"] for s in samples} == {0, 1, 2, 3}
    for s in samples:
        assert s["src_rgb"].shape == (1, 24, 24, 3) and s["src_rgb"].dtype == torch.uint8
        assert s["tgt_mask"].any()
        assert not torch.equal(s["src_c2w"][0], s["tgt_c2w"])


def test_bad_category_folders_are_user_errors(tmp_path):
    with pytest.raises(FeatureFieldError, match="make-category"):
        CategoryData(tmp_path)
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(FeatureFieldError, match="broken JSON"):
        CategoryData(tmp_path)
    with pytest.raises(FeatureFieldError, match="unknown category"):
        generate_category("tables", 4, tmp_path / "x")
