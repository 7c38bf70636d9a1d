"""A trained run loaded back from its folder, for rendering, queries, evaluation and export.

The folder's layout and its ``config.json`` are described in :mod:`featurefield.run_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.data.scene import Normalization, Scene
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, TeacherTarget
from featurefield.fields.registry import field_spec, registered
from featurefield.io import resolve_device
from featurefield.run_config import CHECKPOINT, CONFIG, RunConfig, read_normalization


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint file, turning a missing or broken file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFieldError(f"{path}: no checkpoint found; train first or point to a run folder")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise FeatureFieldError(f"{path}: cannot read checkpoint ({type(err).__name__}); the file is broken") from err
    if not isinstance(ckpt, dict) or "field_state" not in ckpt or "field_kind" not in ckpt:
        raise FeatureFieldError(f"{path}: not a featurefield checkpoint")
    return ckpt


@dataclass
class Run:
    """A trained run loaded from its folder.

    ``weights``: the teachers' weights file or folder given on the command line (``--weights``), in place of
    where the run recorded them (:attr:`~featurefield.teachers.spec.TeacherSpec.weights`); None uses the record.
    Teachers are made when first asked for (:meth:`teacher`), so rendering needs none of them.
    """

    path: Path
    config: RunConfig
    field: FeatureField
    normalization: Normalization
    targets: list[TeacherTarget]
    step: int
    device: torch.device
    weights: Path | None = None
    _scene: Scene | None = field(default=None, repr=False)
    _teachers: dict = field(default_factory=dict, repr=False)

    @property
    def teacher_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def scene(self) -> Scene:
        if self._scene is None:
            self._scene = self.config.scene.load(self.normalization)
        return self._scene

    @property
    def background(self) -> Tensor | None:
        bg = self.config.background
        return None if bg is None else torch.tensor(bg, dtype=torch.float32, device=self.device)

    def view_indices(self, split: str = "test") -> list[int]:
        scene = self.scene()
        if split == "all":
            return list(range(len(scene)))
        if split not in scene.split:
            raise FeatureFieldError(f"{self.path}: the scene has no {split!r} split (has {', '.join(scene.split)})")
        return list(scene.split[split])

    def cameras(self, split: str = "test") -> Cameras:
        """Cameras of a split in the canonical frame (what ``field.render`` takes)."""
        scene = self.scene()
        return self.normalization.cameras_to_canonical(scene.cameras[self.view_indices(split)]).to(self.device)

    def teacher(self, name: str):
        if name not in self._teachers:
            if name not in self.config.teacher_names:
                raise FeatureFieldError(f"{self.path}: run has no teacher {name!r}; it was trained with "
                                        f"{', '.join(self.config.teacher_names)}")
            self._teachers[name] = self.config.teacher(name).create(self.weights).to(self.device)
        return self._teachers[name]

    def text_teacher(self, name: str | None = None):
        """The run's teacher with a text encoder (``name`` or the first one), or a one-line error naming them."""
        if name is not None and name not in self.teacher_names:
            raise FeatureFieldError(f"{self.path}: run has no teacher {name!r}; it was trained with "
                                    f"{', '.join(self.teacher_names) or 'no teachers'}")
        has_text = [t for t in self.teacher_names if self.teacher(t).has_text]
        if name is not None and name not in has_text:
            hint = f"use --teacher {has_text[0]}" if has_text else "train with --teacher clip"
            raise FeatureFieldError(f"{self.path}: teacher {name!r} has no text encoder; {hint}")
        if not has_text:
            raise FeatureFieldError(f"{self.path}: text queries need a teacher with a text encoder (clip); this run's "
                                    f"teachers ({', '.join(self.teacher_names) or 'none'}) have none; train with --teacher clip")
        return self.teacher(name or has_text[0])

    @property
    def prompt_teachers(self) -> list[str]:
        """The run's teachers with a prompt decoder (:attr:`~featurefield.teachers.base.Teacher.has_prompts`),
        asked without loading their models."""
        from featurefield.teachers import teacher_class

        return [t for t in self.teacher_names if teacher_class(t).has_prompts]

    def prompt_decoder(self, what: str = "prompts need", teacher: str | None = None):
        """The prompt decoder of ``teacher`` (default: the first teacher with one), or a one-line error
        (``what`` starts it)."""
        names = self.prompt_teachers
        if teacher is not None and teacher not in names:
            names = []
        if not names:
            raise FeatureFieldError(f"{self.path}: {what} a run trained with a teacher that decodes prompts (sam); "
                                    f"this run has {', '.join(self.teacher_names) or 'no teachers'}")
        return self.teacher(teacher or names[0]).prompt_decoder(self.device)

    def features(self, name: str, views: list[int]) -> Tensor:
        """Teacher features ``[len(views), D, h, w]`` fp16 for scene views (from the feature cache)."""
        from featurefield.teachers.store import FeatureStore

        cache = self.config.cache_dir
        store = FeatureStore(Path(cache) if cache else None)
        return store.load_or_extract(self.scene(), self.teacher(name), views, device=self.device, progress=False)

    def feature_rows(self, name: str, views: list[int]):
        """Teacher features of scene views as a reader, ``rows.read(k) -> [D, h, w]`` fp16 numpy of ``views[k]``
        (extracted first where not cached): for going through many views one at a time."""
        from featurefield.teachers.store import FeatureStore

        cache = self.config.cache_dir
        store = FeatureStore(Path(cache) if cache else None)
        return store.rows(self.scene(), self.teacher(name), views, device=self.device, progress=False)


def _refuse_own_command_runs(path: Path) -> None:
    """A one-line error for a run of a field that answers its verbs itself (see ``FieldSpec.commands``)."""
    import json

    try:
        kind = json.loads((path / CONFIG).read_text()).get("field")
    except (OSError, ValueError, AttributeError):
        return  # RunConfig.read says what is wrong
    if isinstance(kind, str) and kind in registered():
        verbs = [verb for verb, _ in field_spec(kind).commands if verb != "train"]
        if verbs:
            raise FeatureFieldError(f"{path}: holds a {kind} field, which only `featurefield {' / '.join(verbs)} RUN` take; "
                                    "this command needs a run trained on a scene (`featurefield train splat|nerf SCENE`)")


def load_run(path: str | Path, device: str | torch.device | None = None, weights: str | Path | None = None) -> Run:
    """Load a run folder written by :func:`featurefield.train.train`; ``weights``: see :class:`Run`.

    Raises:
        FeatureFieldError: the folder, its config or its checkpoint is missing or broken.
    """
    path = Path(path)
    if not path.is_dir():
        raise FeatureFieldError(f"{path}: no such run folder")
    _refuse_own_command_runs(path)
    config = RunConfig.read(path)
    if weights is not None and not Path(weights).expanduser().exists():
        raise FeatureFieldError(f"--weights {weights}: no such file or folder; pass the folder holding the teacher's weights")
    device = resolve_device(device or "auto")
    ckpt = load_checkpoint(path / CHECKPOINT, device="cpu")
    if ckpt["field_kind"] != config.field:
        raise FeatureFieldError(f"{path}: checkpoint is a {ckpt['field_kind']!r} field but config says {config.field!r}")
    normalization = read_normalization(path)
    cls = field_spec(ckpt["field_kind"]).field_class()
    try:
        fld = cls.from_config(ckpt["field_config"], ckpt["field_state"])
    except (KeyError, RuntimeError, TypeError) as err:
        raise FeatureFieldError(f"{path / CHECKPOINT}: checkpoint does not fit the {ckpt['field_kind']} field ({err})") from err
    fld = fld.to(device).eval()
    targets = [TeacherTarget(**t) for t in ckpt["targets"]]
    for t in targets:
        t.grid = tuple(t.grid)
    return Run(path=path, config=config, field=fld, normalization=normalization, targets=targets,
               step=int(ckpt["step"]), device=device, weights=None if weights is None else Path(weights).expanduser())
