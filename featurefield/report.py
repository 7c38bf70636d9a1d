"""A small self-contained HTML report: headings, notes, rows of pictures and tables.

Pictures are PNG files next to the HTML, linked by relative paths, so the report folder can be
moved or zipped as a whole. Nothing is fetched from the network (inline CSS, no scripts).

Example::

    report = Report("featurefield demo")
    report.note("SAM weights not found: using DINO with random weights", level="warning")
    report.images([("images/rgb.png", "rendered RGB"), ("images/gt.png", "ground truth")], title="view 0")
    report.table([("PSNR", "31.2")], headers=("metric", "value"), title="metrics")
    report.write(Path("out/report.html"))
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from featurefield.io import atomic_write_text

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.note { padding: 0.6em 1em; border-radius: 6px; margin: 0.8em 0; }
.note.info { background: #eef5ff; border-left: 4px solid #4a7fd4; }
.note.warning { background: #fff4e5; border-left: 4px solid #e08a00; font-weight: 600; }
.row { display: flex; flex-wrap: nowrap; overflow-x: auto; gap: 10px; margin: 0.5em 0 1.2em 0; }
.strip { display: flex; flex-wrap: nowrap; overflow-x: auto; gap: 12px; margin: 1em 0; }
.strip figure img, .strip figure video { width: 200px; height: auto; }
.headline { display: flex; flex-wrap: wrap; gap: 10px; margin: 1em 0; }
.metric { border: 1px solid #ddd; border-radius: 8px; padding: 0.5em 0.8em; min-width: 13em; flex: 1; }
.metric .value { font-size: 1.5em; font-weight: 600; }
.metric .verdict { font-size: 0.8em; font-weight: 700; border-radius: 4px; padding: 0.05em 0.4em; color: #fff; }
.verdict.good { background: #2e8b57; } .verdict.fair { background: #c98a00; } .verdict.poor { background: #c0392b; }
.metric .why { font-size: 0.85em; color: #555; }
.cbar { height: 8px; border: 1px solid #ccc; margin-top: 2px; }
.cbar-ticks { display: flex; justify-content: space-between; font-size: 0.75em; color: #555; }
.failed { color: #c0392b; }
svg.chart { border: 1px solid #ddd; background: #fff; }
details { margin: 1em 0; } summary { cursor: pointer; font-weight: 600; }
figure { margin: 0; text-align: center; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; margin-top: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


@dataclass
class _Block:
    type: str
    payload: dict = field(default_factory=dict)


@dataclass
class Headline:
    """One headline figure in plain words: ``label`` ("Picture quality (PSNR)"), ``value`` as shown
    ("25.4 dB"), ``verdict`` (``"good"``, ``"fair"`` or ``"poor"``) and ``why`` (what the number means)."""

    label: str
    value: str
    verdict: str
    why: str = ""


def verdict(value: float | None, good: float, fair: float, higher_is_better: bool = True) -> str:
    """``"good"`` past ``good``, ``"fair"`` past ``fair``, else ``"poor"`` (``"n/a"`` for a missing value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    sign = 1 if higher_is_better else -1
    if sign * value >= sign * good:
        return "good"
    return "fair" if sign * value >= sign * fair else "poor"


def colour_stops(lut, count: int = 9) -> list[str]:
    """CSS colours of ``count`` evenly spaced entries of a ``[256, 3]`` colour table (for a colour bar)."""
    index = [round(i * (len(lut) - 1) / (count - 1)) for i in range(count)]
    return [f"rgb({int(lut[i][0])},{int(lut[i][1])},{int(lut[i][2])})" for i in index]


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Training curves from a run's ``metrics.jsonl``: ``{name: [(step, value), ...]}`` for the loss, the
    PSNR and each teacher's feature loss / cosine logged while training (the final summary line left out)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    import json

    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if not isinstance(row, dict) or row.get("final") or "step" not in row:
            continue
        for key, value in row.items():
            wanted = key in ("loss", "psnr") or key.startswith(("feature/", "val/", "test/psnr", "test/cos"))
            if wanted and isinstance(value, (int, float)) and math.isfinite(value):
                curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def line_chart_svg(points: Sequence[tuple[float, float]], title: str, width: int = 320, height: int = 180) -> str:
    """A small inline SVG line chart of ``(x, y)`` points with its axes' ranges written at the corners."""
    e = html.escape
    if not points:
        return ""
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    left, right, top, bottom = 44, 8, 22, 22
    def px(x, y):  # noqa: E306
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom))
    path = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in zip(xs, ys)))
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{e(title, quote=True)}"><text x="{left}" y="14" font-size="12">{e(title)}</text>'
            f'<polyline fill="none" stroke="#4a7fd4" stroke-width="1.5" points="{path}"/>'
            f'<text x="2" y="{top + 8}" font-size="10">{e(format_value(y1))}</text>'
            f'<text x="2" y="{height - bottom}" font-size="10">{e(format_value(y0))}</text>'
            f'<text x="{left}" y="{height - 6}" font-size="10">step {int(x0)}</text>'
            f'<text x="{width - right}" y="{height - 6}" font-size="10" text-anchor="end">{int(x1)}</text></svg>')


def format_value(value) -> str:
    """Numbers as 4 significant decimals, NaN/None as ``n/a``, everything else as text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def flatten_metrics(metrics: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested metric dicts as ``(dotted name, formatted value)`` rows; lists of numbers are joined."""
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten_metrics(value, f"{name} · ")
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(format_value(v) for v in value)))
        else:
            rows.append((name, format_value(value)))
    return rows


class Report:
    """An HTML page built block by block; :meth:`write` saves it atomically."""

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self.blocks: list[_Block] = []

    def heading(self, text: str) -> Report:
        self.blocks.append(_Block("heading", {"text": text}))
        return self

    def paragraph(self, text: str) -> Report:
        self.blocks.append(_Block("paragraph", {"text": text}))
        return self

    def note(self, text: str, level: str = "info") -> Report:
        """A highlighted box; ``level`` is ``info`` or ``warning``."""
        self.blocks.append(_Block("note", {"text": text, "level": "warning" if level == "warning" else "info"}))
        return self

    def images(self, items: Sequence[tuple], title: str | None = None, width: int | None = None,
               failed: bool = False) -> Report:
        """A row of pictures (one line, scrolled sideways rather than wrapped): ``items`` are ``(relative path,
        caption)`` or ``(path, caption, colour bar)`` with the bar ``(lo, hi, css colours)`` of a heatmap's
        scale; ``width`` sets the display width in pixels; ``failed`` marks the row's title as a failure."""
        self.blocks.append(_Block("images", {"items": [tuple(i) for i in items], "title": title, "width": width,
                                             "failed": failed}))
        return self

    def strip(self, items: Sequence[tuple[str, str]]) -> Report:
        """The page's opening row: ``(relative path, caption)`` of pictures, or of MP4 videos (played muted, looped)."""
        self.blocks.append(_Block("strip", {"items": list(items)}))
        return self

    def headline(self, items: Sequence[Headline]) -> Report:
        """The headline figures as cards, each with its verdict."""
        self.blocks.append(_Block("headline", {"items": list(items)}))
        return self

    def charts(self, curves: dict[str, Sequence[tuple[float, float]]], title: str | None = None) -> Report:
        """A row of line charts, one per curve ``{name: [(step, value), ...]}``."""
        self.blocks.append(_Block("charts", {"curves": dict(curves), "title": title}))
        return self

    def fold(self, summary: str) -> Report:
        """Everything added after this, up to :meth:`unfold` (or the end), is folded under ``summary``."""
        self.blocks.append(_Block("fold", {"summary": summary}))
        return self

    def unfold(self) -> Report:
        self.blocks.append(_Block("unfold"))
        return self

    def table(self, rows: Sequence[Sequence], headers: Sequence[str] = ("metric", "value"), title: str | None = None,
              css_id: str | None = None) -> Report:
        """A table of rows (cells are formatted with :func:`format_value`)."""
        self.blocks.append(_Block("table", {"rows": [list(r) for r in rows], "headers": list(headers), "title": title,
                                            "id": css_id}))
        return self

    def code(self, text: str) -> Report:
        self.blocks.append(_Block("code", {"text": text}))
        return self

    # ------------------------------------------------------------------ output
    def image_paths(self) -> list[str]:
        """Every picture path the report links to (relative to the HTML file)."""
        return [item[0] for b in self.blocks if b.type in ("images", "strip") for item in b.payload["items"]]

    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        if self.subtitle:
            out.append(f"<p>{e(self.subtitle)}</p>")
        folded = False
        for block in self.blocks:
            p = block.payload
            if block.type == "heading":
                out.append(f"<h2>{e(p['text'])}</h2>")
            elif block.type == "paragraph":
                out.append(f"<p>{e(p['text'])}</p>")
            elif block.type == "note":
                out.append(f'<div class="note {p["level"]}">{e(p["text"])}</div>')
            elif block.type == "code":
                out.append(f"<pre>{e(p['text'])}</pre>")
            elif block.type == "images":
                if p["title"]:
                    flag = '<span class="failed"> — failed</span>' if p["failed"] else ""
                    out.append(f"<h3>{e(p['title'])}{flag}</h3>")
                style = f' width="{int(p["width"])}"' if p["width"] else ""
                out.append('<div class="row">')
                for item in p["items"]:
                    path, caption = item[0], item[1]
                    src = e(Path(path).as_posix(), quote=True)
                    bar = ""
                    if len(item) > 2 and item[2]:
                        lo, hi, stops = item[2]
                        bar = (f'<div class="cbar" style="background: linear-gradient(to right, {", ".join(stops)})">'
                               f'</div><div class="cbar-ticks"><span>{e(format_value(lo))}</span>'
                               f"<span>{e(format_value(hi))}</span></div>")
                    out.append(f'<figure><a href="{src}"><img src="{src}" alt="{e(caption, quote=True)}"{style}></a>'
                               f"{bar}<figcaption>{e(caption)}</figcaption></figure>")
                out.append("</div>")
            elif block.type == "strip":
                out.append('<div class="strip">')
                for path, caption in p["items"]:
                    src = e(Path(path).as_posix(), quote=True)
                    if Path(path).suffix.lower() in (".mp4", ".webm"):
                        media = f'<video src="{src}" autoplay loop muted playsinline></video>'
                    else:
                        media = f'<a href="{src}"><img src="{src}" alt="{e(caption, quote=True)}"></a>'
                    out.append(f"<figure>{media}<figcaption>{e(caption)}</figcaption></figure>")
                out.append("</div>")
            elif block.type == "headline":
                out.append('<div class="headline">')
                for h in p["items"]:
                    out.append(f'<div class="metric"><div>{e(h.label)}</div><div class="value">{e(h.value)} '
                               f'<span class="verdict {e(h.verdict, quote=True)}">{e(h.verdict)}</span></div>'
                               f'<div class="why">{e(h.why)}</div></div>')
                out.append("</div>")
            elif block.type == "charts":
                if p["title"]:
                    out.append(f"<h3>{e(p['title'])}</h3>")
                out.append('<div class="row">' + "".join(line_chart_svg(pts, name) for name, pts in p["curves"].items())
                           + "</div>")
            elif block.type == "fold":
                out.append(f"<details><summary>{e(p['summary'])}</summary>")
                folded = True
            elif block.type == "unfold" and folded:
                out.append("</details>")
                folded = False
            elif block.type == "table":
                if p["title"]:
                    out.append(f"<h3>{e(p['title'])}</h3>")
                css_id = f' id="{e(p["id"], quote=True)}"' if p["id"] else ""
                out.append(f"<table{css_id}><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in p["headers"])
                           + "</tr></thead><tbody>")
                for row in p["rows"]:
                    cells = []
                    for c in row:
                        cls = ' class="num"' if isinstance(c, (int, float)) and not isinstance(c, bool) else ""
                        cells.append(f"<td{cls}>{e(format_value(c))}</td>")
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</tbody></table>")
        if folded:
            out.append("</details>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically (temp file in the same folder, then rename)."""
        return atomic_write_text(path, self.html())
