"""Helpers the scene loaders share: image look-up, size checks, downscaling, splits, options.

Every check here raises :class:`~featurefield.errors.FeatureFieldError` with a one-line message that
names the offending file, so each loader reports bad input the same way.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.data.images import image_size
from featurefield.errors import FeatureFieldError

#: Extensions tried, in order, when a referenced image file lacks one (or is stored re-encoded).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".JPG", ".JPEG", ".PNG")
#: Files counted as photos when a loader lists a folder.
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def read_json(path: Path) -> dict:
    """Parse a JSON object from ``path``, with a one-line error for a missing or broken file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise FeatureFieldError(f"{path}: file not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FeatureFieldError(f"{path}: not valid JSON ({err}); fix or regenerate the file") from err
    if not isinstance(data, dict):
        raise FeatureFieldError(f"{path}: expected a JSON object at the top level")
    return data


def resolve_image(base: Path, relative: str, source: Path, what: str = "image") -> Path:
    """Find the file a transforms file refers to.

    The path is tried as given, then with each of :data:`IMAGE_SUFFIXES` appended (Blender frames
    omit the extension) and in place of its own suffix (a scene re-encoded to another format).

    Raises:
        FeatureFieldError: no candidate exists.
    """
    given = (base / relative) if not Path(relative).is_absolute() else Path(relative)
    candidates = [given]
    candidates += [given.with_name(given.name + s) for s in IMAGE_SUFFIXES]
    if given.suffix:
        candidates += [given.with_suffix(s) for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise FeatureFieldError(f"{source}: {what} {relative!r} is referenced but {given} does not exist")


def list_photos(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def json_number(value: Any, source: Path | str, what: str, *, positive: bool = False, integer: bool = False,
                below: float | None = None) -> float:
    """A number given in a scene file, checked: a real number (not text, a list, null or a boolean), finite,
    ``> 0`` when ``positive``, whole when ``integer`` and ``< below`` when given.

    Raises:
        FeatureFieldError: naming ``what`` in ``source`` and the value found.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and positive:
        ok = value > 0
    if ok and below is not None:
        ok = value < below
    if not ok:
        kind = "a whole number" if integer else "a number"
        bounds = " > 0" if positive else ""
        bounds += f" and < {below:g}" if below is not None else ""
        raise FeatureFieldError(f"{source}: {what} must be {kind}{bounds}, found {json.dumps(value)[:60]}; fix the file")
    return int(value) if integer else float(value)


def check_unique(paths: Sequence[Path], source: Path | str) -> None:
    """Every view's image file is listed once (a repeated frame would count twice in training and metrics)."""
    seen: dict[Path, int] = {}
    for k, path in enumerate(paths):
        key = Path(path).resolve()
        if key in seen:
            raise FeatureFieldError(f"{source}: frame {k} repeats the image of frame {seen[key]} ({Path(path).name}); "
                                    "remove the duplicate frame")
        seen[key] = k


def check_complete(path: Path) -> None:
    """A cheap check that a PNG or JPEG file is not cut short: its last bytes are the format's end marker.

    Reading the header finds a wrong size, not a truncated file; decoding every image up front would cost
    as much as a pass over the data. PNG ends with an ``IEND`` chunk, JPEG with the ``FF D9`` marker
    (some cameras append a few bytes after it, hence a search in the last KiB).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError as err:
        raise FeatureFieldError(f"{path}: cannot read image ({err.strerror})") from err
    truncated = (head.startswith(b"\x89PNG") and b"IEND" not in tail[-12:]) or \
                (head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail)
    if truncated:
        raise FeatureFieldError(f"{path}: the image file is truncated (cut short); copy it again or remove its frame")


def check_sizes(paths: Sequence[Path], widths: Sequence[int] | Tensor, heights: Sequence[int] | Tensor,
                source: Path | str) -> None:
    """Check each image's size (header only, no decoding) against the declared camera size, and that the
    file is complete (:func:`check_complete`): every view, train and test alike, before any work.

    Raises:
        FeatureFieldError: an image is missing, unreadable, truncated, or of another size than declared.
    """
    for path, w, h in zip(paths, widths, heights):
        actual = image_size(path)
        check_complete(path)
        if actual != (int(w), int(h)):
            raise FeatureFieldError(
                f"{path}: image is {actual[0]}x{actual[1]} but {source} declares a {int(w)}x{int(h)} camera; "
                "resize the image or give it its own intrinsics"
            )


def uniform_size(paths: Sequence[Path], source: Path | str) -> tuple[int, int]:
    """The common ``(width, height)`` of images that share one declared camera.

    Raises:
        FeatureFieldError: the images differ in size.
    """
    first = image_size(paths[0])
    check_complete(paths[0])
    check_sizes(paths[1:], [first[0]] * (len(paths) - 1), [first[1]] * (len(paths) - 1), source)
    return first


def downscaled_size(width: int, height: int, downscale: float) -> tuple[int, int]:
    """The size :func:`featurefield.data.images.read_image` gives an image resized by ``downscale``."""
    if downscale == 1.0:
        return width, height
    return int(width // downscale), int(height // downscale)


def resize_cameras(cameras: Cameras, width: Tensor, height: Tensor) -> Cameras:
    """Cameras for the same views at another image size ``width``/``height`` (``[N]`` int).

    Intrinsics scale about the image corner (pixel-centre convention stays exact).
    """
    width = torch.as_tensor(width, dtype=torch.int64).reshape(-1).expand(len(cameras)).clone()
    height = torch.as_tensor(height, dtype=torch.int64).reshape(-1).expand(len(cameras)).clone()
    sx = width.to(torch.float64) / cameras.width.to(torch.float64)
    sy = height.to(torch.float64) / cameras.height.to(torch.float64)
    return replace(
        cameras, fx=(cameras.fx * sx).float(), fy=(cameras.fy * sy).float(), cx=(cameras.cx * sx).float(),
        cy=(cameras.cy * sy).float(), width=width, height=height, c2w=cameras.c2w.clone(),
        distortion=cameras.distortion.clone(),
    )


def downscale_cameras(cameras: Cameras, downscale: float) -> Cameras:
    """Cameras matching images resized by ``1/downscale`` with :class:`~featurefield.data.images.ImageFiles`."""
    if downscale == 1.0:
        return cameras
    sizes = [downscaled_size(int(w), int(h), downscale) for w, h in zip(cameras.width, cameras.height)]
    return resize_cameras(cameras, torch.tensor([s[0] for s in sizes]), torch.tensor([s[1] for s in sizes]))


def check_downscale(downscale: float) -> None:
    if not np.isfinite(downscale) or downscale < 1.0:
        raise FeatureFieldError(f"downscale must be a number >= 1 (got {downscale}); 2 halves the resolution")


def prescaled_folder(folder: Path, downscale: float) -> Path | None:
    """``folder_N`` (e.g. ``images_4``) next to ``folder`` when ``downscale`` is the integer N and it exists."""
    if downscale == 1.0 or float(downscale) != int(downscale):
        return None
    candidate = folder.with_name(f"{folder.name}_{int(downscale)}")
    return candidate if candidate.is_dir() else None


def holdout_split(n: int, every: int = 8) -> dict[str, list[int]]:
    """The usual hold-out: views ``i % every == 0`` are test, the rest train."""
    test = [i for i in range(n) if i % every == 0]
    train = [i for i in range(n) if i % every != 0]
    return {"train": train, "test": test}


def take_options(options: dict[str, Any], allowed: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Merge ``options`` over ``allowed`` defaults; an unknown option is a user error."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise FeatureFieldError(
            f"unknown option(s) {', '.join(sorted(unknown))} for the {fmt} format; "
            f"known: {', '.join(sorted(allowed)) or 'none'}"
        )
    return {**allowed, **options}


def finite_matrix(value: Any, shape: tuple[int, ...], source: Path | str, what: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape``, or a one-line error naming ``what`` in ``source``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FeatureFieldError(f"{source}: {what} is not a numeric matrix") from err
    if arr.shape != shape:
        raise FeatureFieldError(f"{source}: {what} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise FeatureFieldError(f"{source}: {what} contains NaN or inf; fix or remove that view")
    return arr


def background_option(value: Any, fmt: str) -> tuple[float, float, float]:
    """The ``background`` loader option: three numbers in [0, 1] (RGB), or a one-line error."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(c, numbers.Real) and not isinstance(c, bool) and 0 <= c <= 1 for c in value)
    if not ok:
        raise FeatureFieldError(f"{fmt}: background must be three numbers (RGB in [0, 1]), e.g. background=[0,0,0]; "
                                f"got {value!r}")
    return tuple(float(c) for c in value)
