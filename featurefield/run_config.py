"""What a run folder's ``config.json`` holds, typed: the scene, the field and its settings, the teachers,
the trainer's settings. It reproduces the run; :func:`featurefield.run.load_run` and ``--resume`` read it.

Layout of a run folder::

    RUN/config.json            the RunConfig (scene, field, teachers, trainer settings)
    RUN/normalization.json     world -> canonical similarity of the scene
    RUN/checkpoints/latest.pt  the newest good checkpoint (written atomically)
    RUN/metrics.jsonl          one JSON object per logged step and per evaluation
    RUN/metrics.json           the final summary (test PSNR, feature fidelity, time, memory)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurefield.data.scene import Normalization, Scene
from featurefield.errors import FeatureFieldError
from featurefield.io import atomic_write_json
from featurefield.teachers.spec import TeacherSpec

CONFIG = "config.json"
NORMALIZATION = "normalization.json"
CHECKPOINT = Path("checkpoints") / "latest.pt"


def plain(obj: Any) -> Any:
    """A dataclass (e.g. a field's config) or a structure of them as JSON-able values (paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


@dataclass
class SceneSpec:
    """How to load a run's scene again.

    Attributes:
        path: the scene folder (absolute), or ``"demo:SEED"`` for the built-in scene.
        format: the loader forced by ``--format`` (None: detected).
        downscale: the image shrink factor.
        options: the loader's options (``--scene-option``).
    """

    path: str
    format: str | None = None
    downscale: float = 1.0
    options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, scene: str | Path | Scene, format: str | None = None, downscale: float = 1.0,
           options: dict | None = None) -> SceneSpec:
        """The spec of a scene given as a folder, ``"demo"``/``"demo:SEED"``, or a loaded :class:`Scene`."""
        options = dict(options or {})
        if isinstance(scene, Scene):
            if scene.format == "demo":
                return cls(f"demo:{scene.metadata.get('seed', 0)}", None, 1.0, dict(scene.metadata.get("options", {})))
            if scene.source is None:
                raise FeatureFieldError("an in-memory scene without a source cannot be recorded in a run; save it first")
            return cls(str(Path(scene.source).resolve()), scene.format, downscale, options)
        path = str(scene)
        if not (path == "demo" or path.startswith("demo:")):
            path = str(Path(path).resolve())
        return cls(path, format, downscale, options)

    def load(self, normalization: Normalization | None = None) -> Scene:
        """Load the scene; with a run's recorded ``normalization``, placed in the run's canonical frame even where a
        re-fit would differ (views added to or removed from the folder since training)."""
        from featurefield.data import load_scene

        scene = load_scene(self.path, format=self.format, downscale=self.downscale, **self.options)
        if normalization is not None:
            scene = dataclasses.replace(scene, normalization=normalization)
        return scene


@dataclass
class RunConfig:
    """A run's ``config.json``.

    Attributes:
        scene: how to load the scene.
        field: the field backend's name (:mod:`featurefield.fields.registry`).
        field_config: the backend's settings as the field was created (its config dataclass as a dict,
            :meth:`FieldSpec.config_from_dict` reads it back).
        teachers: the distilled teachers.
        trainer: the training loop's settings (:class:`featurefield.train.TrainConfig` as a dict, ``steps`` resolved).
        background: the scene's background colour (scenes with alpha), or None.
        cache_dir: the feature cache folder used (None: the default).
        featurefield: the version that wrote it.
        scene_signature: a digest of the scene's views, cameras and first image
            (:func:`featurefield.train.scene_signature`): ``--resume`` with another scene path checks it.
    """

    scene: SceneSpec
    field: str
    field_config: dict = field(default_factory=dict)
    teachers: list[TeacherSpec] = field(default_factory=list)
    trainer: dict = field(default_factory=dict)
    background: list[float] | None = None
    cache_dir: str | None = None
    featurefield: str | None = None
    scene_signature: str | None = None

    @property
    def teacher_names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def teacher(self, name: str) -> TeacherSpec:
        for t in self.teachers:
            if t.name == name:
                return t
        raise FeatureFieldError(f"run has no teacher {name!r}; it was trained with {', '.join(self.teacher_names) or 'none'}")

    def to_dict(self) -> dict:
        return {"scene": plain(self.scene), "field": self.field, "field_config": plain(self.field_config),
                "teachers": [t.to_dict() for t in self.teachers], "trainer": plain(self.trainer),
                "background": self.background, "cache_dir": self.cache_dir, "featurefield": self.featurefield,
                "scene_signature": self.scene_signature}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Read a ``config.json`` dict, of this version or an older one (missing entries take their defaults)."""
        scene = d["scene"]
        return cls(
            scene=SceneSpec(scene["path"], scene.get("format"), float(scene.get("downscale", 1.0)),
                            dict(scene.get("options") or {})),
            field=d["field"], field_config=dict(d.get("field_config") or {}),
            teachers=[TeacherSpec.parse(t) for t in d.get("teachers", [])], trainer=dict(d.get("trainer") or {}),
            background=d.get("background"), cache_dir=d.get("cache_dir") or (d.get("trainer") or {}).get("cache_dir"),
            featurefield=d.get("featurefield"), scene_signature=d.get("scene_signature"))

    @classmethod
    def read(cls, folder: str | Path) -> RunConfig:
        """The config of the run in ``folder``, or a one-line error when it is missing or broken."""
        path = Path(folder) / CONFIG
        if not path.is_file():
            raise FeatureFieldError(f"{folder}: not a featurefield run (no {CONFIG}); pass the folder `featurefield train` wrote")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FeatureFieldError(f"{path}: broken JSON ({' '.join(str(err).split())}); the run folder is damaged: "
                                    "restore the file or train again") from err
        except (KeyError, TypeError, AttributeError) as err:
            raise FeatureFieldError(f"{path}: not a featurefield run config ({type(err).__name__}: {err})") from err

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` atomically."""
        return atomic_write_json(Path(folder) / CONFIG, self.to_dict())


def read_normalization(folder: str | Path) -> Normalization:
    """The run's world -> canonical similarity, or a one-line error when the file is missing."""
    path = Path(folder) / NORMALIZATION
    if not path.is_file():
        raise FeatureFieldError(f"{folder}: {NORMALIZATION} is missing; the run folder is incomplete (restore the file "
                                "or train again)")
    try:
        norm = Normalization.from_dict(json.loads(path.read_text()))
        if norm.center.shape != (3,) or not bool(norm.center.isfinite().all()) or not norm.scale > 0:
            raise ValueError("centre must be 3 finite numbers and scale > 0")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
        raise FeatureFieldError(f"{path}: broken ({' '.join(str(err).split())[:120]}); restore the file or train again") from err
    return norm
