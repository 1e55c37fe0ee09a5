"""One self-contained HTML page (report.html) for a comparison or a run: a verdict sentence, then sections of tables,
figures and short paragraphs. Images are embedded as base64 PNG and the style is inline, so the file reads the same
in a browser, attached to a mail, or as an MLflow artifact (the run page shows HTML artifacts inline), with no
network and no script. Generic: it renders whatever figures and tables it is handed, in order."""

from __future__ import annotations

import base64
import html
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


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    title: str = ""
    digits: int = 4              # decimals of float cells (a page for reading; the CSV files hold every digit)


Item = Union[Figure, Table, str]  # a str is a paragraph of plain text


@dataclass
class Section:
    heading: str
    items: list[Item] = field(default_factory=list)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       color: #1a1a1a; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.0em; margin: 1.2em 0 0.4em; }
.verdict { font-size: 1.1em; background: #eef5ff; border-left: 4px solid #2b6cb0; padding: 10px 14px; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 6px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .caption { color: #444; font-size: 0.88em; margin-top: 4px; max-width: 1000px; }
.scroll { overflow-x: auto; }
"""


def _png(image: Path | bytes) -> str:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _figure(item: Figure) -> str:
    alt = html.escape(item.title or item.caption[:80] or "figure", quote=True)
    title = f"<h3>{html.escape(item.title)}</h3>" if item.title else ""
    caption = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
    return f'{title}<figure><img alt="{alt}" src="data:image/png;base64,{_png(item.image)}">{caption}</figure>'


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


def _item(item: Item) -> str:
    if isinstance(item, Figure):
        return _figure(item)
    if isinstance(item, Table):
        return _table(item)
    return f"<p>{html.escape(str(item))}</p>"


def render(title: str, verdict: str, sections: list[Section], meta: str = "") -> str:
    """The page as a string; sections without items are left out."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="meta">{html.escape(meta)}</p>'] if meta else []
    parts += [f'<p class="verdict">{html.escape(verdict)}</p>'] if verdict else []
    for section in sections:
        if section.items:
            parts.append(f"<h2>{html.escape(section.heading)}</h2>")
            parts += [_item(i) for i in section.items]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write(path: Path, title: str, verdict: str, sections: list[Section], meta: str = "") -> Path:
    write_atomic(Path(path), render(title, verdict, sections, meta))
    return Path(path)


def diagnostics_section(folder: Path) -> Section | None:
    """The "Diagnostics" section from ``folder``/index.json (written by the diagnostics): a JSON list of
    {"title", "image": file name under ``folder``, "caption"} or {"title", "table": CSV file name, "caption"}, shown
    in order. None without the file; an entry whose file is missing is named as such, not a broken page."""
    import json

    import pandas as pd

    index = Path(folder) / "index.json"
    if not index.is_file():
        return None
    section = Section("Diagnostics")
    for entry in json.loads(index.read_text()):
        title, caption = str(entry.get("title", "")), str(entry.get("caption", ""))
        name = entry.get("image") or entry.get("table")
        file = Path(folder) / str(name) if name else None
        if file is None or not file.is_file():
            section.items.append(f"{title}: {name} is missing")
        elif "image" in entry:
            section.items.append(Figure(file, caption, title))
        else:
            section.items.append(Table(pd.read_csv(file), caption, title))
    return section
