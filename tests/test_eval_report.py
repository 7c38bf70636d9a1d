"""The evaluation page, pictures first: strip, headline figures with verdicts, curves, colour bars, raw numbers folded."""

from __future__ import annotations

import json
import re

from featurefield.eval_report import eval_headlines, eval_report
from featurefield.report import Report, line_chart_svg, read_curves, verdict


def test_verdicts_read_both_ways():
    assert verdict(30.0, 28, 22) == "good" and verdict(25.0, 28, 22) == "fair" and verdict(10.0, 28, 22) == "poor"
    assert verdict(0.05, 0.1, 0.25, higher_is_better=False) == "good"
    assert verdict(0.3, 0.1, 0.25, higher_is_better=False) == "poor" and verdict(None, 1, 0) == "n/a"


def test_headlines_say_what_the_numbers_mean():
    metrics = {"image": {"psnr": 25.4, "ssim": 0.93, "lpips": float("nan")},
               "features": {"sam": {"cosine": 0.61}}, "sam": {"mask_iou_rendered_vs_teacher": 0.85}}
    lines = {h.label: (h.value, h.verdict) for h in eval_headlines(metrics)}
    assert lines == {"Picture quality (PSNR)": ("25.4 dB", "fair"), "Structure (SSIM)": ("0.930", "good"),
                     "sam features match the teacher": ("0.610", "poor"), "sam masks from the 3D field": ("0.85", "good")}


def test_training_curves_come_from_the_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s, "psnr": 10 + s, "feature/sam": 0.5, "gaussians": 100} for s in (1, 10, 20)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 20, "final": true, "loss": 9}\n{"step": 3')
    curves = read_curves(log)
    assert set(curves) == {"loss", "psnr", "feature/sam"} and curves["psnr"] == [(1, 11.0), (10, 20.0), (20, 30.0)]
    svg = line_chart_svg(curves["psnr"], "psnr")
    assert svg.startswith("<svg") and "30.0000" in svg and "11.0000" in svg


def test_the_page_opens_with_pictures_and_folds_the_numbers(demo_run, tmp_path):  # noqa: F811
    from featurefield.evaluate import evaluate_run

    metrics = evaluate_run(demo_run, "test", max_views=2, lpips=False, progress=False)
    path = eval_report(demo_run, metrics, tmp_path / "eval.html")
    page = path.read_text()
    body = page[page.index("<body>"):]
    # the order on the page: the strip, the headline cards, the curves, the pictures, and only then the raw table
    marks = [body.index(m) for m in ('class="strip"', 'class="headline"', "<svg", 'class="cbar"', "<details>", 'id="metrics"')]
    assert marks == sorted(marks)
    assert len(re.findall(r"<img ", body[:body.index('class="headline"')])) >= 2 + len(demo_run.teacher_names)
    assert "Picture quality (PSNR)" in body and re.search(r'class="verdict (good|fair|poor)"', body)
    for src in re.findall(r'src="([^"]+)"', page):
        assert (tmp_path / src).is_file(), src
    assert page.count("<details>") == page.count("</details>") == 1


def test_picture_rows_do_not_wrap_and_failures_are_flagged(tmp_path):
    report = Report("t").images([("a.png", "a")], title="similarity query", failed=True)
    page = report.html()
    assert "flex-wrap: nowrap" in page and "similarity query<span class=\"failed\"> — failed</span>" in page


def test_eval_html_writes_the_page(demo_run, capsys):  # noqa: F811
    from featurefield.cli import main

    assert main(["eval", str(demo_run.path), "--device", "cpu", "--no-lpips", "--max-views", "1", "--html"]) == 0
    page = demo_run.path / "eval" / "report.html"
    assert f"wrote {page}" in capsys.readouterr().out
    assert 'class="strip"' in page.read_text() and (demo_run.path / "eval" / "pictures" / "render.png").is_file()
