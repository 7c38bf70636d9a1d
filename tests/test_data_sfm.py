"""process-images: pycolmap SfM on a few beer photos recovers the provided COLMAP cameras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurefield.cli import main
from featurefield.data import load_scene
from featurefield.data.sfm import align_similarity, run_sfm
from featurefield.errors import FeatureFieldError


def test_align_similarity_recovers_a_known_transform():
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    R = q * torch.det(q)  # a proper rotation
    dst = 2.5 * src @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, R_fit, t, residuals = align_similarity(src, dst)
    assert s == pytest.approx(2.5) and float(residuals.max()) < 1e-9
    torch.testing.assert_close(R_fit, R)
    noisy = dst.clone()
    noisy[0] += 1.0
    assert float(align_similarity(src, noisy)[3].max()) > 0.5


@pytest.mark.slow
def test_process_images_on_beer_subset_matches_colmap(beer_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):  # ten consecutive frames, downsized: fast on 2 cores
        im = Image.open(beer_dir / "images" / f"{i:04d}.jpg")
        im.thumbnail((640, 640))
        im.save(photos / f"{i:04d}.jpg", quality=95)
    out = tmp_path / "scene"
    result = run_sfm(photos, out, matcher="exhaustive", max_image_size=640)
    assert result["registered"] == 10 and result["total"] == 10
    assert (out / "sparse" / "0").is_dir() and len(list((out / "images").iterdir())) == 10
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temporary work folder removed

    ours = load_scene(out)
    reference = load_scene(beer_dir, format="colmap")
    idx = [reference.metadata["image_names"].index(n) for n in ours.metadata["image_names"]]
    ref = reference.cameras.centers[idx]
    _, _, _, residuals = align_similarity(ours.cameras.centers, ref)
    extent = float((ref - ref.mean(0)).norm(dim=-1).max())
    assert float(residuals.max()) < 0.05 * extent, (residuals, extent)
    # SIMPLE_RADIAL kept as opencv; focal near the reference scaled to 640 px.
    assert ours.cameras.model == "opencv"
    assert float(ours.cameras.fx[0]) == pytest.approx(float(reference.cameras.fx[0]) / 2, rel=0.1)


def _noise_photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def test_process_images_bad_input(tmp_path):
    with pytest.raises(FeatureFieldError, match="no such folder"):
        run_sfm(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureFieldError, match="holds no photos"):
        run_sfm(tmp_path / "empty", tmp_path / "out")
    one = _noise_photos(tmp_path / "one", 1)
    with pytest.raises(FeatureFieldError, match="at least two photos"):
        run_sfm(one, tmp_path / "out")
    broken = _noise_photos(tmp_path / "broken", 2)
    (broken / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FeatureFieldError, match="2.jpg: cannot read image"):
        run_sfm(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_process_images_nothing_registered_via_cli(tmp_path, capsys):
    photos = _noise_photos(tmp_path / "noise", 3)
    code = main(["process-images", str(photos), str(tmp_path / "out"), "--max-image-size", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "registered no images" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()  # nothing half-done left behind


def _texture_crops(folder: Path, n: int) -> Path:
    """``n`` 160 x 200 crops of one smoothed noise texture, each 6 px right of the last: a panning video."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.random((1, 1, 200, 320)).astype(np.float32))
    texture = torch.nn.functional.avg_pool2d(noise, 3, stride=1)[0, 0].numpy()  # a little smoothness
    texture = ((texture - texture.min()) / np.ptp(texture) * 255).astype(np.uint8)
    for i in range(n):
        Image.fromarray(texture[10:170, 6 * i: 6 * i + 200]).convert("RGB").save(folder / f"{i:03d}.png")
    return folder


def _database_facts(database: Path) -> tuple[int, set[int]]:
    """(most keypoints of one image, the index distances of the matched image pairs)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        images = {im.image_id: int(Path(im.name).stem) for im in db.read_all_images()}
        most = max(db.num_keypoints_for_image(i) for i in images)
        distances = set()
        for pair_id in db.read_all_matches()[0]:
            i, j = pycolmap.pair_id_to_image_pair(pair_id)
            distances.add(abs(images[i] - images[j]))
    finally:
        db.close()
    return most, distances


def test_sift_and_sequential_matching_follow_the_settings(tmp_path):
    from featurefield.data.sfm import VIDEO_SETTINGS, SfmSettings, extract_and_match, mapper_options

    frames = _texture_crops(tmp_path / "frames", 7)
    plain = SfmSettings(overlap=3, quadratic_overlap=False)
    extract_and_match(tmp_path / "plain.db", frames, matcher="sequential", settings=plain)
    most, distances = _database_facts(tmp_path / "plain.db")
    assert most > 300 and distances == {1, 2, 3}
    video_like = SfmSettings(max_num_features=300, first_octave=0, overlap=3, quadratic_overlap=True)
    extract_and_match(tmp_path / "capped.db", frames, matcher="sequential", settings=video_like)
    capped, distances = _database_facts(tmp_path / "capped.db")
    assert capped <= 300 and distances == {1, 2, 4}  # quadratic: 1, 2, 4 ahead
    extract_and_match(tmp_path / "octave0.db", frames, matcher="sequential", settings=SfmSettings(first_octave=0, overlap=1))
    assert _database_facts(tmp_path / "octave0.db")[0] < 0.7 * most  # no search of the upsampled image

    options = mapper_options(VIDEO_SETTINGS)
    assert options.ba_global_frames_ratio == options.ba_global_points_ratio == VIDEO_SETTINGS.ba_global_ratio
    assert options.ba_local_max_num_iterations == VIDEO_SETTINGS.ba_local_max_num_iterations
    assert options.ba_global_function_tolerance == VIDEO_SETTINGS.ba_global_function_tolerance and options.random_seed == 0
