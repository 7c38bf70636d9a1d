"""Per-view label maps read from files beside a scene's images: semantic classes and instance ids.

Every loader (Blender, nerfstudio, COLMAP, LLFF) looks for the same layout in the scene folder::

    SCENE/labels.json       {"classes": ["floor", "table", "mug"], "ignore": 255, "colors": [[0, 0, 0], ...]}
    SCENE/labels/...png     one label map per view, where a view is labelled (views may go without)
    SCENE/instances/...png  optional instance ids, the same way (0: no object)

A view's map has its image's path inside the scene with the first folder ``images/`` (or ``images_N/``)
replaced by ``labels/`` and the suffix by ``.png``: ``images/IMG_01.JPG -> labels/IMG_01.png``,
``images/cam0/0001.jpg -> labels/cam0/0001.png``; an image outside ``images/`` keeps its path under
``labels/`` (Blender's ``train/r_0.png -> labels/train/r_0.png``). nerfstudio's ``transforms.json`` may name
the files per frame instead, as nerfstudio names masks (``mask_path``): ``"semantics_path"`` and
``"instances_path"``. ``labels/`` is read only where ``labels.json`` names its classes (a ``labels/`` folder
of other files, such as YOLO boxes, stays untouched).

``labels.json``:

* ``classes`` (required): the class names; a pixel's value is its class's index.
* ``ignore``: the value (e.g. 255) or the ``[r, g, b]`` colour of unlabelled pixels, left out of every metric.
* ``colors``: one ``[r, g, b]`` per class (0-255), to read colour-coded RGB maps.
* ``background_instances``: instance ids that are not objects (default ``[0]``).

nerfstudio's ``panoptic_classes.json`` (its sitcoms3D scenes) is read in place of a missing ``labels.json``:
``thing`` names the classes and ``thing_colors`` gives their colours, as nerfstudio's ``Semantics`` has them.

Encodings, as nerfstudio reads its segmentation PNGs: a single-channel PNG (8- or 16-bit grey) holds class
values; a palette PNG holds them as palette indices (the palette only colours them); an RGB PNG is colour-coded,
each colour looked up in ``colors``. Maps must be lossless: JPEG would change the values at every edge.

Inside featurefield a map is ``[H, W]`` int64 with :data:`UNLABELLED` (-1) on unlabelled pixels.

Checked up front, before any pixel is decoded (as images are): the class file, and for every map that it is
a complete PNG of a usable mode at its image's full-resolution size. Checked as each map is decoded (lazily,
one view at a time): every value is a class or the ignore value, every colour a listed one. Each failure is
one :class:`~featurefield.errors.FeatureFieldError` line naming the file and the fix.

Downscaling: ``labels_N/`` (and ``instances_N/``) is used where ``downscale`` is the integer N and it holds
every labelled view at the downscaled size, as ``images_N/`` is; otherwise the full-resolution maps are
resized to the view's size by nearest neighbour (each output pixel takes the label under its centre).
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featurefield.data.images import ArraySource
from featurefield.data.loading import check_complete, read_json
from featurefield.data.scene import Scene
from featurefield.errors import FeatureFieldError

#: The label value of unlabelled pixels inside featurefield (left out of every metric).
UNLABELLED = -1
#: Class files looked for in the scene folder, in this order.
CLASS_FILES = ("labels.json", "panoptic_classes.json")
#: Folder per kind of map, beside ``images/``.
FOLDERS = {"semantic": "labels", "instance": "instances"}
#: PIL modes of single-channel integer maps (a palette's index is the value).
_SINGLE = {"1", "L", "LA", "P", "PA", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_COLOUR = {"RGB", "RGBA"}
_IMAGE_FOLDER = re.compile(r"images(_\d+)?")


@dataclass(frozen=True)
class LabelClasses:
    """The classes of a scene's semantic maps, from ``labels.json`` (or ``panoptic_classes.json``).

    Attributes:
        names: class names, index = label value.
        ignore: the stored value (int) or ``(r, g, b)`` colour of unlabelled pixels, or None.
        colors: ``[C, 3]`` uint8 colour per class, or None.
        background_instances: instance ids that are not objects.
        source: the file read.
    """

    names: list[str]
    ignore: int | tuple[int, int, int] | None
    colors: np.ndarray | None
    background_instances: tuple[int, ...]
    source: Path


def _colour(value, source: Path, what: str) -> tuple[int, int, int]:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    if not ok:
        raise FeatureFieldError(f"{source}: {what} must be [r, g, b] with whole numbers 0-255, found "
                                f"{json.dumps(value)[:60]}; fix the file")
    return tuple(value)


def read_classes(path: Path) -> LabelClasses:
    """Parse and check a class file (see the module docstring for its keys).

    Raises:
        FeatureFieldError: the file is broken, or a key has a wrong value (one line naming it).
    """
    path = Path(path)
    meta = read_json(path)
    panoptic = path.name == "panoptic_classes.json" and "classes" not in meta
    names_key, colors_key = ("thing", "thing_colors") if panoptic else ("classes", "colors")
    names = meta.get(names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise FeatureFieldError(f"{path}: '{names_key}' must list the class names, e.g. "
                                '{"classes": ["floor", "table", "mug"]} (a pixel\'s value is its class\'s index)')
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FeatureFieldError(f"{path}: class {repeated[0]!r} is listed twice; give each class one index")
    colors = None
    if meta.get(colors_key) is not None:
        given = meta[colors_key]
        if not isinstance(given, list) or len(given) != len(names):
            raise FeatureFieldError(f"{path}: '{colors_key}' must give one [r, g, b] per class ({len(names)}), "
                                    f"found {len(given) if isinstance(given, list) else json.dumps(given)[:40]}")
        colors = np.array([_colour(c, path, f"colour {k} of '{colors_key}'") for k, c in enumerate(given)], np.uint8)
        keys = [tuple(c) for c in colors.tolist()]
        twice = next((k for k, c in enumerate(keys) if keys.index(c) != k), None)
        if twice is not None:
            raise FeatureFieldError(f"{path}: classes {names[keys.index(keys[twice])]!r} and {names[twice]!r} share the "
                                    f"colour {list(keys[twice])}; give each class its own colour")
    ignore = meta.get("ignore")
    if isinstance(ignore, list):
        ignore = _colour(ignore, path, "'ignore' (a colour)")
        if colors is not None and any(tuple(c) == ignore for c in colors.tolist()):
            raise FeatureFieldError(f"{path}: the ignore colour {list(ignore)} is also a class's colour; pick another")
    elif ignore is not None:
        if not isinstance(ignore, int) or isinstance(ignore, bool) or not len(names) <= ignore <= 65535:
            raise FeatureFieldError(f"{path}: 'ignore' must be a whole number from {len(names)} (past the last class) "
                                    f"to 65535, or an [r, g, b] colour; found {json.dumps(ignore)[:40]}")
    background = meta.get("background_instances", [0])
    if not isinstance(background, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0
                                                   for b in background):
        raise FeatureFieldError(f"{path}: 'background_instances' must list whole numbers >= 0 (ids that are not "
                                f"objects), found {json.dumps(background)[:40]}")
    return LabelClasses(list(names), ignore, colors, tuple(background), path)


def label_file(root: Path, image: Path, folder: str) -> Path:
    """The label map of ``image`` in ``root/folder`` (see the module docstring): ``images/a/b.jpg -> folder/a/b.png``."""
    rel = Path(os.path.relpath(os.path.abspath(image), os.path.abspath(root)))  # symlinked images/ stays images/
    parts = rel.parts if rel.parts and rel.parts[0] != ".." else (rel.name,)
    if len(parts) > 1 and _IMAGE_FOLDER.fullmatch(parts[0]):
        parts = parts[1:]
    return Path(root).joinpath(folder, *parts).with_suffix(".png")


def prescaled_file(root: Path, file: Path, downscale: float) -> Path | None:
    """``labels_N/x.png`` for ``labels/x.png`` when ``downscale`` is the integer N (whether it exists or not)."""
    if downscale == 1.0 or float(downscale) != int(downscale):
        return None
    rel = Path(os.path.relpath(os.path.abspath(file), os.path.abspath(root)))
    if len(rel.parts) < 2 or rel.parts[0] == "..":
        return None
    return Path(root).joinpath(f"{rel.parts[0]}_{int(downscale)}", *rel.parts[1:])


def check_map(path: Path, size: tuple[int, int], colours: bool, kind: str) -> None:
    """Header checks of one label map (no decoding): a complete PNG, a usable mode, ``size`` = ``(w, h)``."""
    try:
        with Image.open(path) as im:
            fmt, mode, actual = im.format, im.mode, im.size
    except FileNotFoundError as err:
        raise FeatureFieldError(f"{path}: {kind} map not found") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise FeatureFieldError(f"{path}: cannot read the {kind} map ({err}); the file is broken or not an image") from err
    if fmt != "PNG":
        raise FeatureFieldError(f"{path}: {kind} maps must be PNG (lossless), this is {fmt}; lossy compression changes "
                                "label values at every edge, so export them as PNG")
    check_complete(path)
    allowed = _SINGLE | (_COLOUR if colours and kind == "semantic" else set())
    if mode not in allowed:
        if mode in _COLOUR and kind == "semantic":
            why = "an RGB map is colour-coded: give each class's colour in labels.json's 'colors'"
        else:
            why = "save it as a single-channel PNG (8- or 16-bit grey, or a palette) of integer values"
        raise FeatureFieldError(f"{path}: {kind} map of mode {mode} cannot be read; {why}")
    if tuple(actual) != tuple(size):
        raise FeatureFieldError(f"{path}: {kind} map is {actual[0]}x{actual[1]} but its image is {size[0]}x{size[1]}; "
                                "label maps must match their images pixel for pixel")


def decode_map(path: Path, classes: LabelClasses | None) -> np.ndarray:
    """Decode a label map to ``[H, W]`` int64 (ignore -> :data:`UNLABELLED`); with ``classes``, a semantic map
    checked against them, without, instance ids as stored.

    Raises:
        FeatureFieldError: unreadable, or a value (colour) that is no class and not the ignore value.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im.convert("RGB") if mode == "RGBA" else im)
    except (OSError, ValueError, SyntaxError) as err:
        raise FeatureFieldError(f"{path}: cannot read the label map ({err}); the file is broken") from err
    if mode in _COLOUR:
        return _from_colours(path, arr, classes)
    values = (arr[..., 0] if arr.ndim == 3 else arr).astype(np.int64)
    if classes is None:
        return values
    count = len(classes.names)
    ignore = classes.ignore if isinstance(classes.ignore, int) else None
    bad = (values >= count) & (values != ignore) if ignore is not None else values >= count
    if bad.any():
        found = int(values[bad][0])
        ignored = f" and the ignore value {ignore}" if ignore is not None else " (no 'ignore' value is set)"
        raise FeatureFieldError(f"{path}: label value {found} on {int(bad.sum())} pixels, but {classes.source.name} lists "
                                f"{count} classes (0-{count - 1}){ignored}; add the class or fix the map")
    if ignore is not None:
        values[values == ignore] = UNLABELLED
    return values


def _from_colours(path: Path, rgb: np.ndarray, classes: LabelClasses | None) -> np.ndarray:
    """``[H, W, 3]`` uint8 colour-coded map -> class indices, by exact colour."""
    if classes is None or classes.colors is None:
        raise FeatureFieldError(f"{path}: an RGB map is colour-coded: give each class's colour in labels.json's 'colors'")
    key = lambda c: (c[..., 0].astype(np.int64) << 16) | (c[..., 1].astype(np.int64) << 8) | c[..., 2]  # noqa: E731
    keys = key(rgb)
    table = key(classes.colors)
    order = np.argsort(table)
    pos = np.clip(np.searchsorted(table[order], keys), 0, len(table) - 1)
    found = table[order][pos] == keys
    out = np.where(found, order[pos], UNLABELLED).astype(np.int64)
    if isinstance(classes.ignore, tuple):
        found |= keys == key(np.array(classes.ignore))
    if not found.all():
        colour = rgb[~found][0].tolist()
        raise FeatureFieldError(f"{path}: colour {colour} on {int((~found).sum())} pixels is no class's colour in "
                                f"{classes.source.name}; add it to 'colors' (or as 'ignore'), or fix the map")
    return out


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` labels resampled to ``size = (w, h)``: each output pixel takes the label under its centre."""
    H, W = labels.shape
    w, h = size
    if (W, H) == (w, h):
        return labels
    rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
    return labels[rows[:, None], cols[None, :]]


def label_source(files: Sequence[Path | None], sizes: Sequence[tuple[int, int]], classes: LabelClasses | None,
                 cache_size: int = 4) -> ArraySource:
    """Lazily decoded maps of ``files`` (None: an unlabelled view), each resized to its view's ``(w, h)``; the last
    ``cache_size`` decoded are kept (a 4K map is 100 MB as int64, so few)."""
    files, sizes = list(files), [tuple(s) for s in sizes]
    cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def load(i: int) -> torch.Tensor:
        if files[i] is None:
            w, h = sizes[i]
            return torch.full((h, w), UNLABELLED, dtype=torch.int64)
        if i not in cache:
            cache[i] = torch.from_numpy(np.ascontiguousarray(resize_nearest(decode_map(files[i], classes), sizes[i])))
            if len(cache) > cache_size:
                cache.popitem(last=False)
        cache.move_to_end(i)
        return cache[i]

    return ArraySource(len(files), load, has=lambda i: files[i] is not None)


def _maps(root: Path, kind: str, images: Sequence[Path], given: Sequence[Path | None] | None,
          full: list[tuple[int, int]], final: list[tuple[int, int]], downscale: float,
          colours: bool) -> tuple[list[Path | None], list[tuple[int, int]]] | None:
    """The map file of each view (None where a view has none) and the size it must have, or None without maps."""
    if given is not None and any(f is not None for f in given):
        files = list(given)
    else:
        files = [label_file(root, p, FOLDERS[kind]) for p in images]
        files = [f if f.is_file() else None for f in files]
    if not any(f is not None for f in files):
        return None
    pre = [None if f is None else prescaled_file(root, f, downscale) for f in files]
    if downscale != 1.0 and all((f is None) or (p is not None and p.is_file()) for f, p in zip(files, pre)):
        files, sizes = pre, final
    else:
        sizes = full
    for f, size in zip(files, sizes):
        if f is not None:
            check_map(f, size, colours, kind)
    return files, sizes


def attach_labels(scene: Scene, images: Sequence[Path], full_sizes: Sequence[tuple[int, int]], downscale: float = 1.0,
                  *, semantic_files: Sequence[Path | None] | None = None,
                  instance_files: Sequence[Path | None] | None = None, source: Path | str | None = None) -> Scene:
    """``scene`` with the label maps found beside its images (see the module docstring), checked up front.

    Args:
        scene: a loaded scene; ``scene.source`` is the folder searched, its cameras give each view's size.
        images: each view's image file (as the loader reads it, for naming its map).
        full_sizes: each view's full-resolution ``(w, h)``: what ``labels/`` maps must measure.
        downscale: the loader's factor (``labels_N/`` is used where it has every map).
        semantic_files, instance_files: explicit files per view (nerfstudio's per-frame keys), None where a
            view has none; None to look in ``labels/`` and ``instances/``.
        source: the file that named explicit maps, for messages.

    Returns:
        The scene, with ``semantics``, ``class_names`` and ``background_instances`` where it has semantic maps
        and ``instances`` where it has instance maps; unchanged where it has neither.
    """
    root = Path(scene.source)
    class_file = next((root / name for name in CLASS_FILES if (root / name).is_file()), None)
    classes = read_classes(class_file) if class_file is not None else None
    full = [(int(w), int(h)) for w, h in full_sizes]
    final = [(int(w), int(h)) for w, h in zip(scene.cameras.width, scene.cameras.height)]
    fields: dict = {}
    metadata = dict(scene.metadata)
    explicit = semantic_files is not None and any(f is not None for f in semantic_files)
    if classes is None and explicit:
        raise FeatureFieldError(f"{source or root}: frames name semantics maps but {root / 'labels.json'} (their class "
                                'names) is missing; write {"classes": ["name of 0", "name of 1", ...]} there')
    if classes is not None:
        found = _maps(root, "semantic", images, semantic_files, full, final, downscale, classes.colors is not None)
        if found is None:
            example = label_file(root, images[0], FOLDERS["semantic"])
            raise FeatureFieldError(f"{class_file}: names label classes but no view has a label map (the first would be "
                                    f"{example}); add the maps or remove {class_file.name}")
        files, sizes = found
        fields.update(semantics=label_source(files, final, classes), class_names=list(classes.names),
                      background_instances=classes.background_instances)
        metadata["labels"] = {"classes_file": str(class_file), "labelled_views": sum(f is not None for f in files),
                              "ignore": list(classes.ignore) if isinstance(classes.ignore, tuple) else classes.ignore}
        if classes.colors is not None:
            metadata["labels"]["colors"] = classes.colors.tolist()
    elif any(label_file(root, p, FOLDERS["semantic"]).is_file() for p in images[:50]):
        metadata["labels_note"] = (f"{root / FOLDERS['semantic']} holds maps named like the images but no labels.json "
                                   "names their classes, so they are not read (README: Labels)")
    found = _maps(root, "instance", images, instance_files, full, final, downscale, False)
    if found is not None:
        fields["instances"] = label_source(found[0], final, None)
        metadata["instance_views"] = sum(f is not None for f in found[0])
    if not fields and metadata == scene.metadata:
        return scene
    return replace(scene, **fields, metadata=metadata)


def write_label_map(path: Path, labels: torch.Tensor | np.ndarray, ignore: int) -> Path:
    """Save ``[H, W]`` integer labels as a single-channel PNG (8-bit where the values fit, else 16-bit),
    :data:`UNLABELLED` written as ``ignore``."""
    arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    arr = np.where(arr < 0, ignore, arr)
    if arr.max(initial=0) > 65535:
        raise FeatureFieldError(f"{path}: label value {int(arr.max())} does not fit a 16-bit PNG")
    dtype = np.uint8 if arr.max(initial=0) <= 255 else np.uint16
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(dtype)).save(path)
    return Path(path)
