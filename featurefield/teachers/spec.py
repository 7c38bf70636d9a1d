"""A teacher as a run records it: name, options, loss weight; parsed from the command line's short form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from featurefield.errors import FeatureFieldError


def parse_options(items, what: str) -> dict:
    """``["k=v", ...]`` -> ``{k: v}`` with JSON values parsed (numbers, booleans), strings kept."""
    options: dict = {}
    for item in items:
        if "=" not in item:
            raise FeatureFieldError(f"{what} {item!r} is not key=value")
        k, v = item.split("=", 1)
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    return options


@dataclass
class TeacherSpec:
    """One teacher of a run.

    Attributes:
        name: the registered teacher (:func:`featurefield.teachers.registered`).
        options: keyword arguments of its factory (e.g. ``model``, ``weights``).
        weight: its loss weight.
        weights: where its weights file or folder was found when the run was made (absolute; the teacher's
            :attr:`~featurefield.teachers.base.Teacher.weights_location`), which later commands use by default;
            None for a teacher with no weights on disk, or a run written before it was recorded.
    """

    name: str
    options: dict = field(default_factory=dict)
    weight: float = 1.0
    weights: str | None = None

    @classmethod
    def parse(cls, spec: str | dict | TeacherSpec, weights: str | Path | None = None) -> TeacherSpec:
        """``"clip:model=ViT-B-16,pretrained=random@0.5"`` -> a spec; a dict (a run's record) or a spec as is.

        ``@W`` sets the loss weight; ``key=value`` pairs become teacher options (numbers parsed). ``weights`` (the
        command line's ``--weights``) becomes the ``weights`` option of a teacher whose weights are a file or
        folder found on disk (:func:`featurefield.teachers.base.takes_weights_folder`), unless the spec sets it.
        """
        from featurefield.teachers.base import takes_weights_folder

        if isinstance(spec, TeacherSpec):
            out = cls(spec.name, dict(spec.options), float(spec.weight), spec.weights)
        elif isinstance(spec, dict):
            out = cls(spec["name"], dict(spec.get("options", {})), float(spec.get("weight", 1.0)), spec.get("weights"))
        else:
            weight, text = 1.0, spec
            if "@" in text:
                text, w = text.rsplit("@", 1)
                try:
                    weight = float(w)
                except ValueError as err:
                    raise FeatureFieldError(f"teacher {spec!r}: the loss weight after @ is not a number") from err
            name, _, rest = text.partition(":")
            out = cls(name, parse_options(filter(None, rest.split(",")), f"teacher option in {text!r}:"), weight)
        if not math.isfinite(out.weight) or out.weight < 0:
            raise FeatureFieldError(f"teacher {out.name!r}: the loss weight must be a number >= 0, got {out.weight:g}")
        if weights is not None and "weights" not in out.options and takes_weights_folder(out.name):
            out.options["weights"] = str(Path(weights).expanduser().resolve())
        return out

    def to_dict(self) -> dict:
        out = {"name": self.name, "options": dict(self.options), "weight": self.weight}
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    def create(self, weights: str | Path | None = None):
        """The :class:`~featurefield.teachers.base.Teacher` this spec describes (its weights are not moved to a device).

        Its weights come from ``weights`` (the command line's ``--weights``, for a teacher that takes a weights
        folder), else from the recorded :attr:`weights` while that place exists, else from the ``weights`` option
        or the usual places (``$FEATUREFIELD_WEIGHTS``, the user cache: :mod:`featurefield.teachers.weights`).
        """
        from featurefield.teachers.base import create_teacher, takes_weights_folder

        options = dict(self.options)
        if takes_weights_folder(self.name):
            if weights is not None:
                options["weights"] = str(weights)
            elif self.weights is not None:
                if Path(self.weights).exists():
                    options["weights"] = self.weights
                else:  # moved or deleted since the run was made: look where the teacher looks by default
                    options.pop("weights", None)
        return create_teacher(self.name, **options)

    def recorded(self, teacher) -> TeacherSpec:
        """This spec with the weights location of ``teacher`` (built from it) recorded in :attr:`weights`."""
        where = teacher.weights_location
        return TeacherSpec(self.name, dict(self.options), self.weight, None if where is None else str(where))
