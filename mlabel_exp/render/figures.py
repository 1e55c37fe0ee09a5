"""What every figure shares: matplotlib without a screen, the sizes and colours, and the one way a figure is saved
(``save``: a PNG written atomically, the figure closed). The figures themselves live with what they show: a run's in
``diagnostics.figures``, a comparison's in ``comparison.figures``, the data audit's in ``data.audit_figures``."""

from __future__ import annotations

from mlabel_exp.fsutil import write_atomic


def figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


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


def save(fig, path, *, photos: bool = False):
    """The figure as a PNG at ``path`` (100 dpi, written atomically), then closed; returns ``path``. ``photos``: a page
    of photographs (galleries, activation maps) is quantised to 256 colours, as photographs compress badly: a page of
    15 images is about a megabyte in full colour, a fifth in 256 colours."""
    import io

    import matplotlib.pyplot as plt


    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=100)
    plt.close(fig)
    if photos:
        from PIL import Image

        with Image.open(data) as image:
            data = io.BytesIO()
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(data, "PNG")
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
