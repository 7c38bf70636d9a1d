"""Scene loading: one loader per format, detected from a folder's contents.

``load_scene(path)`` detects the format (``--format`` forces one) and returns a
:class:`~featurefield.data.scene.Scene`. Format modules are listed in :data:`FORMATS`; each has a
``detect(path) -> bool`` and a ``load(path, **options) -> Scene``.
"""

from __future__ import annotations

from featurefield.data.images import ArraySource, ImageArrays, ImageFiles, ImageSource
from featurefield.data.registry import FORMATS, detect_format, load_scene
from featurefield.data.scene import Normalization, PointCloud, Scene

__all__ = [
    "ArraySource", "FORMATS", "ImageArrays", "ImageFiles", "ImageSource", "Normalization", "PointCloud",
    "Scene", "detect_format", "load_scene",
]
