"""The search report as one self-contained HTML page (images inline as data URIs), and the dev-score plot."""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fsd.storage import write_text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Counts the images the browser decoded, so a headless browser test can read it back from the DOM.
_IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-total", String(images.length));
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figcaption { font-size: 0.9em; color: #444; max-width: 40em; }
img { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(15em, 1fr)); gap: 0.5em; }
.grid figure { margin: 0; }
code { background: #f4f4f4; padding: 0 0.2em; }
</style>"""


@dataclass
class Table:
    """Rows of a table, one dict per row; `columns` defaults to the keys in first-seen order."""

    rows: Sequence[dict]
    caption: str = ""
    columns: Sequence[str] | None = None


@dataclass
class Image:
    """A PNG, from a file or bytes, with its alt text (default: the file name) and an optional caption."""

    source: str | os.PathLike | bytes
    alt: str = ""
    caption: str = ""


@dataclass
class Section:
    """A heading, then markdown-ish text (paragraphs split by blank lines, `- ` lists whose items may wrap onto
    indented lines, `code`, **bold**, *italic*), then tables (`Table` or a plain list of row dicts), then images
    (`Image`, a path or bytes), then `thumbnails`: images shown small, side by side (small multiples, e.g. one
    heat map per stage)."""

    heading: str
    text: str = ""
    tables: Sequence[Table | Sequence[dict]] = field(default_factory=list)
    images: Sequence[Image | str | os.PathLike | bytes] = field(default_factory=list)
    thumbnails: Sequence[Image | str | os.PathLike | bytes] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ HTML
def _inline(text: str) -> str:
    """Escape, then render `code`, **bold** and *italic* (nothing inside code spans is touched)."""
    out = []
    for k, part in enumerate(re.split(r"`([^`]*)`", text)):
        part = html.escape(part)
        if k % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        out.append(re.sub(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])", r"<em>\1</em>", part))
    return "".join(out)


def _text(text: str) -> str:
    """Paragraphs split by blank lines; a block of `- ` lines is a list, an indented line under an item (no
    `- ` of its own) continuing that item."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    out = []
    for block in blocks:
        raw = [line for line in block.splitlines() if line.strip()]
        lines = [line.strip() for line in raw]
        if lines[0].startswith("- ") and all(line.startswith("- ") or r[:1].isspace()
                                             for line, r in zip(lines, raw, strict=True)):
            items: list[str] = []
            for line in lines:
                if line.startswith("- "):
                    items.append(line[2:])
                else:
                    items[-1] += " " + line
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(table: Table | Sequence[dict]) -> str:
    if not isinstance(table, Table):
        table = Table(list(table))
    columns = list(table.columns) if table.columns is not None else list(dict.fromkeys(
        key for row in table.rows for key in row))
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>"
                   for row in table.rows)
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(image: Image | str | os.PathLike | bytes) -> str:
    if not isinstance(image, Image):
        image = Image(image)
    if isinstance(image.source, bytes):
        data, name = image.source, "image"
    else:
        data, name = Path(image.source).read_bytes(), Path(image.source).name
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"report images must be PNG: {name} is not")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption = f"<figcaption>{html.escape(image.caption)}</figcaption>" if image.caption else ""
    return f'<figure><img src="{uri}" alt="{html.escape(image.alt or name)}">{caption}</figure>'


def write_html(path: str | os.PathLike, title: str, sections: Sequence[Section | dict]) -> str:
    """Write a self-contained HTML page: no external resources, every image a base64 `data:` URI.

    An inline script sets `data-images-loaded` (images with `complete && naturalWidth > 0`) and
    `data-images-total` on `<body>` once the page has loaded, for a headless browser to check.

    Args:
        path: the file to write (its folder is created); written to a temporary name, then renamed.
        title: the page title and top heading.
        sections: `Section`s, or dicts with the same keys (`heading`, `text`, `tables`, `images`).

    Returns:
        the path written, as a string.

    Raises:
        ValueError: an image that is not a PNG.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        if isinstance(section, dict):
            section = Section(**section)
        parts.append(f"<section>\n<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(_text(section.text))
        parts.extend(_table(t) for t in section.tables)
        parts.extend(_image(i) for i in section.images)
        if section.thumbnails:
            parts.append('<div class="grid">' + "".join(_image(i) for i in section.thumbnails) + "</div>")
        parts.append("</section>")
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">',
        f'<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n{_STYLE}\n</head>',
        "<body>", *parts, _IMAGE_CHECK, "</body>", "</html>", ""])
    return write_text(path, page)


# ------------------------------------------------------------------------------------------ plot
def score_plot(stage_scores: dict[str, Sequence[float]], path: str | os.PathLike, mode: str = "max",
               title: str = "dev score of every trial per stage", ylabel: str = "dev score",
               lines: dict[str, float] | None = None, carried: dict[str, tuple[float, str]] | None = None) -> str:
    """A PNG of every trial's dev score per stage: x the stage (in the dict's order), points jittered
    sideways (a fixed seed, so the same data gives the same picture), each stage's winner marked by a star.

    Args:
        stage_scores: stage name -> the dev scores of its trials (None / NaN, e.g. a failed trial, skipped).
        path: the PNG to write.
        mode: "max" or "min": how the stage picks its winner.
        lines: name -> a level drawn across the plot (the teacher's score, the majority class's).
        carried: stage name -> (its winner's score, the stage that trained it), for a stage whose winner was
            carried in from an earlier stage because none of its own trials beat it: its star, hollow, sits at
            that score, not on its best trial, and its tick names whose winner it is.

    Returns:
        the path written, as a string.
    """
    fig = score_figure(stage_scores, mode, title, ylabel, lines, carried)
    fig.savefig(path, format="png")
    return str(path)


def score_figure(stage_scores: dict[str, Sequence[float]], mode: str = "max",
                 title: str = "dev score of every trial per stage", ylabel: str = "dev score",
                 lines: dict[str, float] | None = None, carried: dict[str, tuple[float, str]] | None = None):
    """`score_plot`'s matplotlib Figure, not saved; each star's gid is `winner:<stage>`."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    carried = carried or {}
    stages = list(stage_scores)
    fig = Figure(figsize=(max(5.0, 1.1 * len(stages) + 2.0), 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    labelled = set()
    for x, stage in enumerate(stages):
        y = np.array([s for s in stage_scores[stage] if s is not None and math.isfinite(s)], dtype=np.float64)
        if len(y):
            xs = x + rng.uniform(-0.18, 0.18, size=len(y))
            ax.scatter(xs, y, s=20, alpha=0.6, color="tab:blue", label=None if "trial" in labelled else "trial")
            labelled.add("trial")
        if stage in carried:  # none of its trials won: the earlier winner it kept, where the tables put it
            label = "winner carried in (no trial beat it)"
            ax.scatter([x], [carried[stage][0]], s=180, marker="*", facecolors="white", edgecolors="tab:red",
                       linewidths=1.5, zorder=3, gid=f"winner:{stage}", label=None if label in labelled else label)
        elif len(y):
            best = int(y.argmax() if mode == "max" else y.argmin())
            label = "stage winner"
            ax.scatter(xs[best], y[best], s=180, marker="*", color="tab:red", edgecolors="black", zorder=3,
                       gid=f"winner:{stage}", label=None if label in labelled else label)
        else:
            continue
        labelled.add(label)
    for (name, level), color in zip((lines or {}).items(), ("tab:green", "tab:gray", "tab:purple"), strict=False):
        ax.axhline(level, linestyle="--", linewidth=1.2, color=color, label=f"{name} {level:.2f}")
        labelled.add(name)
    ax.set_xticks(range(len(stages)), labels=[f"{s}\n({carried[s][1]}'s winner)" if s in carried else s
                                              for s in stages])
    ax.set_xlim(-0.6, max(len(stages), 1) - 0.4)
    ax.set_xlabel("stage")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if labelled:
        ax.legend(loc="best")
    return fig


def scatter_plot(points: dict[str, tuple[float, float]], path: str | os.PathLike, xlabel: str, ylabel: str,
                 title: str) -> str:
    """A PNG of one labelled point per name (`name -> (x, y)`; NaN points left out), e.g. the paper's Fig. 5:
    each compared method's CKA diagonal against its dev score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (x, y) in points.items():
        if math.isfinite(x) and math.isfinite(y):
            ax.scatter([x], [y], s=40, color="tab:blue")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png")
    return str(path)


def curve_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, xlabel: str,
               ylabel: str, title: str, lines: dict[str, float] | None = None) -> str:
    """A PNG of one line per name (`name -> (xs, ys)`), with `lines` (name -> a level) drawn across, dashed:
    e.g. the expected best score of n trials of each search beside the untuned start points'."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    for name, level in (lines or {}).items():
        ax.axhline(level, linestyle="--", linewidth=1, color="grey")
        ax.annotate(name, (0, level), xycoords=("axes fraction", "data"), xytext=(4, 3), textcoords="offset points",
                    fontsize=8, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.savefig(path, format="png")
    return str(path)
