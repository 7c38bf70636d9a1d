"""Structure-from-motion on plain photos with ``pycolmap``: ``featurefield process-images``.

Pipeline: SIFT feature extraction (``max_image_size`` caps the size SIFT sees; keypoints are in
full-resolution pixels), exhaustive or sequential matching with geometric verification, and
incremental mapping. The largest reconstruction is written as ``OUTPUT/sparse/0`` next to copies
of the photos in ``OUTPUT/images`` — a COLMAP scene that :mod:`featurefield.data.colmap` loads.
COLMAP's knobs are gathered in :class:`SfmSettings`: its own defaults for photos, and
:data:`VIDEO_SETTINGS` for the frames of a video (measured in ``bench/video_sfm.py``).

Nothing half-done is left behind: all work happens in a temporary folder inside ``OUTPUT`` and
the results are moved into place only when mapping succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from featurefield.data.images import image_size
from featurefield.data.loading import list_photos
from featurefield.errors import FeatureFieldError

#: Photo types COLMAP's image reader decodes.
SFM_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class SfmSettings:
    """The COLMAP settings process-images chooses; the defaults are COLMAP's own (photos).

    Attributes:
        max_image_size: longest side SIFT works on (the image is scaled down; keypoints stay in
            full-resolution pixels).
        max_num_features: SIFT features kept per image, the strongest; CPU matching costs grow with its square.
        first_octave: SIFT's first octave: -1 also searches the image upsampled 2x (small features, about
            3x the extraction time), 0 starts at the image's own size.
        overlap: sequential matching: each image is matched with this many next images ...
        quadratic_overlap: ... or, when True, with the images 1, 2, 4, ..., 2^(overlap-1) ahead (COLMAP's
            default; the far pairs tie long sequences together, but on repetitive scenes such as tiled floors
            they also bring false matches that fold the model).
        ba_global_ratio: global bundle adjustment runs when the model has grown by this factor (frames
            and points) since the last one.
        ba_local_max_num_iterations, ba_global_max_num_iterations: solver iterations per bundle
            adjustment (-1: COLMAP's default).
        ba_global_function_tolerance: relative cost change that ends a global bundle adjustment (0: none).
    """

    max_image_size: int = 1600
    max_num_features: int = 8192
    first_octave: int = -1
    overlap: int = 10
    quadratic_overlap: bool = True
    ba_global_ratio: float = 1.1
    ba_local_max_num_iterations: int = -1
    ba_global_max_num_iterations: int = -1
    ba_global_function_tolerance: float = 0.0


#: For the frames of a video (``bench/video_sfm.py``, BENCHMARKS.md): consecutive frames overlap heavily,
#: so SIFT at 1024 px from the first octave with 4,096 features is enough and ~3x cheaper; linear
#: sequential matching (no far pairs: see ``quadratic_overlap``); bundle adjustment less often and shorter,
#: as nerfstudio's ``ba_global_function_tolerance``.
VIDEO_SETTINGS = SfmSettings(max_image_size=1024, max_num_features=4096, first_octave=0, overlap=10, quadratic_overlap=False,
                             ba_global_ratio=1.4, ba_local_max_num_iterations=10, ba_global_max_num_iterations=30,
                             ba_global_function_tolerance=1e-6)


def mapper_options(settings: SfmSettings, num_threads: int = -1):
    """``pycolmap.IncrementalPipelineOptions`` for ``settings`` (seeded: repeatable runs)."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = 0
    options.ba_global_frames_ratio = options.ba_global_points_ratio = float(settings.ba_global_ratio)
    options.ba_local_max_num_iterations = int(settings.ba_local_max_num_iterations)
    options.ba_global_max_num_iterations = int(settings.ba_global_max_num_iterations)
    options.ba_global_function_tolerance = float(settings.ba_global_function_tolerance)
    return options


def _photos(photos: Path) -> list[Path]:
    if not photos.exists():
        raise FeatureFieldError(f"{photos}: no such folder; give a folder of photos, a video or a folder of videos")
    if not photos.is_dir():
        raise FeatureFieldError(f"{photos}: neither a folder of photos nor a video (.mp4, .mov, .m4v, .avi, .mkv, .webm, .mts)")
    files = [p for p in list_photos(photos) if p.suffix.lower() in SFM_SUFFIXES]
    if not files:
        raise FeatureFieldError(f"{photos}: the folder holds no photos (.jpg, .png, .tif, .bmp)")
    if len(files) < 2:
        raise FeatureFieldError(f"{photos}: needs at least two photos for structure-from-motion, found {len(files)}")
    for f in files:
        image_size(f)  # one-line error for an unreadable photo before any work starts
    return files


def extract_and_match(
    database: Path,
    image_dir: Path,
    *,
    matcher: Literal["exhaustive", "sequential"] = "exhaustive",
    max_image_size: int | None = None,
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool = False,
    num_threads: int = -1,
    source: Path | None = None,
    notify: Callable[[str, int, int], None] | None = None,
    settings: SfmSettings = SfmSettings(),
) -> None:
    """SIFT features of every image in ``image_dir`` and their geometrically verified matches, into ``database``.

    Args:
        database: COLMAP database file to create.
        image_dir: folder of the images (names become the database's image names).
        matcher: ``"exhaustive"`` (all pairs) or ``"sequential"`` (neighbours in name order: video frames).
        max_image_size: longest side SIFT works on (keypoints stay in full-resolution pixels); ``None``:
            ``settings.max_image_size``.
        camera_model: COLMAP camera model given to each new camera.
        single_camera: one camera for all images (else one per image).
        num_threads: worker threads (-1: all cores).
        source: folder named in error messages (default ``image_dir``).
        notify: progress callback ``(stage, done, total)``.
        settings: the extraction and matching settings (:class:`SfmSettings`).
    """
    import pycolmap

    notify = notify or (lambda stage, done, total: None)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(max_image_size or settings.max_image_size)
    extraction.sift.max_num_features = int(settings.max_num_features)
    extraction.sift.first_octave = int(settings.first_octave)
    extraction.num_threads = num_threads
    extraction.use_gpu = False
    notify("extract", 0, 1)
    try:
        pycolmap.extract_features(
            database, image_dir, camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE,
            reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
        )
    except (ValueError, RuntimeError) as err:
        raise FeatureFieldError(f"{source or image_dir}: feature extraction failed ({' '.join(str(err).split())[:200]}); "
                                f"check the camera model {camera_model!r}") from err
    notify("extract", 1, 1)

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    matching.use_gpu = False
    notify("match", 0, 1)
    if matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = int(settings.overlap)
        pairing.quadratic_overlap = bool(settings.quadratic_overlap)
        pairing.loop_detection = False  # it needs a vocabulary tree, which is not shipped
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    elif matcher == "exhaustive":
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    else:
        raise FeatureFieldError(f"unknown matcher {matcher!r}; use exhaustive or sequential")
    notify("match", 1, 1)


def run_sfm(
    photos: Path,
    output: Path,
    matcher: Literal["exhaustive", "sequential"] = "exhaustive",
    max_image_size: int | None = None,
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool | None = None,
    overwrite: bool = False,
    num_threads: int = -1,
    on_stage: Callable[[str, int, int], None] | None = None,
    settings: SfmSettings = SfmSettings(),
) -> dict:
    """Recover camera poses of the photos in ``photos`` and write a COLMAP scene to ``output``.

    Args:
        photos: folder of photos (jpg/png/tif/bmp).
        output: folder to write ``images/`` and ``sparse/0`` into.
        matcher: ``"exhaustive"`` (all pairs; small sets) or ``"sequential"`` (video frames).
        max_image_size: longest side SIFT works on; ``None``: ``settings.max_image_size``.
        camera_model: COLMAP camera model to estimate (e.g. SIMPLE_RADIAL, OPENCV, PINHOLE).
        single_camera: share one camera between all photos; ``None``: when all have one size.
        overwrite: replace an existing ``output/images`` and ``output/sparse``.
        num_threads: worker threads (-1: all cores).
        on_stage: progress callback ``(stage, done, total)``.
        settings: COLMAP's settings (:class:`SfmSettings`; :data:`VIDEO_SETTINGS` for video frames).

    Returns:
        ``{"registered", "total", "points", "model", "images", "registered_names"}``.

    Raises:
        FeatureFieldError: missing/empty folder, fewer than two photos, unreadable photos, an
            existing output, or no image registered.
    """
    import pycolmap

    photos, output = Path(photos), Path(output)
    files = _photos(photos)
    notify = on_stage or (lambda stage, done, total: None)
    for name in ("images", "sparse"):
        if (output / name).exists() and not overwrite:
            raise FeatureFieldError(f"{output / name}: already exists; choose a new OUTPUT folder or pass --overwrite")
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    if single_camera is None:
        single_camera = len({image_size(f) for f in files}) == 1

    work = Path(tempfile.mkdtemp(prefix=".featurefield-sfm-", dir=output))
    ok = False
    try:
        image_dir = work / "images"
        image_dir.mkdir()
        for k, f in enumerate(files):
            shutil.copy2(f, image_dir / f.name)
            notify("copy", k + 1, len(files))
        database = work / "database.db"

        extract_and_match(database, image_dir, matcher=matcher, max_image_size=max_image_size,
                          camera_model=camera_model, single_camera=single_camera, num_threads=num_threads,
                          source=photos, notify=notify, settings=settings)

        options = mapper_options(settings, num_threads)
        sparse_tmp = work / "sparse"
        sparse_tmp.mkdir()
        registered = [0]

        def next_image() -> None:
            registered[0] += 1
            notify("map", min(registered[0], len(files)), len(files))

        notify("map", 0, len(files))
        recs = pycolmap.incremental_mapping(database, image_dir, sparse_tmp, options=options,
                                            next_image_callback=next_image)
        if not recs:
            raise FeatureFieldError(
                f"{photos}: structure-from-motion registered no images; the photos need more overlap and texture "
                "(try --matcher exhaustive, more photos, or a larger --max-image-size)"
            )
        best = max(recs.values(), key=lambda r: r.num_reg_images())
        model_tmp = work / "model"
        model_tmp.mkdir()
        best.write(str(model_tmp))
        names = sorted(im.name for im in best.images.values() if im.has_pose)
        if not names:
            raise FeatureFieldError(f"{photos}: structure-from-motion registered no images")
        notify("map", len(names), len(files))

        # Move into place only now, so a failure leaves no half-written scene.
        if overwrite:
            for name in ("images", "sparse"):
                if (output / name).is_dir():
                    shutil.rmtree(output / name)
        (work / "sparse_final").mkdir()
        os.replace(model_tmp, work / "sparse_final" / "0")
        os.replace(image_dir, output / "images")
        os.replace(work / "sparse_final", output / "sparse")
        ok = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok and created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # leave no trace of a failed run
    return {
        "registered": len(names), "total": len(files), "points": best.num_points3D(),
        "model": output / "sparse" / "0", "images": output / "images", "registered_names": names,
    }


def run_video_sfm(videos: list[Path], output: Path, num_frames: int = 150, matcher: Literal["exhaustive", "sequential"] = "sequential",
                  max_image_size: int | None = None, camera_model: str = "SIMPLE_RADIAL", overwrite: bool = False,
                  num_threads: int = -1, on_stage: Callable[[str, int, int], None] | None = None,
                  settings: SfmSettings = VIDEO_SETTINGS, min_motion: float = 0.5) -> dict:
    """:func:`run_sfm` on up to ``num_frames`` sharp frames of distinct views of ``videos``
    (:func:`~featurefield.data.video.sample_video_frames`, ``min_motion`` passed on; one camera per video
    size) with :data:`VIDEO_SETTINGS`. Sequential matching by default: consecutive frames overlap. Returns
    :func:`run_sfm`'s dict plus ``"frames"`` (a :class:`~featurefield.data.video.VideoFrames`)."""
    from featurefield.data.video import sample_video_frames

    output = Path(output)
    for name in ("images", "sparse"):  # said before minutes of decoding, not after
        if (output / name).exists() and not overwrite:
            raise FeatureFieldError(f"{output / name}: already exists; choose a new OUTPUT folder or pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".featurefield-frames-", dir=output.parent) as frames_dir:
        frames = sample_video_frames(videos, Path(frames_dir), target=num_frames, min_motion=min_motion, on_stage=on_stage)
        if len(frames.paths) < 2:
            raise FeatureFieldError(f"{videos[0]}: only {len(frames.paths)} sharp, distinct frame(s) found; film the scene "
                                    "while moving around it (or pass --min-motion 0 to keep still frames)")
        result = run_sfm(Path(frames_dir), output, matcher=matcher, max_image_size=max_image_size, camera_model=camera_model,
                         overwrite=overwrite, num_threads=num_threads, on_stage=on_stage, settings=settings)
    return {**result, "frames": frames}


def align_similarity(src: Tensor, dst: Tensor) -> tuple[float, Tensor, Tensor, Tensor]:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama), e.g. to compare camera centres.

    Args:
        src, dst: ``[N, 3]`` corresponding points (N >= 3, not all collinear).

    Returns:
        ``(s, R [3, 3], t [3], residuals [N])`` with residuals the distances after alignment.
    """
    src64, dst64 = src.to(torch.float64), dst.to(torch.float64)
    mu_s, mu_d = src64.mean(0), dst64.mean(0)
    xs, xd = src64 - mu_s, dst64 - mu_d
    cov = xd.T @ xs / len(src64)
    U, S, Vt = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=torch.float64)
    if torch.det(U) * torch.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    var_s = (xs * xs).sum() / len(src64)
    s = float((S * D.diagonal()).sum() / var_s)
    t = mu_d - s * R @ mu_s
    residuals = (s * src64 @ R.T + t - dst64).norm(dim=-1)
    return s, R, t, residuals
