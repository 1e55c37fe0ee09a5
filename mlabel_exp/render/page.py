"""One self-contained HTML page (report.html) for a comparison or a run: a verdict sentence, a table of contents, then
sections of tables, figures, folded groups and short paragraphs. Every image is embedded (base64) and the style is
inline, so the file reads the same in a browser, attached to a mail, or as an MLflow artifact (the run page shows HTML
artifacts inline), with no network and no script. A chart is embedded as a 256-colour PNG where that is smaller (a
chart holds few colours; a third of the bytes); a page of photographs (``Figure.thumbnail``) as a JPEG thumbnail of a
fixed width, folded away: the page stays a few megabytes however many galleries a run draws. Each figure whose file
lies in the page's folder links to it (a relative link: the full resolution, where the folder travels with the page).
Generic: it renders whatever it is handed, in order."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from mlabel_exp.fsutil import write_atomic

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Figure:
    image: Path | bytes          # a PNG file, or its bytes
    caption: str = ""
    title: str = ""
    thumbnail: int = 0           # > 0: a page of photographs, embedded as a JPEG this many pixels wide


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    title: str = ""
    digits: int = 4              # decimals of float cells (a page for reading; the CSV files hold every digit)


@dataclass
class Fold:
    """Items folded under one line (``<details>``), opened with a click: what a person looks up, not reads through."""
    summary: str
    items: list = field(default_factory=list)


Item = Union[Figure, Table, Fold, str]  # a str is a paragraph of plain text


@dataclass
class Section:
    heading: str
    items: list[Item] = field(default_factory=list)


THUMBNAIL_QUALITY = 75  # JPEG quality of thumbnails: photographs at a glance; the linked file has every pixel

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       color: #1a1a1a; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.0em; margin: 1.2em 0 0.4em; }
.verdict { font-size: 1.1em; background: #eef5ff; border-left: 4px solid #2b6cb0; padding: 10px 14px; }
.meta { color: #555; font-size: 0.9em; }
nav.toc { font-size: 0.92em; margin: 10px 0 4px; }
nav.toc a { margin-right: 14px; white-space: nowrap; }
table { border-collapse: collapse; font-size: 0.85em; margin: 6px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .caption { color: #444; font-size: 0.88em; margin-top: 4px; max-width: 1000px; }
details { margin: 4px 0; }
details > summary { cursor: pointer; padding: 3px 0; }
details[open] > summary { font-weight: 600; }
.scroll { overflow-x: auto; }
"""


def _bytes(image: Path | bytes) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def embedded(item: Figure) -> tuple[str, bytes]:
    """(MIME type, bytes) of the figure as the page embeds it: a JPEG thumbnail ``item.thumbnail`` pixels wide (never
    wider than the file), else the PNG or its 256-colour copy, whichever is smaller."""
    from PIL import Image

    data = _bytes(item.image)
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        if item.thumbnail:
            small = image.convert("RGB")
            small.thumbnail((item.thumbnail, small.height), Image.Resampling.LANCZOS)
            small.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
            return "image/jpeg", out.getvalue()
        if image.mode == "P":  # a palette already (a page of photographs saved as such)
            return "image/png", data
        image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, "PNG", optimize=True)
    return ("image/png", out.getvalue()) if len(out.getvalue()) < len(data) else ("image/png", data)


def _link(item: Figure, base: Path | None) -> str | None:
    """The figure's file relative to the page's folder ``base``, where it lies inside it; else None."""
    if base is None or isinstance(item.image, bytes):
        return None
    try:
        return Path(item.image).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return None


def _figure(item: Figure, base: Path | None) -> str:
    alt = html.escape(item.title or item.caption[:80] or "figure", quote=True)
    title = f"<h3>{html.escape(item.title)}</h3>" if item.title else ""
    caption = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
    mime, data = embedded(item)
    image = f'<img alt="{alt}" src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}">'
    link = _link(item, base)
    if link:
        href = html.escape(link, quote=True)
        image = f'<a href="{href}" title="the full file: {href}">{image}</a>'
        if item.thumbnail:  # said in words too: a thumbnail is no place to read a caption in
            words = item.caption.rstrip()
            words += "" if not words or words.endswith((".", "?", "!")) else "."
            caption = (f"<figcaption>{html.escape(words)} Thumbnail; the full page: "
                       f'<a href="{href}">{html.escape(link)}</a>.</figcaption>')
    return f"{title}<figure>{image}{caption}</figure>"


def _cell(value, digits: int) -> str:
    if getattr(getattr(value, "dtype", None), "kind", "") == "f":  # numpy's float32 is no Python float
        value = float(value)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(item: Table) -> str:
    frame = item.frame.copy()
    for column in frame.columns:  # floats at a fixed precision; an empty cell for NaN / None
        frame[column] = [_cell(v, item.digits) for v in frame[column]]
    body = frame.to_html(index=False, border=0, na_rep="", escape=True)
    title = f"<h3>{html.escape(item.title)}</h3>" if item.title else ""
    caption = f'<div class="caption">{html.escape(item.caption)}</div>' if item.caption else ""
    return f'{title}<div class="scroll">{body}</div>{caption}'


def _item(item: Item, base: Path | None) -> str:
    if isinstance(item, Figure):
        return _figure(item, base)
    if isinstance(item, Table):
        return _table(item)
    if isinstance(item, Fold):
        inner = "\n".join(_item(i, base) for i in item.items)
        return f"<details><summary>{html.escape(item.summary)}</summary>\n{inner}\n</details>"
    return f"<p>{html.escape(str(item))}</p>"


def anchor(heading: str) -> str:
    """The id of a section's heading (the table of contents links to it)."""
    return "s-" + (re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section")


def render(title: str, verdict: str, sections: list[Section], meta: str = "", base: Path | None = None) -> str:
    """The page as a string; sections without items are left out. ``base``: the page's folder (figures there are
    linked)."""
    shown = [s for s in sections if s.items]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="meta">{html.escape(meta)}</p>'] if meta else []
    parts += [f'<p class="verdict">{html.escape(verdict)}</p>'] if verdict else []
    if len(shown) > 1:
        links = " ".join(f'<a href="#{anchor(s.heading)}">{html.escape(s.heading)}</a>' for s in shown)
        parts.append(f'<nav class="toc"><strong>Contents:</strong> {links}</nav>')
    for section in shown:
        parts.append(f'<h2 id="{anchor(section.heading)}">{html.escape(section.heading)}</h2>')
        parts += [_item(i, base) for i in section.items]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write(path: Path, title: str, verdict: str, sections: list[Section], meta: str = "") -> Path:
    write_atomic(Path(path), render(title, verdict, sections, meta, base=Path(path).parent))
    return Path(path)
