"""Field backends by name: one :class:`FieldSpec` each, built in or from another package.

A spec says everything the trainer and the CLI need to know about a backend without importing it: its
config dataclass (``featurefield train NAME`` exposes it as ``--NAME.xxx``), its
:class:`~featurefield.fields.base.FeatureField` class, its default run length, and what to advise when it
runs out of GPU memory. What a field can do beyond the protocol (render a subset of itself, export its own
format) the field class says through its capabilities (:meth:`FeatureField.capabilities`).

Adding a backend is one module (the field and its config) and one spec: in :data:`BUILTIN` for an in-tree
backend, or in another package's ``featurefield.fields`` entry-point group
(``name = "package.module:SPEC"``, a :class:`FieldSpec`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from featurefield.errors import FeatureFieldError


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class FieldSpec:
    """What the trainer and the CLI know about one field backend.

    Attributes:
        name: the backend's name (``featurefield train NAME``, a run's ``config.json`` ``"field"``).
        config: ``"module:Class"`` of its config dataclass (constructible with no arguments; a ``from_dict``
            classmethod or staticmethod, when present, reads a recorded config back).
        field: ``"module:Class"`` of its :class:`~featurefield.fields.base.FeatureField`.
        summary: one line for ``featurefield train --help``.
        cpu_steps: default training steps on the CPU (what the demo scene fits in a few minutes).
        cuda_steps: default training steps on a GPU.
        oom_advice: what lowers its memory, for the out-of-GPU-memory message (e.g. its settings to lower).
        commands: verbs the field answers with commands of its own, as ``(verb, "module:function")`` pairs in
            :mod:`featurefield.commands`: a field trained on something other than one scene (the generalizable
            field trains over a category of objects) trains, queries and evaluates its runs through them.
    """

    name: str
    config: str
    field: str
    summary: str
    cpu_steps: int
    cuda_steps: int = 30_000
    oom_advice: str = ""
    commands: tuple[tuple[str, str], ...] = ()

    def own_command(self, verb: str) -> str | None:
        """``"module:function"`` of the field's own command for ``verb`` (``train``, ``query``, ``eval``), if any."""
        return dict(self.commands).get(verb)

    def config_class(self) -> type:
        return _load(self.config)

    def field_class(self):
        return _load(self.field)

    def default_steps(self, device: torch.device | str) -> int:
        return self.cuda_steps if torch.device(device).type == "cuda" else self.cpu_steps

    def config_from_dict(self, settings: dict):
        """The config dataclass recorded as ``settings`` (a run's ``config.json`` ``"field_config"``)."""
        cls = self.config_class()
        from_dict = getattr(cls, "from_dict", None)
        try:
            return from_dict(settings) if from_dict is not None else cls(**settings)
        except TypeError as err:
            raise FeatureFieldError(f"the recorded {self.name} settings do not fit this version ({err})") from err

    def capabilities(self) -> frozenset[str]:
        """What the field can do beyond the protocol (see :meth:`FeatureField.capabilities`)."""
        return self.field_class().capabilities()


#: the backends of this package
BUILTIN: dict[str, FieldSpec] = {
    "splat": FieldSpec(
        "splat", "featurefield.fields.splat.config:SplatConfig", "featurefield.fields.splat.model:GaussianField",
        summary="3D Gaussians with a learnt embedding decoded per teacher (Feature 3DGS; fast)",
        cpu_steps=520,
        oom_advice="a smaller field (--splat.max-gaussians, --splat.mcmc.cap-max, --splat.embed-dim)",
    ),
    "nerf": FieldSpec(
        "nerf", "featurefield.fields.nerf.config:NerfConfig", "featurefield.fields.nerf.model:NerfField",
        summary="a Nerfacto radiance field and a separate hash-grid feature field (F3RM)",
        cpu_steps=2_400,
        oom_advice="fewer rays a step (--nerf.rays-per-batch)",
    ),
    "general": FieldSpec(
        "general", "featurefield.fields.general.model:GeneralConfig", "featurefield.fields.general.model:GeneralField",
        summary="generalizable (FeatureNeRF): trained over a generated category; one image in, a 3D feature volume out",
        cpu_steps=2_000, cuda_steps=20_000,
        oom_advice="fewer instances or rays a step (--batch, --rays)",
        commands=(("train", "general:train_general_command"), ("query", "general:general_query_command"),
                  ("eval", "general:general_eval_command")),
    ),
}

_PLUGINS: dict[str, FieldSpec] | None = None


def _plugins() -> dict[str, FieldSpec]:
    global _PLUGINS
    if _PLUGINS is None:
        from importlib.metadata import entry_points

        _PLUGINS = {}
        for ep in entry_points(group="featurefield.fields"):
            if ep.name in BUILTIN:
                continue
            spec = ep.load()
            if not isinstance(spec, FieldSpec):
                raise FeatureFieldError(f"entry point featurefield.fields:{ep.name} ({ep.value}) is not a FieldSpec")
            _PLUGINS[ep.name] = spec
    return _PLUGINS


def registered() -> dict[str, FieldSpec]:
    """Every field backend by name: the built-in ones, then those of the ``featurefield.fields`` entry points."""
    return {**BUILTIN, **_plugins()}


def field_spec(name: str) -> FieldSpec:
    """The spec of the backend called ``name``, or a one-line error listing the known ones."""
    specs = registered()
    if name not in specs:
        raise FeatureFieldError(f"unknown field {name!r}; expected one of {', '.join(specs)}")
    return specs[name]
