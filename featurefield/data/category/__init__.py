"""Procedural object categories for generalizable fields: generation, the sharded format, streaming.

``generate_category("mugs", 1000, "data/mugs")`` renders random mugs (RGB, depth, part labels, named
keypoints with per-view visibility) into memory-mappable shards; :class:`CategoryData` reads them lazily
and :class:`InstanceStream` streams training samples from them.
"""

from featurefield.data.category.generate import generate_category
from featurefield.data.category.shapes import CATEGORIES
from featurefield.data.category.shards import CategoryData, InstanceStream

__all__ = ["CATEGORIES", "CategoryData", "InstanceStream", "generate_category"]
