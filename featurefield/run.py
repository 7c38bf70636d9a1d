"""A training run on disk, and loading it back for rendering, queries, evaluation and export.

Layout of a run folder::

    RUN/config.json            what reproduces the run (scene, field, teachers, trainer settings)
    RUN/normalization.json     world -> canonical similarity of the scene
    RUN/checkpoints/latest.pt  the newest good checkpoint (written atomically)
    RUN/metrics.jsonl          one JSON object per logged step and per evaluation
    RUN/metrics.json           the final summary (test PSNR, feature fidelity, time, memory)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.data.scene import Normalization, Scene
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, TeacherTarget, field_class
from featurefield.io import resolve_device

CONFIG = "config.json"
NORMALIZATION = "normalization.json"
CHECKPOINT = Path("checkpoints") / "latest.pt"


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


def scene_from_config(config: dict, normalization: Normalization | None = None) -> Scene:
    """Reload the scene as a run trained on it.

    Pass the run's recorded ``normalization``: the scene is then placed in the run's canonical frame
    even where a re-fit would differ (views added to or removed from the folder since training).
    """
    import dataclasses

    from featurefield.data import load_scene

    spec = config["scene"]
    scene = load_scene(spec["path"], format=spec.get("format"), downscale=spec.get("downscale", 1.0),
                       **spec.get("options", {}))
    if normalization is not None:
        scene = dataclasses.replace(scene, normalization=normalization)
    return scene


def teacher_from_spec(spec: dict):
    from featurefield.teachers import create_teacher

    return create_teacher(spec["name"], **spec.get("options", {}))


@dataclass
class Run:
    """A trained run loaded from its folder (see module docstring)."""

    path: Path
    config: dict
    field: FeatureField
    normalization: Normalization
    targets: list[TeacherTarget]
    step: int
    device: torch.device
    _scene: Scene | None = field(default=None, repr=False)
    _teachers: dict = field(default_factory=dict, repr=False)

    @property
    def teacher_names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def kind(self) -> str:
        return self.config["field"]

    def scene(self) -> Scene:
        if self._scene is None:
            self._scene = scene_from_config(self.config, self.normalization)
        return self._scene

    @property
    def background(self) -> Tensor | None:
        bg = self.config.get("background")
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
            specs = {t["name"]: t for t in self.config["teachers"]}
            if name not in specs:
                raise FeatureFieldError(
                    f"{self.path}: run has no teacher {name!r}; it was trained with {', '.join(specs)}"
                )
            self._teachers[name] = teacher_from_spec(specs[name]).to(self.device)
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

    def prompt_decoder(self, what: str = "prompts need"):
        """SAM's prompt decoder for a run trained with the sam teacher, or a one-line error (``what`` starts it)."""
        from featurefield.teachers.sam_decoder import SamPromptDecoder

        if "sam" not in self.teacher_names:
            raise FeatureFieldError(f"{self.path}: {what} a run trained with the sam teacher; "
                                    f"this run has {', '.join(self.teacher_names) or 'no teachers'}")
        spec = next(t for t in self.config["teachers"] if t["name"] == "sam")
        return SamPromptDecoder.from_weights(spec.get("options", {}).get("weights"), device=self.device)

    def features(self, name: str, views: list[int]) -> Tensor:
        """Teacher features ``[len(views), D, h, w]`` fp16 for scene views (from the feature cache)."""
        from featurefield.teachers.store import FeatureStore

        cache = self.config.get("cache_dir")
        store = FeatureStore(Path(cache) if cache else None)
        return store.load_or_extract(self.scene(), self.teacher(name), views, device=self.device, progress=False)


def load_run(path: str | Path, device: str | torch.device | None = None) -> Run:
    """Load a run folder written by :func:`featurefield.train.train`.

    Raises:
        FeatureFieldError: the folder, its config or its checkpoint is missing or broken.
    """
    path = Path(path)
    if not path.is_dir():
        raise FeatureFieldError(f"{path}: no such run folder")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise FeatureFieldError(f"{path}: not a featurefield run (no {CONFIG}); pass the folder `featurefield train` wrote")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise FeatureFieldError(f"{cfg_path}: broken JSON ({err})") from err
    device = resolve_device(device or "auto")
    ckpt = load_checkpoint(path / CHECKPOINT, device="cpu")
    if ckpt["field_kind"] != config.get("field"):
        raise FeatureFieldError(f"{path}: checkpoint is a {ckpt['field_kind']!r} field but config says {config.get('field')!r}")
    norm_path = path / NORMALIZATION
    if not norm_path.is_file():
        raise FeatureFieldError(f"{path}: {NORMALIZATION} is missing; the run folder is incomplete")
    normalization = Normalization.from_dict(json.loads(norm_path.read_text()))
    cls = field_class(ckpt["field_kind"])
    try:
        fld = cls.from_config(ckpt["field_config"], ckpt["field_state"])
    except (KeyError, RuntimeError, TypeError) as err:
        raise FeatureFieldError(f"{path / CHECKPOINT}: checkpoint does not fit the {ckpt['field_kind']} field ({err})") from err
    fld = fld.to(device).eval()
    targets = [TeacherTarget(**t) for t in ckpt["targets"]]
    for t in targets:
        t.grid = tuple(t.grid)
    return Run(path=path, config=config, field=fld, normalization=normalization, targets=targets,
               step=int(ckpt["step"]), device=device)
