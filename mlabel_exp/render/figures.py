"""What every figure shares: matplotlib without a screen, the sizes and colours, and the one way a figure is saved
(``save``: a PNG written atomically, the figure closed). The figures themselves live with what they show: a run's in
``diagnostics.figures``, a comparison's in ``comparison.figures``, the data audit's in ``data.audit_figures``."""

from __future__ import annotations

from mlabel_exp.fsutil import write_atomic


def _pyplot():
    """pyplot on the Agg backend (files only: no display is opened, also where one exists)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure(*args, **kwargs):
    """(figure, axes) as plt.subplots makes them, on the Agg backend."""
    return _pyplot().subplots(*args, **kwargs)


def blank_figure(**kwargs):
    """A figure without axes (pages laid out by hand), on the Agg backend."""
    return _pyplot().figure(**kwargs)


def integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def clip(text: str, width: int, keep: str = "head") -> str:
    """``text`` in at most ``width`` characters, cut with "..." (``keep="tail"``: its end, for paths); unlike
    textwrap.shorten, a long word without spaces (a path, a class name) is cut, not dropped."""
    text = str(text)
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3):] if keep == "tail" else text[:width - 3] + "..."


def wrap_path(name: str, width: int) -> list[str]:
    """A file name on lines of at most ``width`` characters, broken after a '/' where it can be (inside a folder or file
    name longer than a line, at the width): every character shown, none replaced by "..."."""
    import re

    lines = [""]
    for part in re.split(r"(?<=/)", str(name)):
        while part:
            room = width - len(lines[-1])
            if len(part) <= room:
                lines[-1], part = lines[-1] + part, ""
            elif lines[-1]:
                lines.append("")
            else:
                lines[-1], part = part[:width], part[width:]
                lines.append("")
    return [line for line in lines if line] or [""]


def save(fig, path, *, photos: bool = False):
    """The figure as a PNG at ``path`` (100 dpi, written atomically), then closed; returns ``path``. ``photos``: a page
    of photographs (galleries, activation maps) is quantised to 256 colours, as photographs compress badly: a page of
    15 images is about a megabyte in full colour, a third of that in 256 colours. Drawn once on the canvas and encoded
    once, with Pillow's fast octree quantiser: a third of the time of a saved PNG decoded and quantised by median cut,
    which was most of what the diagnostics' pages cost."""
    import io

    import matplotlib.pyplot as plt

    data = io.BytesIO()
    if photos:
        import numpy as np
        from PIL import Image

        fig.set_dpi(100)
        fig.canvas.draw()
        pixels = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        pixels.quantize(256, method=Image.Quantize.FASTOCTREE).save(data, "PNG")
    else:
        fig.savefig(data, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, data.getvalue())
    return path


# Okabe-Ito's colour-blind-safe palette (its yellow left out: unreadable on white) and three of Paul Tol's: ten colours,
# no two alike (tab20's pairs are); past ten, a line style tells them apart
QUALITATIVE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#882255", "#999933",
                "#7F7F7F")


DASHES = ("-", "--", ":", "-.")


def class_rows_height(n: int) -> float:
    return max(3.0, 0.32 * n + 1.5)


def class_matrix(fig, ax, classes: list[str], values, vmax: float = 1.0, cmap: str = "viridis",
                 fontsize: float = 8) -> None:
    """A class-by-class matrix on ``ax``: cells coloured 0..``vmax`` with their value written (up to 20 classes, at
    ``fontsize``), NaN cells blank, a colour bar."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    n = len(classes)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=vmax)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), classes)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if values[i, j] == values[i, j]:
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=fontsize,
                            color="black" if values[i, j] > 0.6 * vmax else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
