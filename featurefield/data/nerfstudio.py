"""nerfstudio ``transforms.json`` scenes: reader and writer.

The file holds intrinsics globally or per frame (``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``,
``k1``-``k4``, ``p1``, ``p2``), a ``camera_model`` (``PINHOLE``, ``OPENCV``, ``OPENCV_FISHEYE``)
and ``frames`` with ``file_path``, an OpenGL 4x4 ``transform_matrix`` and optionally ``mask_path``
(the mask becomes the image's alpha channel). Optional keys: ``ply_file_path`` (sparse points),
``train_filenames`` / ``val_filenames`` / ``test_filenames`` (else every 8th view is held out).
Label maps: per frame ``semantics_path`` / ``instances_path`` (class names in ``labels.json`` or nerfstudio's
``panoptic_classes.json``), else ``labels/`` beside ``images/`` (:mod:`featurefield.data.labels`).

``applied_transform`` (3x4 or 4x4), written by ``ns-process-data``, is the transform nerfstudio
applied to the original (SfM) world frame before writing poses and the PLY. featurefield undoes
it, so cameras and points are reported in that original frame and line up with the COLMAP model.

Downscaling uses ``images_N`` folders (and ``masks_N``) where they exist, else resizes on load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featurefield.cameras import OPENGL_TO_OPENCV, Cameras
from featurefield.data.images import ImageFiles, image_size
from featurefield.data.labels import attach_labels, write_label_map
from featurefield.data.loading import (
    background_option,
    check_downscale,
    check_sizes,
    check_unique,
    downscale_cameras,
    finite_matrix,
    holdout_split,
    json_number,
    read_json,
    resize_cameras,
    resolve_image,
    take_options,
)
from featurefield.data.scene import Normalization, PointCloud, Scene
from featurefield.errors import FeatureFieldError
from featurefield.io import atomic_path, atomic_write_json

#: nerfstudio camera_model -> featurefield camera model
CAMERA_MODELS = {"PINHOLE": "pinhole", "OPENCV": "opencv", "OPENCV_FISHEYE": "fisheye"}
_MODEL_NAMES = {v: k for k, v in CAMERA_MODELS.items()}
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
#: per-frame keys naming label maps (nerfstudio names masks ``mask_path``), and what they are called in messages
LABEL_KEYS = {"semantics_path": "semantics map", "instances_path": "instances map"}


def _file(path: Path) -> Path:
    path = Path(path)
    return path if path.is_file() else path / "transforms.json"


def detect(path: Path) -> bool:
    """A folder with ``transforms.json`` (or a ``.json`` transforms file itself)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".json" and not path.name.startswith("transforms_")
    return (path / "transforms.json").is_file()


def _norm(rel: str) -> str:
    return Path(str(rel)).as_posix().removeprefix("./")


def _prescaled(root: Path, rel: str, downscale: float) -> Path | None:
    """``images_N/x.png`` for ``images/x.png`` when downscale is the integer N and that file exists."""
    if downscale == 1.0 or float(downscale) != int(downscale):
        return None
    parts = Path(_norm(rel)).parts
    if len(parts) < 2:
        return None
    candidate = root.joinpath(f"{parts[0]}_{int(downscale)}", *parts[1:])
    return candidate if candidate.is_file() else None


def _load_ply(file: Path, source: Path) -> PointCloud:
    from plyfile import PlyData

    try:
        vertex = PlyData.read(str(file))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1).astype(np.float32)
        names = vertex.data.dtype.names
        if all(c in names for c in ("red", "green", "blue")):
            rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1).astype(np.float32) / 255.0
        else:
            rgb = np.full_like(xyz, 0.5)
    except FileNotFoundError as err:
        raise FeatureFieldError(f"{source}: ply_file_path {file} does not exist") from err
    except Exception as err:  # plyfile raises many types for a broken file
        raise FeatureFieldError(f"{file}: cannot read the point cloud ({err}); fix or remove ply_file_path") from err
    return PointCloud(torch.from_numpy(xyz), torch.from_numpy(rgb))


def load(path: Path, *, downscale: float = 1.0, **options) -> Scene:
    """Load a nerfstudio scene.

    Args:
        path: the scene folder, or its transforms file.
        downscale: shrink images by this factor (``images_N`` folders are used when present).
        options: ``background`` (RGB in [0, 1], default white) for images with masks/alpha.

    Returns:
        A :class:`Scene` in the original world frame (``applied_transform`` undone).
    """
    opts = take_options(options, {"background": (1.0, 1.0, 1.0)}, "nerfstudio")
    background = background_option(opts["background"], "nerfstudio")
    check_downscale(downscale)
    file = _file(path)
    meta = read_json(file)
    root = file.parent
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FeatureFieldError(f"{file}: no 'frames' listed; a transforms file needs at least one frame")

    def get(frame: dict, key: str):
        """A per-frame value, else the global one, else None."""
        if key in frame:
            return frame[key]
        if key in meta:
            return meta[key]
        return None

    model_names = set()
    paths, masks, poses, intr, dist, rels = [], [], [], [], [], []
    label_files: dict[str, list[Path | None]] = {key: [] for key in LABEL_KEYS}
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise FeatureFieldError(f"{file}: frame {k} needs 'file_path' and 'transform_matrix'")
        rel = str(frame["file_path"])
        rels.append(_norm(rel))
        paths.append(resolve_image(root, rel, file))
        masks.append(resolve_image(root, str(frame["mask_path"]), file, "mask") if frame.get("mask_path") else None)
        for key, what in LABEL_KEYS.items():
            label_files[key].append(resolve_image(root, str(frame[key]), file, what) if frame.get(key) else None)
        poses.append(finite_matrix(frame["transform_matrix"], (4, 4), file, f"transform_matrix of frame {k}"))
        fl_x, fl_y = get(frame, "fl_x"), get(frame, "fl_y")
        if fl_x is None and fl_y is None:
            raise FeatureFieldError(f"{file}: missing intrinsics for frame {k}; give 'fl_x' (and 'fl_y') globally or per frame")
        fl_x = fl_y if fl_x is None else fl_x
        fl_y = fl_x if fl_y is None else fl_y
        fl_x = json_number(fl_x, file, f"fl_x of frame {k}", positive=True)
        fl_y = json_number(fl_y, file, f"fl_y of frame {k}", positive=True)
        w, h = get(frame, "w"), get(frame, "h")
        if w is None or h is None:
            w, h = image_size(paths[-1])
        w = json_number(w, file, f"w of frame {k}", positive=True, integer=True)
        h = json_number(h, file, f"h of frame {k}", positive=True, integer=True)
        cx, cy = get(frame, "cx"), get(frame, "cy")
        cx = w / 2 if cx is None else json_number(cx, file, f"cx of frame {k}")
        cy = h / 2 if cy is None else json_number(cy, file, f"cy of frame {k}")
        intr.append([fl_x, fl_y, cx, cy, w, h])
        dist.append([0.0 if get(frame, key) is None else json_number(get(frame, key), file, f"{key} of frame {k}")
                     for key in _DISTORTION_KEYS])
        name = get(frame, "camera_model")
        if name is None:
            name = "OPENCV" if any(dist[-1]) else "PINHOLE"
        model_names.add(str(name).upper())

    check_unique(paths, file)
    unknown = model_names - set(CAMERA_MODELS)
    if unknown:
        raise FeatureFieldError(f"{file}: unsupported camera_model {sorted(unknown)[0]}; use one of {', '.join(CAMERA_MODELS)}")
    models = {CAMERA_MODELS[m] for m in model_names}
    if len(models) > 1:
        if models != {"pinhole", "opencv"}:
            raise FeatureFieldError(f"{file}: frames mix camera models {sorted(model_names)}; use one model per scene")
        models = {"opencv"}  # a pinhole is an OPENCV camera with zero distortion
    model = models.pop()
    intr_t = torch.tensor(intr, dtype=torch.float64)
    width, height = intr_t[:, 4].long(), intr_t[:, 5].long()
    check_sizes(paths, width, height, file)
    full_sizes = list(zip(width.tolist(), height.tolist()))

    c2w = torch.from_numpy(np.stack(poses))
    if "applied_transform" in meta:
        a = meta["applied_transform"]
        if isinstance(a, list) and len(a) == 3:
            a = finite_matrix(a, (3, 4), file, "applied_transform")
            a = np.concatenate([a, [[0, 0, 0, 1]]])
        a = finite_matrix(a, (4, 4), file, "applied_transform")
        c2w = torch.from_numpy(np.linalg.inv(a)) @ c2w
    c2w = c2w.to(torch.float32) @ OPENGL_TO_OPENCV
    distortion = torch.tensor(dist, dtype=torch.float32) if model != "pinhole" else None
    cameras = Cameras(c2w=c2w, fx=intr_t[:, 0], fy=intr_t[:, 1], cx=intr_t[:, 2], cy=intr_t[:, 3],
                      width=width, height=height, model=model, distortion=distortion)
    cameras.validate(str(file))

    # Downscale: prefer images_N (and masks_N) folders written by ns-process-data.
    pre = [_prescaled(root, str(f["file_path"]), downscale) for f in frames]
    pre_masks = [None if f.get("mask_path") is None else _prescaled(root, str(f["mask_path"]), downscale) for f in frames]
    if downscale != 1.0 and all(p is not None for p in pre) and all(
            (m is None) == (f.get("mask_path") is None) for m, f in zip(pre_masks, frames)):
        sizes = [image_size(p) for p in pre]
        cameras = resize_cameras(cameras, torch.tensor([s[0] for s in sizes]), torch.tensor([s[1] for s in sizes]))
        images = ImageFiles(pre, masks=pre_masks if any(masks) else None)
    else:
        cameras = downscale_cameras(cameras, downscale)
        images = ImageFiles(paths, downscale=downscale, masks=masks if any(masks) else None)

    split = _split(meta, rels, file)
    points = None
    if meta.get("ply_file_path"):
        points = _load_ply(root / str(meta["ply_file_path"]), file)
        if "applied_transform" in meta:
            inv = torch.from_numpy(np.linalg.inv(a)).to(torch.float32)
            points.xyz = points.xyz @ inv[:3, :3].T + inv[:3, 3]
    scene = Scene(
        cameras=cameras, images=images, split=split, normalization=Normalization.fit(cameras),
        points=points, background=background, name=root.name, format="nerfstudio", source=root,
        metadata={"image_names": rels},
    )
    return attach_labels(scene, paths, full_sizes, downscale, semantic_files=label_files["semantics_path"],
                         instance_files=label_files["instances_path"], source=file)


def _split(meta: dict, rels: list[str], file: Path) -> dict[str, list[int]]:
    """Split from ``*_filenames`` lists when present, else the every-8th-view hold-out."""
    lists = {s: meta.get(f"{s}_filenames") for s in ("train", "val", "test")}
    if not any(lists.values()):
        return holdout_split(len(rels))
    index = {r: i for i, r in enumerate(rels)}
    split: dict[str, list[int]] = {}
    for name, names in lists.items():
        if not names:
            continue
        missing = [n for n in names if _norm(n) not in index]
        if missing:
            raise FeatureFieldError(f"{file}: {name}_filenames lists {missing[0]!r}, which is not a frame's file_path")
        split[name] = sorted(index[_norm(n)] for n in names)
    if "train" not in split:
        used = {i for v in split.values() for i in v}
        split["train"] = [i for i in range(len(rels)) if i not in used]
    if "test" not in split:
        used = {i for v in split.values() for i in v}
        split["test"] = [i for i in range(len(rels)) if i not in used]
    return split


# ---------------------------------------------------------------------------------------------- writer
def write_nerfstudio(scene: Scene, out_dir: Path, images: bool = True) -> Path:
    """Write ``scene`` as a nerfstudio folder: ``transforms.json``, ``images/`` (+ ``sparse_pc.ply``; label maps in
    ``labels/`` and ``instances/``, named per frame by ``semantics_path`` / ``instances_path``, classes in ``labels.json``).

    Reading the folder back gives the same cameras (bit-identical float32 values, hence identical
    rays), split and label maps. Image files are copied as they are when the scene reads them unchanged;
    otherwise the decoded (resized or masked) images are written as PNG.

    Args:
        scene: any scene; cameras are written in its world frame (OpenGL poses, per-frame intrinsics).
        out_dir: the folder to create or fill.
        images: False writes no image file and no label map (the folder has no labels): the caller writes view
            ``i`` as ``images/{i:05d}.png`` (e.g. in parallel, for a large generated scene whose views are
            rendered only when read).

    Returns:
        The path of the written ``transforms.json``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cams = scene.cameras
    src = scene.images
    copy_files = images and isinstance(src, ImageFiles) and src.downscale == 1.0 and src.masks is None
    frames, names = [], []
    c2w_gl = cams.c2w @ OPENGL_TO_OPENCV
    for i in range(len(cams)):
        if copy_files:
            orig = src.paths[i]
            rel = f"images/{i:05d}_{orig.stem}{orig.suffix}"
            shutil.copy2(orig, out_dir / rel)
        else:
            rel = f"images/{i:05d}.png"
            if images:
                img = (scene.rgba(i).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                Image.fromarray(img).save(out_dir / rel)
        frame = {
            "file_path": rel,
            "transform_matrix": [[float(v) for v in row] for row in c2w_gl[i]],
            "fl_x": float(cams.fx[i]), "fl_y": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
            "w": int(cams.width[i]), "h": int(cams.height[i]),
        }
        frame.update({k: float(v) for k, v in zip(_DISTORTION_KEYS, cams.distortion[i])})
        if images:  # reading a lazy scene's label map would render the view here
            frame.update(_write_labels(scene, i, out_dir))
        frames.append(frame)
        names.append(rel)
    meta = {"camera_model": _MODEL_NAMES[cams.model], "frames": frames}
    for split_name, idx in scene.split.items():
        if split_name in ("train", "val", "test"):
            meta[f"{split_name}_filenames"] = [names[i] for i in idx]
    if scene.points is not None:
        _write_ply(scene.points, out_dir / "sparse_pc.ply")
        meta["ply_file_path"] = "sparse_pc.ply"
    if images and scene.semantics is not None and scene.class_names:
        atomic_write_json(out_dir / "labels.json", {"classes": list(scene.class_names), "ignore": _ignore(scene),
                                                    "background_instances": list(scene.background_instances)})
    target = out_dir / "transforms.json"
    atomic_write_json(target, meta, indent=1)
    return target


def _ignore(scene: Scene) -> int:
    """The value unlabelled pixels are written with: 255 (8-bit maps), or 65535 past 255 classes."""
    return 255 if len(scene.class_names) <= 255 else 65535


def _write_labels(scene: Scene, i: int, out_dir: Path) -> dict:
    """Write view ``i``'s label maps (where it has them); the frame keys naming them."""
    keys = {}
    semantic = scene.semantic(i) if scene.class_names else None
    if semantic is not None:
        keys["semantics_path"] = f"labels/{i:05d}.png"
        write_label_map(out_dir / keys["semantics_path"], semantic, _ignore(scene))
    instance = scene.instance(i)
    if instance is not None:
        keys["instances_path"] = f"instances/{i:05d}.png"
        write_label_map(out_dir / keys["instances_path"], instance.clamp_min(0), 0)
    return keys


def _write_ply(points: PointCloud, path: Path) -> None:
    from plyfile import PlyData, PlyElement

    xyz = points.xyz.detach().cpu().numpy().astype(np.float32)
    rgb = (points.rgb.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    data = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    data["x"], data["y"], data["z"] = xyz.T
    data["red"], data["green"], data["blue"] = rgb.T
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp))
