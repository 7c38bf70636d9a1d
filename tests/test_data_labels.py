"""Label maps from files (featurefield.data.labels) in every loader: layouts, encodings, downscaling, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from featurefield.data import load_scene
from featurefield.data.inspect import describe_labels, summarize
from featurefield.errors import FeatureFieldError
from tests.toyscenes import (
    edit_json,
    raises_one_line,
    random_labels,
    write_blender,
    write_classes,
    write_llff,
    write_nerfstudio,
    write_png,
    write_text_model,
)

CLASSES = ["floor", "table", "mug", "plant"]


def _expected(stored: np.ndarray, ignore: int = 255) -> torch.Tensor:
    """What a loaded map must hold: the stored values, the ignore value as -1."""
    out = torch.from_numpy(stored.astype(np.int64))
    out[out == ignore] = -1
    return out


def _llff(root):
    write_llff(root)
    return root, [f"IMG_{i:02d}" for i in range(9)], (16, 12)


def _nerfstudio(root):
    write_nerfstudio(root, n=3, size=(12, 8))
    return root, ["0", "1", "2"], (12, 8)


def _blender(root):
    write_blender(root, n_train=3, n_test=2)  # views: train r_0..r_2, then test r_0, r_1
    return root, ["train/r_0", "train/r_1", "train/r_2", "test/r_0", "test/r_1"], (16, 12)


def _colmap(root):
    write_text_model(root, "PINHOLE", n_images=3)
    return root, ["view_0", "view_1", "view_2"], (16, 12)


@pytest.mark.parametrize("layout", [_llff, _nerfstudio, _blender, _colmap], ids=["llff", "nerfstudio", "blender", "colmap"])
def test_labels_folder_is_read_in_every_format(tmp_path, layout):
    """labels/<image path>.png + labels.json: each view's map loads as written, 255 (ignore) as -1."""
    root, names, size = layout(tmp_path / "scene")
    maps = [random_labels(size, len(CLASSES), seed=k, ignore=255) for k in range(len(names))]
    for name, m in zip(names, maps):
        write_png(root / "labels" / f"{name}.png", m)
    write_classes(root, CLASSES, ignore=255)
    scene = load_scene(root)
    assert scene.class_names == CLASSES and len(scene.labelled_views(list(range(len(scene))))) == len(names)
    for i, m in enumerate(maps):
        got = scene.semantic(i)
        assert got.dtype == torch.int64 and torch.equal(got, _expected(m)), i
    assert (scene.semantic(0) == -1).any()
    assert scene.instances is None
    info = summarize(scene)
    assert describe_labels(info) == f"4 classes on {len(names)} of {len(names)} views"


def test_downscaled_labels_nearest_or_from_labels_n(tmp_path):
    """--downscale 2: labels/ maps are resized by nearest neighbour (the label under each output pixel's centre);
    where images_2/ and labels_2/ exist, labels_2/ is read as it is."""
    root, names, size = _llff(tmp_path / "llff")
    maps = [random_labels(size, len(CLASSES), seed=k, ignore=255) for k in range(len(names))]
    for name, m in zip(names, maps):
        write_png(root / "labels" / f"{name}.png", m)
    write_classes(root, CLASSES, ignore=255)
    half = load_scene(root, downscale=2)
    assert half.semantic(3).shape == (6, 8)
    for i, m in enumerate(maps):
        assert torch.equal(half.semantic(i), _expected(m)[1::2, 1::2]), i

    (root / "images_2").mkdir()
    small = [random_labels((8, 6), len(CLASSES), seed=100 + k) for k in range(len(names))]
    for name, m in zip(names, small):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "images_2" / f"{name}.png")
        write_png(root / "labels_2" / f"{name}.png", m)
    prescaled = load_scene(root, downscale=2)
    assert prescaled.images.paths[0].parent.name == "images_2"
    for i, m in enumerate(small):
        assert torch.equal(prescaled.semantic(i), _expected(m)), i
    for name in names:  # images_2/ without labels_2/: labels/ (checked at the size of images/) resized
        (root / "labels_2" / f"{name}.png").unlink()
    resized = load_scene(root, downscale=2)
    for i, m in enumerate(maps):
        assert torch.equal(resized.semantic(i), _expected(m)[1::2, 1::2]), i

    # nerfstudio resizing on load (no labels_2/): the same nearest sampling
    ns, ns_names, ns_size = _nerfstudio(tmp_path / "ns")
    ns_maps = [random_labels(ns_size, len(CLASSES), seed=k) for k in range(3)]
    for name, m in zip(ns_names, ns_maps):
        write_png(ns / "labels" / f"{name}.png", m)
    write_classes(ns, CLASSES)
    assert torch.equal(load_scene(ns, downscale=2).semantic(1), _expected(ns_maps[1])[1::2, 1::2])


def test_nerfstudio_frame_keys_panoptic_classes_palette_and_16bit_instances(tmp_path):
    """Per-frame semantics_path / instances_path; classes from nerfstudio's panoptic_classes.json ('thing');
    palette PNGs read as indices (as nerfstudio reads them); 16-bit instance ids as stored."""
    root, _, size = _nerfstudio(tmp_path / "ns")
    colours = [[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200]]
    (root / "panoptic_classes.json").write_text(json.dumps({"thing": CLASSES, "thing_colors": colours}))
    sem = [random_labels(size, len(CLASSES), seed=k) for k in range(3)]
    inst = [np.random.default_rng(k).integers(0, 1200, size=(size[1], size[0])).astype(np.uint16) for k in range(3)]
    palette = [c for rgb in colours for c in rgb] + [255, 255, 255] * 252  # colours unrelated to the values' order

    def frames(meta):
        for i, frame in enumerate(meta["frames"]):
            frame["semantics_path"] = f"segmentations/thing/{i}.png"
            frame["instances_path"] = f"inst/{i}.png"

    edit_json(root / "transforms.json", frames)
    for i in range(3):
        write_png(root / "segmentations" / "thing" / f"{i}.png", sem[i], palette=palette[::-1])
        write_png(root / "inst" / f"{i}.png", inst[i])
    assert Image.open(root / "segmentations/thing/0.png").mode == "P"
    assert Image.open(root / "inst/0.png").mode.startswith("I")
    scene = load_scene(root)
    assert scene.class_names == CLASSES and scene.background_instances == (0,)
    for i in range(3):
        assert torch.equal(scene.semantic(i), _expected(sem[i])), i
        assert torch.equal(scene.instance(i), torch.from_numpy(inst[i].astype(np.int64))), i
    assert int(scene.instance(0).max()) > 255


def test_colour_coded_rgb_maps_and_an_ignore_colour(tmp_path):
    root, names, size = _llff(tmp_path / "llff")
    colours = [[120, 0, 0], [0, 120, 0], [0, 0, 120], [120, 120, 0]]
    table = np.array(colours + [[0, 0, 0]], np.uint8)  # index 4: the ignore colour
    maps = [random_labels(size, 5, seed=k) for k in range(len(names))]
    for name, m in zip(names, maps):
        write_png(root / "labels" / f"{name}.png", table[m])
    write_classes(root, CLASSES, colors=colours, ignore=[0, 0, 0])
    scene = load_scene(root)
    for i, m in enumerate(maps):
        assert torch.equal(scene.semantic(i), _expected(m, ignore=4)), i


def test_partly_labelled_scene(tmp_path):
    """Views without a map are unlabelled (semantic() is None); inspect says how many are labelled."""
    root, names, size = _llff(tmp_path / "llff")
    for k in (0, 5):
        write_png(root / "labels" / f"{names[k]}.png", random_labels(size, 4, seed=k))
    write_classes(root, CLASSES)
    scene = load_scene(root)
    assert scene.labelled_views(list(range(9))) == [0, 5]
    assert scene.semantic(1) is None and scene.semantic(5) is not None
    assert scene.subset([5, 6]).labelled_views([0, 1]) == [0]
    assert describe_labels(summarize(scene)) == "4 classes on 2 of 9 views"


def test_labels_folder_without_labels_json_is_left_alone(tmp_path):
    """A labels/ folder is read only where labels.json names its classes (YOLO keeps .txt boxes there)."""
    root, names, size = _llff(tmp_path / "llff")
    (root / "labels").mkdir()
    (root / "labels" / f"{names[0]}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    scene = load_scene(root)
    assert scene.semantics is None and "labels_note" not in scene.metadata
    write_png(root / "labels" / f"{names[0]}.png", random_labels(size, 4, seed=0))
    scene = load_scene(root)
    assert scene.semantics is None and "labels.json" in describe_labels(summarize(scene))


def test_bad_label_files_are_one_line_errors(tmp_path):
    root, names, size = _llff(tmp_path / "llff")
    good = random_labels(size, 4, seed=0)
    label = root / "labels" / f"{names[2]}.png"
    write_png(label, good)
    write_classes(root, CLASSES)
    assert load_scene(root).semantic(2) is not None

    write_png(label, random_labels((12, 8), 4, seed=0))
    raises_one_line(root, str(label), "12x8", "16x12")
    Image.fromarray(good).save(label.with_suffix(".jpg"), format="JPEG")
    label.unlink()
    label.with_suffix(".jpg").rename(label)  # a JPEG under a .png name
    raises_one_line(root, str(label), "must be PNG")
    write_png(label, good)
    label.write_bytes(label.read_bytes()[:-20])
    raises_one_line(root, str(label), "truncated")
    write_png(label, np.stack([good] * 3, -1))
    raises_one_line(root, str(label), "mode RGB", "'colors'")
    write_png(label, good)

    for keys, words in [({"classes": []}, ["'classes'"]), ({"classes": ["a", "b", "a"]}, ["'a'", "twice"]),
                        ({"classes": CLASSES, "ignore": 2}, ["'ignore'", "from 4"]),
                        ({"classes": CLASSES, "colors": [[1, 2, 3]]}, ["one [r, g, b] per class (4)"]),
                        ({"classes": CLASSES, "colors": [[1, 2, 3], [1, 2, 3], [4, 5, 6], [7, 8, 9]]}, ["share"]),
                        ({"classes": CLASSES, "colors": [[1, 2, 3], [0, 2, 3], [4, 5, 6], [7, 8, 300]]}, ["colour 3", "0-255"]),
                        ({"classes": CLASSES, "background_instances": "0"}, ["background_instances"])]:
        (root / "labels.json").write_text(json.dumps(keys))
        raises_one_line(root, "labels.json", *words)
    (root / "labels.json").write_text("{not json")
    raises_one_line(root, "labels.json", "not valid JSON")

    # a value past the classes (no ignore value set) or a colour no class has: one line when the map is decoded
    write_classes(root, CLASSES)
    bad = good.copy()
    bad[0, :3] = 9
    write_png(label, bad)
    scene = load_scene(root)
    with pytest.raises(FeatureFieldError) as info:
        scene.semantic(2)
    assert "\n" not in str(info.value) and "label value 9 on 3 pixels" in str(info.value) and str(label) in str(info.value)
    write_classes(root, CLASSES, colors=[[9, 9, 9], [1, 1, 1], [2, 2, 2], [3, 3, 3]])
    write_png(label, np.full((*good.shape, 3), 7, np.uint8))
    with pytest.raises(FeatureFieldError) as info:
        load_scene(root).semantic(2)
    assert "\n" not in str(info.value) and "colour [7, 7, 7]" in str(info.value)

    label.unlink()
    raises_one_line(root, "labels.json", "no view has a label map", str(root / "labels" / f"{names[0]}.png"))


def test_nerfstudio_frame_keys_need_classes_and_files(tmp_path):
    root, _, size = _nerfstudio(tmp_path / "ns")
    edit_json(root / "transforms.json", lambda m: m["frames"][1].update(semantics_path="labels/one.png"))
    raises_one_line(root, "semantics map 'labels/one.png'", "does not exist")
    write_png(root / "labels" / "one.png", random_labels(size, 4, seed=1))
    raises_one_line(root, "labels.json", "missing")
    write_classes(root, CLASSES)
    scene = load_scene(root)
    assert scene.labelled_views([0, 1, 2]) == [1]
