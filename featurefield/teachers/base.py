"""The Teacher interface and the registry that finds teachers by name.

A teacher is a frozen 2D foundation model whose dense features get distilled into 3D. Adding one
means writing one module with a :class:`Teacher` subclass (or a factory) and registering it, either
in-tree with :func:`register_teacher` or from another package through the ``featurefield.teachers``
entry-point group (``name = "package.module:TeacherClass"``); the core never changes.

Code outside ``teachers/`` knows a teacher by its capabilities, never by its name: :attr:`Teacher.has_text`
(a text encoder, for language queries), :attr:`Teacher.has_prompts` (a prompt decoder, for point / box
prompts: :meth:`Teacher.prompt_decoder`), :attr:`Teacher.weights_folder` (takes the command line's
``--weights``; :attr:`Teacher.weights_location` says where they were found, for the run to record),
:meth:`Teacher.describe` and :meth:`Teacher.fetch_weights` (``featurefield teachers`` / ``featurefield weights``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError


class Teacher(ABC):
    """A frozen dense-feature extractor.

    Attributes:
        name: registry name (``"sam"``, ``"clip"``, ``"dino"``, ...).
        dim: feature dimension ``D``.
        has_text: whether :meth:`encode_text` is available (CLIP-like teachers).
        has_prompts: whether :meth:`prompt_decoder` gives a decoder of point / box prompts (SAM-like teachers).
        weights_folder: whether the command line's ``--weights`` (a weights file or folder) is meant for it.
    """

    name: str = "teacher"
    dim: int = 0
    has_text: bool = False
    has_prompts: ClassVar[bool] = False
    weights_folder: ClassVar[bool] = False

    @classmethod
    def describe(cls, weights: str | Path | None = None) -> dict[str, Any]:
        """Static facts for ``featurefield teachers``, with no model loaded: ``{"dim", "has_text", "weights"
        (present: True / False / None when unknown), "where" (the weights' place, or how to get them)}``;
        ``weights``: the ``weights`` option the teacher would be created with."""
        return {"dim": cls.dim or None, "has_text": cls.has_text, "weights": None, "where": "(plug-in)"}

    @classmethod
    def fetch_weights(cls, target: Path | None = None, timeout: float = 600.0) -> Path:
        """Put the teacher's weights into ``target`` (default: the per-user cache); returns the folder."""
        raise FeatureFieldError(f"featurefield does not download {cls.name} weights; put them where the teacher "
                                "looks (see `featurefield teachers`) or pass weights=PATH")

    @property
    def weights_location(self) -> Path | None:
        """Where this teacher's weights file or folder was found (absolute), for a run to record so that later
        commands find them without ``--weights``; None where its weights are not files found on disk."""
        return None

    def prompt_decoder(self, device: torch.device | str | None = None):
        """The teacher's decoder of point / box prompts on its features (where :attr:`has_prompts`), e.g.
        :class:`~featurefield.teachers.sam_decoder.SamPromptDecoder`."""
        raise FeatureFieldError(f"teacher {self.name!r} has no prompt decoder; use a teacher with one (sam)")

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

    def to(self, device: torch.device | str) -> Teacher:
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

    def to(self, device) -> PatchGridTeacher:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

TeacherFactory = Callable[..., Teacher]
_REGISTRY: dict[str, TeacherFactory] = {}
_BUILTIN_MODULES = ("featurefield.teachers.sam", "featurefield.teachers.clip", "featurefield.teachers.dino")


def register_teacher(name: str) -> Callable[[TeacherFactory], TeacherFactory]:
    """Decorator: ``@register_teacher("sam") class SamTeacher(Teacher)`` (or on a factory function
    ``def make(**options) -> Teacher``; its capabilities then default to :class:`Teacher`'s)."""

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


def registered() -> dict[str, TeacherFactory]:
    """Every registered teacher by name (built-in and entry points): its class, or its factory."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def available_teachers() -> list[str]:
    """Names of every registered teacher (built-in and entry points)."""
    return list(registered())


def teacher_class(name: str) -> type[Teacher]:
    """The class registered as ``name`` (for a factory function: :class:`Teacher`, whose capabilities are
    the defaults), to ask a capability without loading a model."""
    factory = registered().get(name)
    if factory is None:
        raise FeatureFieldError(f"unknown teacher {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return factory if isinstance(factory, type) and issubclass(factory, Teacher) else Teacher


def describe(name: str, weights: str | Path | None = None) -> dict[str, Any]:
    """:meth:`Teacher.describe` of the teacher registered as ``name`` (a factory's own ``describe`` when it has one)."""
    factory = registered().get(name)
    own = getattr(factory, "describe", None)
    if own is not None and not isinstance(factory, type):
        return own()
    return teacher_class(name).describe(weights)


def takes_weights_folder(name: str) -> bool:
    """Whether the command line's ``--weights`` is meant for the teacher ``name`` (unknown names: no)."""
    return name in registered() and teacher_class(name).weights_folder


def teacher_has_text(name: str) -> bool | None:
    """Whether teacher ``name`` encodes text, asked without loading a model: its class's capability, or a
    factory function's ``describe()``; None where neither says (ask a built teacher then)."""
    _load_all()
    factory = _REGISTRY.get(name)
    if isinstance(factory, type) and issubclass(factory, Teacher):
        return bool(factory.has_text)
    describe = getattr(factory, "describe", None)
    if describe is None:
        return None
    return bool(describe().get("has_text", False))


def create_teacher(name: str, **options) -> Teacher:
    """Build the teacher registered as ``name`` with ``options`` (e.g. ``weights=PATH``)."""
    _load_all()
    if name not in _REGISTRY:
        raise FeatureFieldError(f"unknown teacher {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    check_options(name, _REGISTRY[name], options)
    return _REGISTRY[name](**options)


def check_options(name: str, factory, options: dict) -> None:
    """Options a teacher factory does not take, or of another kind than its default (text for a number,
    a number for a name), as one line, before the teacher is built."""
    import inspect
    import typing

    try:
        params = inspect.signature(factory).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            # a factory passing **options on: check against the class it returns, where it says which
            made = typing.get_type_hints(factory).get("return")
            if not inspect.isclass(made):
                return
            params = inspect.signature(made.__init__).parameters
    except (TypeError, ValueError, NameError):  # no signature or hints to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k != "self"]
    for key, value in options.items():
        if key not in known:
            raise FeatureFieldError(f"teacher {name}: unknown option {key!r}; it takes {', '.join(known) or 'none'}")
        default = params[key].default
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = number and (isinstance(default, float) or float(value).is_integer())
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise FeatureFieldError(f"teacher {name}: option {key}={value!r} should be like its default {default!r}")
