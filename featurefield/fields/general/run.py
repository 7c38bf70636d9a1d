"""Loading a generalizable run back, and single images with their cameras as its inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields.general.model import GeneralConfig, GeneralField
from featurefield.fields.general.train import KIND, make_teacher
from featurefield.io import resolve_device
from featurefield.run import load_checkpoint
from featurefield.run_config import CHECKPOINT, CONFIG


@dataclass
class GeneralRun:
    """A trained generalizable field: ``field``, the run's ``config`` dict, ``step``; the teacher on demand."""

    path: Path
    config: dict
    field: GeneralField
    step: int
    device: torch.device
    _teacher: object = field(default=None, repr=False)
    weights: Path | None = None  # the teacher's weights in place of the run's record (``--weights``)

    def teacher(self):
        """The distillation teacher (created from the run's record the first time it is needed)."""
        if self._teacher is None:
            self._teacher = make_teacher(self.config["teacher"], self.device, self.weights)
        return self._teacher

    def data(self, path: str | Path | None = None):
        """The category data it was trained on (or another generation at ``path``)."""
        from featurefield.data.category import CategoryData

        return CategoryData(path or self.config["data"])


def is_general_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder whose config says it holds a generalizable field."""
    cfg = Path(path) / CONFIG
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("field") == KIND
    except (OSError, json.JSONDecodeError):
        return False


def load_general_run(path: str | Path, device: str | torch.device | None = None, teacher=None,
                     weights: str | Path | None = None) -> GeneralRun:
    """Load a run folder written by :func:`~featurefield.fields.general.train.train_general`.

    Args:
        path: the run folder. device: ``auto`` by default. teacher: a teacher object to use instead of
            creating the recorded one (needed for teachers that are not registered, e.g. in tests).
        weights: the teacher's weights file or folder in place of where the run recorded them.
    Raises:
        FeatureFieldError: not a run, a run of another field kind, or a missing/broken checkpoint.
    """
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise FeatureFieldError(f"{path}: not a featurefield run (no {CONFIG}); pass the folder `featurefield train general` wrote")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise FeatureFieldError(f"{cfg_path}: broken JSON ({err})") from err
    if config.get("field") != KIND:
        raise FeatureFieldError(f"{path}: holds a {config.get('field')!r} field, not a generalizable one; this needs a run "
                                "trained with `featurefield train general`")
    device = resolve_device(device or "auto")
    ckpt = load_checkpoint(path / CHECKPOINT, device="cpu")
    fcfg = GeneralConfig(**ckpt["field_config"])
    if fcfg.encoder == "teacher" and teacher is None:
        teacher = make_teacher(config["teacher"], device, weights)
    fld = GeneralField(fcfg, teacher)
    fld.load_state_dict(ckpt["field_state"])
    fld = fld.to(device).eval()
    return GeneralRun(path, config, fld, int(ckpt["step"]), device, teacher,
                      None if weights is None else Path(weights).expanduser())


def read_camera(path: str | Path, size: tuple[int, int]) -> Cameras:
    """A camera from a JSON file: ``{"c2w": 4x4 (OpenCV), "fx", "fy", "cx", "cy"}`` for an image ``size = (H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFieldError(f"{path}: no camera file; an image needs its camera as JSON beside it "
                                '(IMAGE.json: {"c2w": 4x4 OpenCV camera-to-world, "fx", "fy", "cx", "cy"}) or --camera')
    try:
        cam = json.loads(path.read_text())
        c2w = torch.tensor(cam["c2w"], dtype=torch.float32).reshape(1, 4, 4)
        cameras = Cameras(c2w=c2w, fx=cam["fx"], fy=cam["fy"], cx=cam["cx"], cy=cam["cy"], width=size[1], height=size[0])
    except (json.JSONDecodeError, KeyError, TypeError, RuntimeError, ValueError) as err:
        raise FeatureFieldError(f"{path}: not a camera file ({type(err).__name__}: {err}); it needs c2w, fx, fy, cx, cy") from err
    cameras.validate(str(path))
    return cameras


def read_image_with_camera(image: str | Path, camera: str | Path | None = None) -> tuple[Tensor, Cameras]:
    """An RGB image ``[3, H, W]`` in [0, 1] and its camera (``camera``, else the JSON file beside the image)."""
    from featurefield.data.images import read_image

    image = Path(image)
    if not image.is_file():
        raise FeatureFieldError(f"{image}: no such image")
    arr = read_image(image)
    rgb = torch.from_numpy(np.array(arr)).float() / 255.0
    rgb = rgb[..., :3].permute(2, 0, 1).contiguous()
    return rgb, read_camera(camera or image.with_suffix(".json"), tuple(rgb.shape[1:]))


def write_view(data, instance: int, view: int, path: str | Path) -> Path:
    """Write one view of a generated instance as ``PATH`` (PNG) and its camera as ``PATH.json`` (for queries)."""
    from PIL import Image

    from featurefield.io import atomic_write_bytes, atomic_write_json

    path = Path(path)
    inst = data.instance(instance, views=[view])
    import io

    buf = io.BytesIO()
    Image.fromarray((inst["rgb"][0].numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    cam = inst["cameras"]
    atomic_write_json(path.with_suffix(".json"), {
        "c2w": cam.c2w[0].tolist(), "fx": float(cam.fx[0]), "fy": float(cam.fy[0]), "cx": float(cam.cx[0]),
        "cy": float(cam.cy[0]), "instance": int(instance), "view": int(view),
        "keypoints_uv": inst["uv"][0].tolist(), "keypoints_visible": inst["visible"][0].tolist()})
    return path


def view_from_scene(scene, view: int, size: tuple[int, int], distance: float | None = None) -> tuple[Tensor, Cameras]:
    """One view of any loaded :class:`~featurefield.data.scene.Scene` framed as the category's training views.

    The scene's canonical frame is rescaled so this camera sits ``distance`` from the origin (the
    generated views' camera distance), and the image is centre-cropped to the aspect of ``size = (H, W)``
    and resized to it, with the intrinsics following. The object is assumed to be at the scene's centre,
    upright (z up), as the category's instances are.

    Returns:
        ``image [3, H, W]`` in [0, 1] (alpha composited on white) and its camera.
    """
    import torch.nn.functional as F

    from featurefield.data.category.render import DISTANCE

    if not 0 <= view < len(scene.cameras):
        raise FeatureFieldError(f"{scene.name}: no view {view}; it has {len(scene.cameras)}")
    if scene.cameras.is_distorted:
        raise FeatureFieldError(f"{scene.name}: view {view} has lens distortion; undistort the scene first")
    cam = scene.normalization.cameras_to_canonical(scene.cameras[[view]])
    c2w = cam.c2w.clone()
    c2w[0, :3, 3] *= (distance or DISTANCE) / c2w[0, :3, 3].norm().clamp_min(1e-6)
    img = scene.images.load(view).float()
    if img.shape[-1] == 4:
        img = img[..., :3] * img[..., 3:] + (1 - img[..., 3:])
    H0, W0 = img.shape[:2]
    H, W = size
    crop = min(H0 / H, W0 / W)  # the largest centred window of the target aspect
    ch, cw = round(H * crop), round(W * crop)
    top, left = (H0 - ch) // 2, (W0 - cw) // 2
    img = img[top:top + ch, left:left + cw].permute(2, 0, 1)[None]
    img = F.interpolate(img, size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    sx, sy = W / cw, H / ch
    out = Cameras(c2w=c2w, fx=cam.fx * sx, fy=cam.fy * sy, cx=(cam.cx - left) * sx, cy=(cam.cy - top) * sy,
                  width=W, height=H)
    return img, out
