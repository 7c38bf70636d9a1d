"""The Teacher interface and the registry that finds teachers by name.

A teacher is a frozen 2D foundation model whose dense features get distilled into 3D. Adding one
means writing one module with a factory and registering it, either in-tree with
:func:`register_teacher` or from another package through the ``featurefield.teachers`` entry-point
group (``name = "package.module:factory"``); the core never changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError


class Teacher(ABC):
    """A frozen dense-feature extractor.

    Attributes:
        name: registry name (``"sam"``, ``"clip"``, ``"dino"``, ...).
        dim: feature dimension ``D``.
        has_text: whether :meth:`encode_text` is available (CLIP-like teachers).
    """

    name: str = "teacher"
    dim: int = 0
    has_text: bool = False

    @abstractmethod
    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        """Feature map size ``(h, w)`` that :meth:`extract` returns for ``height x width`` images."""

    @abstractmethod
    def extract(self, images: Tensor) -> Tensor:
        """Dense features.

        Args:
            images: ``[N, 3, H, W]`` float32 RGB in [0, 1], on any device.
        Returns:
            ``[N, D, h, w]`` float32 features on the same device, ``(h, w) = feature_grid(H, W)``.
        """

    def encode_text(self, texts: list[str]) -> Tensor:
        """Text embeddings ``[T, D]``, L2-normalized, in the same space as the image features."""
        raise FeatureFieldError(f"teacher {self.name!r} has no text encoder; use a teacher with one (clip)")

    def settings(self) -> dict:
        """Everything that changes the features (model, weights file, resolution...): the cache key."""
        return {"name": self.name, "dim": self.dim}

    def to(self, device: torch.device | str) -> "Teacher":
        return self



class PatchGridTeacher(Teacher):
    """Geometry shared by ViT teachers (CLIP, DINO): the image is resized so its shorter side is
    ``resolution`` and both sides are whole patches; features come one per patch.

    Subclasses set ``self.model``, ``self.patch``, ``self.resolution`` and ``self.device``.
    """

    patch: int = 14
    resolution: int = 224

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Image size fed to the model: shorter side ``resolution``, both sides whole patches."""
        s = self.resolution / min(height, width)
        p = self.patch
        return max(p, round(height * s / p) * p), max(p, round(width * s / p) * p)

    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        rh, rw = self.resized_size(height, width)
        return rh // self.patch, rw // self.patch

    def to(self, device) -> "PatchGridTeacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

TeacherFactory = Callable[..., Teacher]
_REGISTRY: dict[str, TeacherFactory] = {}
_BUILTIN_MODULES = ("featurefield.teachers.sam", "featurefield.teachers.clip", "featurefield.teachers.dino")


def register_teacher(name: str) -> Callable[[TeacherFactory], TeacherFactory]:
    """Decorator: ``@register_teacher("sam") def make_sam(**options) -> Teacher``."""

    def wrap(factory: TeacherFactory) -> TeacherFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def _load_all() -> None:
    import importlib
    from importlib.metadata import entry_points

    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:  # a teacher whose optional dependency is absent is simply not listed
            pass
    for ep in entry_points(group="featurefield.teachers"):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available_teachers() -> list[str]:
    """Names of every registered teacher (built-in and entry points)."""
    _load_all()
    return sorted(_REGISTRY)


def create_teacher(name: str, **options) -> Teacher:
    """Build the teacher registered as ``name`` with ``options`` (e.g. ``weights=PATH``)."""
    _load_all()
    if name not in _REGISTRY:
        raise FeatureFieldError(f"unknown teacher {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name](**options)
