"""featurefield: distill 2D foundation-model features (CLIP, DINO, SAM) into 3D scenes."""

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError

__version__ = "0.1.0"

__all__ = ["Cameras", "FeatureFieldError", "__version__"]
