"""The format registry: detection order, and ``load_scene``.

Each format module exposes ``detect(path: Path) -> bool`` and
``load(path: Path, *, downscale: float = 1, **options) -> Scene``. Detection runs in the order of
:data:`FORMATS` (most specific first); the demo scene is addressed as ``demo`` or ``demo:SEED``.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

from featurefield.data.scene import Scene
from featurefield.errors import FeatureFieldError

#: format name -> module implementing ``detect`` and ``load``; detection order is this order.
FORMATS: dict[str, str] = {
    "blender": "featurefield.data.blender",
    "nerfstudio": "featurefield.data.nerfstudio",
    "colmap": "featurefield.data.colmap",
    "llff": "featurefield.data.llff",
}


def _module(name: str):
    return importlib.import_module(FORMATS[name])


def detect_format(path: Path) -> str:
    """Name of the first format whose ``detect`` accepts ``path``.

    Raises:
        FeatureFieldError: the path is missing, empty, or no format matches.
    """
    path = Path(path)
    if not path.exists():
        raise FeatureFieldError(f"{path}: no such file or folder")
    if path.is_dir() and not any(path.iterdir()):
        raise FeatureFieldError(f"{path}: the folder is empty; point to a scene folder")
    for name in FORMATS:
        if _module(name).detect(path):
            return name
    raise FeatureFieldError(
        f"{path}: unrecognised scene format; expected one of {', '.join(FORMATS)} "
        "(for plain photos run `featurefield process-images PHOTOS OUT` first)"
    )


def load_scene(path: str | Path, format: str | None = None, downscale: float = 1.0, **options) -> Scene:
    """Load a scene folder (or ``"demo"`` / ``"demo:SEED"`` for the built-in procedural scene).

    Args:
        path: scene folder (or a transforms/poses file inside one).
        format: force a format from :data:`FORMATS`; ``None`` detects it.
        downscale: shrink images by this factor (cameras are scaled to match).
        options: format-specific options (e.g. ``background`` for Blender scenes).
    """
    if format is not None and format not in FORMATS:
        raise FeatureFieldError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(downscale, bool) or not isinstance(downscale, (int, float)) or not math.isfinite(downscale) \
            or downscale < 1:
        raise FeatureFieldError(f"--downscale must be a number >= 1 (got {downscale}); 2 halves the resolution")
    if str(path) == "demo" or str(path).startswith("demo:"):
        from featurefield.data.demo_scene import make_demo_scene

        text = str(path).split(":", 1)[1] if ":" in str(path) else "0"
        if not text.lstrip("-").isdigit():
            raise FeatureFieldError(f"demo scene: {path!r} is not demo:SEED with a whole-number seed (e.g. demo:1)")
        seed = int(text)
        scene = make_demo_scene(seed=seed, **options)
        scene.metadata.update(seed=seed, options=dict(options))
        return scene
    path = Path(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise FeatureFieldError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    elif not path.exists():
        raise FeatureFieldError(f"{path}: no such file or folder")
    scene = _module(format).load(path, downscale=downscale, **options)
    scene.cameras.validate(str(path))
    return scene
