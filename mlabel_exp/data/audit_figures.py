"""The data audit's figures (python -m mlabel_exp.inspect): one horizontal bar per class, so that long class names
stay legible whatever their number; the height grows with the number of classes."""

from __future__ import annotations

from mlabel_exp.render.figures import class_matrix, class_rows_height, figure, save


def positives_per_class(classes: list[str], positives, n_images: int, title: str = "positive images per class"):
    """Positives per class on a linear axis (a bar's length is its count: 52 against 1,326 looks like it), each bar
    labelled with the count and its share of the data set; an empty class is a labelled zero."""
    import numpy as np

    positives = np.asarray(positives)
    fig, ax = figure(figsize=(9, class_rows_height(len(classes))))
    y = np.arange(len(classes))
    bars = ax.barh(y, positives, color="C0")
    ax.bar_label(bars, [f"{int(n):,} ({n / max(n_images, 1):.1%})" for n in positives], padding=3, fontsize=8)
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, max(float(positives.max(initial=1)), 1.0) * 1.25)  # room for the labels at the right
    ax.set(xlabel=f"images holding the class (share of {n_images:,} images)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def labels_per_image(per_image, title: str = "labels per image"):
    """Histogram of the number of positive labels an image has (one bar per count)."""
    import numpy as np

    per_image = np.asarray(per_image, dtype=int)
    counts = np.bincount(per_image, minlength=1)
    fig, ax = figure(figsize=(7, 4))
    bars = ax.bar(np.arange(len(counts)), counts, color="C1")
    ax.bar_label(bars, [str(int(c)) for c in counts], fontsize=8)
    ax.set_xticks(np.arange(len(counts)))
    ax.set(xlabel="positive labels on the image", ylabel="images", title=f"{title} (mean {per_image.mean():.2f})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def cooccurrence(classes: list[str], matrix, title: str = "class co-occurrence: P(column | row)"):
    """Co-occurrence normalised per row: the share of the row class's images that also hold the column class."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    norm = matrix / np.maximum(np.diag(matrix), 1)[:, None]
    side = max(5.0, 0.55 * len(classes) + 2.5)
    fig, ax = figure(figsize=(side + 1.2, side))
    class_matrix(fig, ax, classes, norm)
    ax.set(xlabel="also holds", ylabel="images of", title=title)
    fig.tight_layout()
    return fig


def split_per_class(classes: list[str], counts: dict[str, list[int]], title: str = "images per split per class"):
    """Positive images of each class in each split (``counts``: split name -> one count per class), grouped bars."""
    import numpy as np

    n = len(classes)
    fig, ax = figure(figsize=(9, class_rows_height(n) * max(1.0, len(counts) / 2.5)))
    y = np.arange(n)
    height = 0.8 / max(len(counts), 1)
    for k, (name, values) in enumerate(counts.items()):
        bars = ax.barh(y + (k - (len(counts) - 1) / 2) * height, values, height, label=name)
        ax.bar_label(bars, [str(int(v)) for v in values], fontsize=7, padding=2)
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set(xlabel="positive images", title=title)
    ax.margins(x=0.12)
    ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def write_figures(report, index, split: dict | None, out_dir) -> list:
    """The audit's four figures (three without a ``split``), saved as PNGs in ``out_dir``; returns their paths."""
    import numpy as np

    positive = (index.labels == 1)
    made = {
        "positives_per_class.png": positives_per_class(index.classes, positive.sum(0), len(index)),
        "labels_per_image.png": labels_per_image(positive.sum(1)),
        "cooccurrence.png": cooccurrence(index.classes, report.cooccurrence.to_numpy()),
    }
    if split is not None:
        made["split_per_class.png"] = split_per_class(
            index.classes, {f"{k} ({len(rows)} images)": positive[np.asarray(rows, dtype=int)].sum(0).tolist()
                            for k, rows in split.items() if len(rows)})
    return [save(drawn, out_dir / name) for name, drawn in made.items()]
