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
.row { display: flex; flex-wrap: wrap; gap: 10px; margin: 0.5em 0 1.2em 0; }
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

    def images(self, items: Sequence[tuple[str, str]], title: str | None = None, width: int | None = None) -> Report:
        """A row of pictures: ``items`` are ``(relative path, caption)``; ``width`` sets the display width in pixels."""
        self.blocks.append(_Block("images", {"items": list(items), "title": title, "width": width}))
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
        return [p for b in self.blocks if b.type == "images" for p, _ in b.payload["items"]]

    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        if self.subtitle:
            out.append(f"<p>{e(self.subtitle)}</p>")
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
                    out.append(f"<h3>{e(p['title'])}</h3>")
                style = f' width="{int(p["width"])}"' if p["width"] else ""
                out.append('<div class="row">')
                for path, caption in p["items"]:
                    src = e(Path(path).as_posix(), quote=True)
                    out.append(f'<figure><a href="{src}"><img src="{src}" alt="{e(caption, quote=True)}"{style}></a>'
                               f"<figcaption>{e(caption)}</figcaption></figure>")
                out.append("</div>")
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
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically (temp file in the same folder, then rename)."""
        return atomic_write_text(path, self.html())
