"""Matplotlib figures for runs; returned (never shown) so callers log or save them."""

from __future__ import annotations


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def clip(text: str, width: int, keep: str = "head") -> str:
    """``text`` in at most ``width`` characters, cut with "..." (``keep="tail"``: its end, for paths); unlike
    textwrap.shorten, a long word without spaces (a path, a class name) is cut, not dropped."""
    text = str(text)
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3):] if keep == "tail" else text[:width - 3] + "..."


def save_png(fig, path):
    """The figure, closed, as a 256-colour PNG written atomically: for pages of photographs (galleries, activation
    maps), which compress badly: a page of 15 images is about a megabyte in full colour, a fifth in 256 colours."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from mlabel_exp.fsutil import write_atomic

    full, small = io.BytesIO(), io.BytesIO()
    fig.savefig(full, format="png", dpi=100)
    plt.close(fig)
    with Image.open(full) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(small, "PNG")
    write_atomic(path, small.getvalue())
    return path


LOSS_NAMES = {"bce": "BCE loss", "focal": "focal loss", "asl": "asymmetric loss (ASL)"}


def curves(history: list[dict], title: str = "", loss: str = "bce"):
    """Loss (train vs val) and val mAP per epoch, side by side; ``loss``: the loss.name the run used."""
    fig, (ax_loss, ax_map) = _figure(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train/loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val/loss"] for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel=LOSS_NAMES.get(loss, loss), title="loss")
    ax_loss.legend()
    ax_map.plot(epochs, [h["val/mAP"] for h in history], "o-", color="C2", label="val mAP")
    ax_map.plot(epochs, [h["val/f1_micro"] for h in history], "s--", color="C3", label="val F1 micro @0.5")
    ax_map.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    ax_map.legend()
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        _integer_epochs(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_class_bars(table, title: str = "per-class AP"):
    """Horizontal bars of per-class AP with, where the table has them, the bootstrap interval over the evaluation
    images ("AP low", "AP high": whiskers) and the class's prevalence (the AP a random ranking scores: a marker).
    Each label gives the class's positives; a class without a positive has no AP and is marked n/a (not a 0)."""
    import numpy as np

    height = 0.38 * len(table) + 2.2
    fig, ax = _figure(figsize=(8, height))
    labels = [f"{c} ({s})" for c, s in zip(table["class"], table["support"])]
    ap = table["AP"].astype(float)
    y = np.arange(len(table))
    ax.barh(y, ap.fillna(0), color="C0", label="AP")
    if {"AP low", "AP high"} <= set(table.columns):
        low, high = table["AP low"].astype(float), table["AP high"].astype(float)
        ax.errorbar(ap, y, xerr=[np.clip(ap - low, 0, None), np.clip(high - ap, 0, None)], fmt="none", ecolor="k",
                    elinewidth=1, capsize=3, label=f"{table.attrs.get('confidence', 0.95):.0%} bootstrap interval "
                    "over the images")
    if "prevalence" in table.columns:
        prevalence = table["prevalence"].astype(float).where(table["support"] > 0)  # none drawn where AP is n/a
        ax.plot(prevalence, y, "|", color="C3", markersize=14, markeredgewidth=2.5,
                label="prevalence = AP of a random ranking")
    for row, value in enumerate(ap):
        if value != value:  # NaN
            ax.text(0.01, row, "n/a (no positive)", va="center", fontsize=8, color="0.4")
    ax.set_yticks(y, labels)
    ax.set(xlim=(0, 1), xlabel="average precision", ylabel="class (positive images in the evaluation set)")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
    return fig


# ---- comparing runs (compare.py)

_CURVE_PANELS = (("train/loss", "train loss", "BCE loss"), ("val/loss", "validation loss", "BCE loss"),
                 ("val/mAP", "validation mAP", "mAP"))


def run_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], title: str = ""):
    """The original project's graph: train loss, val loss and val mAP per epoch, one line per run.

    ``histories``: run label -> metric key -> [(epoch, value), ...]; the legend sits under the panels.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    legend_h = 0.25 * -(-len(histories) // 3) + 0.3
    height = 4.2 + legend_h
    fig, axes = _figure(1, 3, figsize=(15, height))
    handles = []
    for i, (label, history) in enumerate(histories.items()):
        # a marker shape of its own and some transparency: a run identical to another still shows under it
        style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[i // 10 % 4], alpha=0.85,
                     marker="osD^v<>ph*"[i % 10], markersize=4 + 1.5 * (i % 3), markerfacecolor="none")
        for ax, (key, _, _) in zip(axes, _CURVE_PANELS):
            points = history.get(key) or []
            if points:
                ax.plot(*zip(*points), **style)
        handles.append(Line2D([], [], **style))
    for ax, (_, name, ylabel) in zip(axes, _CURVE_PANELS):
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:2]:  # losses: one diverged run (a loss of 8,000) must not flatten every other run to a line
        values = [v for line in ax.get_lines() for v in line.get_ydata() if v == v and v > 0]
        if values and max(values) / min(values) > 100:
            ax.set_yscale("log")
            ax.set_title(f"{ax.get_title()} (log scale)")
    axes[2].set_ylim(0, 1)
    fig.legend(handles, list(histories), loc="lower center", ncol=min(3, max(1, len(histories))),
               fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return fig


def per_class_heatmap(ap, title: str = "per-class AP (val, best epoch)", positives=None, n_images: int | None = None,
                      chance=None):
    """Runs x classes heatmap of AP; ``ap`` is a DataFrame indexed by run label with one column per class. With
    ``chance`` (a row per set of images the runs were scored on, each class's prevalence there: the AP a random
    ranking scores on average, the floor each run's AP should be read against) those rows follow the runs, and with
    ``positives`` (known positives of each class among the ``n_images`` of the first chance row) each column is
    labelled with its count."""
    import numpy as np
    import pandas as pd

    rows = ap if chance is None else pd.concat([ap, chance.reindex(columns=ap.columns)])
    n_runs, n_classes = rows.shape
    fig, ax = _figure(figsize=(max(6.0, 0.6 * n_classes + 4), 0.4 * n_runs + 2.8))
    values = np.ma.masked_invalid(rows.to_numpy(dtype=float))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    names = [str(c) for c in ap.columns]
    if chance is not None and positives is not None:
        names = [f"{c} ({int(positives[c]) if positives.get(c) == positives.get(c) else '?'})" for c in ap.columns]
    ax.set_xticks(range(n_classes), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_runs), [str(r) for r in rows.index], fontsize=8)
    if chance is not None:
        ax.axhline(len(ap) - 0.5, color="white", lw=3)  # the chance rows apart from the runs
        ax.set_xlabel(f"class (validation positives, of the {n_images} images of the first chance row)\nchance rows: "
                      "the prevalence among the images the runs scored, the AP of a random ranking", fontsize=8)
    if n_runs * n_classes <= 600:
        for (r, c), v in np.ndenumerate(rows.to_numpy(dtype=float)):
            text, colour = (f"{v:.2f}", "white" if v < 0.5 else "black") if v == v else ("n/a", "0.4")  # NaN: no AP
            ax.text(c, r, text, ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, label="AP")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def regularisation(table, x_columns: list[str], group_columns: list[str], score: str = "best_val_mAP"):
    """``score`` against each of ``x_columns`` (one panel each, the settings a sweep actually varied): per setting, the
    mean over its seed runs with its 95% t-interval (a bar where two or more seeds), each seed run a faint dot; a line
    joins the means of runs equal in ``group_columns`` but this setting (the same model, trainer, length)."""
    from mlabel_exp.analysis.stats import seed_interval

    fig, axes = _figure(1, len(x_columns), figsize=(6 * len(x_columns), 4.5), squeeze=False)
    for ax, x in zip(axes[0], x_columns):
        by = [c for c in group_columns if c != x]
        groups = table.groupby(by, dropna=False, sort=True) if by else [((), table)]
        for i, (key, group) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}" for c, v in zip(by, key))
            colour = f"C{i % 10}"
            points = [(value, seed_interval(runs[score].dropna().to_list()), runs[score].dropna())
                      for value, runs in group.groupby(x, sort=True) if runs[score].notna().any()]
            if not points:
                continue
            xs, summaries = [p[0] for p in points], [p[1] for p in points]
            for value, _, seeds in points:
                ax.plot([value] * len(seeds), seeds, "o", color=colour, alpha=0.3, ms=4, mfc="none")
            ax.plot(xs, [s.mean for s in summaries], "D-" if len(xs) > 1 else "D", color=colour, ms=6,
                    label=label or "all runs")
            for value, s in zip(xs, summaries):
                if s.ci_low is not None:
                    ax.plot([value, value], [s.ci_low, s.ci_high], color=colour, lw=2.5, alpha=0.6)
        positive = table[x][table[x] > 0]
        if len(positive) and positive.max() / positive.min() >= 10:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        name = score.replace("_", " ")
        ax.set(xlabel=x, ylabel=f"{name} (diamond: mean over seeds)", title=f"{name} against {x}",
               ylim=(0, 1))  # the whole scale: a 0.48-0.55 axis would make a small gap look large
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.text(0.01, 0.01, "bars: 95% t-interval over seeds (2+ seeds); circles: seed runs", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def cost(frame, title: str = "accuracy against inference cost"):
    """Mean best val mAP (95% t-interval where 2+ seeds) of each group against the inference time per image of its
    best run, one marker per group, named beside it. ``frame``: group, mean, ci_low, ci_high, ms_per_image, model."""
    import textwrap

    fig, ax = _figure(figsize=(9, 5.5))
    markers = "oDs^v<>ph*"
    for i, row in enumerate(frame.itertuples(index=False)):
        colour = _QUALITATIVE[i % len(_QUALITATIVE)]
        if row.ci_low is not None and row.ci_low == row.ci_low:
            ax.plot([row.ms_per_image] * 2, [row.ci_low, row.ci_high], color=colour, lw=2.5, alpha=0.6)
        ax.plot([row.ms_per_image], [row.mean], markers[i // len(_QUALITATIVE) % 10], color=colour, ms=8,
                label=textwrap.shorten(str(row.group), 60, placeholder=" ..."))
        ax.annotate(textwrap.shorten(str(row.group), 28, placeholder="..."), (row.ms_per_image, row.mean),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    times = frame["ms_per_image"].astype(float)
    if len(times) and times.max() / max(times.min(), 1e-12) >= 10:
        ax.set_xscale("log")
    if len(times) and ax.get_xscale() == "linear":  # from 0 (times are compared as ratios), room for the names
        ax.set_xlim(0, float(times.max()) * 1.3)
    ax.set(xlabel="inference time per image on this machine, ms (the run's own predictor; lower is cheaper)",
           ylabel="best val mAP (mean over seeds, 95% interval)", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# Okabe-Ito's colour-blind-safe palette (its yellow left out: unreadable on white) and three of Paul Tol's: ten colours,
# no two alike (tab20's pairs are); past ten, a line style tells them apart
_QUALITATIVE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#882255", "#999933",
                "#7F7F7F")
_DASHES = ("-", "--", ":", "-.")


def pr_curves(probs, targets, classes: list[str], title: str = "precision-recall (val, best epoch)"):
    """One precision-recall step curve per class, with its AP and support in the legend, in distinct colours (and line
    styles past ten classes);
    classes without a validation positive have no curve (and say so in the legend's title). Unknown labels (-1) are
    left out of each class's curve."""
    from mlabel_exp.analysis.metrics import ignored, per_class_ap, positives
    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    import textwrap

    fig, ax = _figure(figsize=(10, 6.5))
    targets = targets.int()
    precision, recall, _ = multilabel_precision_recall_curve(probs.float(), targets, num_labels=len(classes),
                                                             ignore_index=ignored(targets))
    ap = per_class_ap(probs.float(), targets)
    support = positives(targets).tolist()
    without = [name for c, name in enumerate(classes) if support[c] == 0]
    order = sorted((c for c in range(len(classes)) if classes[c] not in without), key=lambda c: -float(ap[c]))
    for i, c in enumerate(order):
        # a colour of its own among ten distinct ones; past ten, the colours repeat with another line style
        ax.step(recall[c].numpy(), precision[c].numpy(), where="post", color=_QUALITATIVE[i % len(_QUALITATIVE)],
                linestyle=_DASHES[i // len(_QUALITATIVE) % len(_DASHES)], linewidth=1.4,
                label=f"{classes[c]}  AP {float(ap[c]):.2f}  ({support[c]})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    legend_title = "class, AP (validation positives)" + (f"\nno positive: {', '.join(without)}" if without else "")
    wrapped = "\n".join(textwrap.fill(line, 40) for line in legend_title.split("\n"))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title=wrapped, title_fontsize=8)
    fig.tight_layout()
    return fig


def group_intervals(groups, title: str = "", objective: str = "best val mAP"):
    """Each group's mean over seeds with its 95% t-interval, every seed run as a dot, and the verdict beside it; best
    group on top. ``groups``: groups.COLUMNS rows (a DataFrame), best first."""
    import textwrap

    n = len(groups)
    fig, ax = _figure(figsize=(10, 1.4 + 0.5 * n))
    for y, row in enumerate(groups.itertuples(index=False)):
        y = n - 1 - y  # best on top
        colour = "C0" if row.verdict in ("best", "") else "C7" if row.verdict.startswith("worse") else "C1"
        if row.ci_low is not None and row.ci_low == row.ci_low:  # an interval (two or more seeds)
            ax.plot([row.ci_low, row.ci_high], [y, y], color=colour, lw=3, alpha=0.6, solid_capstyle="butt")
        ax.plot([row.mean], [y], "D", color=colour, ms=8)
        ax.plot(row.values, [y] * len(row.values), "o", mfc="none", color="k", ms=5, alpha=0.6)
        p = f", p={row.p_value:.3f}" if row.p_value is not None and row.p_value == row.p_value else ""
        words = textwrap.fill(textwrap.shorten(f"{row.verdict}{p}", 102, placeholder=" ..."), 34)  # 3 lines at most
        ax.annotate(textwrap.indent(words, "  "), (1, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    names = [textwrap.shorten(g, 80, placeholder=" ...") for g in reversed(list(groups["group"]))]
    ax.set_yticks(range(n), [textwrap.fill(g, 42) for g in names], fontsize=8)  # long names: two lines at most
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(*_interval_axis(groups))
    low, high = ax.get_xlim()
    scale = "full scale" if (low, high) == (0, 1) else f"axis {low:.2f}-{high:.2f}, zoomed to the intervals"
    ax.set_xlabel(f"{objective} ({scale})\ndiamond: mean over seeds; bar: 95% t-interval; circles: seed runs",
                  fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(right=0.75)  # room for the verdicts
    return fig


def _interval_axis(groups) -> tuple[float, float]:
    """The x range of group_intervals: 0-1 unless two or more seeds give an interval to judge a gap by; then the
    intervals and seed runs, padded by the widest interval (at least 0.02), so that the zoom never makes a gap look
    larger than the seed noise beside it."""
    seeds = [s for v in groups["values"] for s in v if s == s]
    bounds = [v for v in (*groups["ci_low"].dropna(), *groups["ci_high"].dropna()) if v == v]
    if not bounds or not seeds:  # one seed a group (no noise measured) or no objective: the whole scale
        return 0.0, 1.0
    widest = max(h - lo for lo, h in zip(groups["ci_low"], groups["ci_high"]) if lo is not None and lo == lo)
    pad = max(widest, 0.02)
    return max(0.0, min(*bounds, *seeds) - pad), min(1.0, max(*bounds, *seeds) + pad)


# The data audit's figures (python -m mlabel_exp.inspect): one horizontal bar per class, so that long class names stay
# legible whatever their number; the height grows with the number of classes.

def _class_rows_height(n: int) -> float:
    return max(3.0, 0.32 * n + 1.5)


def positives_per_class(classes: list[str], positives, n_images: int, title: str = "positive images per class"):
    """Positives per class on a log axis, each bar labelled with the count and its share of the data set."""
    import numpy as np

    positives = np.asarray(positives)
    fig, ax = _figure(figsize=(9, _class_rows_height(len(classes))))
    y = np.arange(len(classes))
    ax.barh(y, np.maximum(positives, 0.8), color="C0", log=True)  # an empty class still shows as a stub
    for i, n in enumerate(positives):
        ax.text(max(n, 0.8) * 1.08, i, f"{int(n)} ({n / max(n_images, 1):.1%})", va="center", fontsize=8)
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0.7, max(float(positives.max(initial=1)), 1.0) * 6)  # room for the labels at the right
    ax.set(xlabel=f"images holding the class (log scale; share of {n_images} images)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def labels_per_image(per_image, title: str = "labels per image"):
    """Histogram of the number of positive labels an image has (one bar per count)."""
    import numpy as np

    per_image = np.asarray(per_image, dtype=int)
    counts = np.bincount(per_image, minlength=1)
    fig, ax = _figure(figsize=(7, 4))
    bars = ax.bar(np.arange(len(counts)), counts, color="C1")
    ax.bar_label(bars, [str(int(c)) for c in counts], fontsize=8)
    ax.set_xticks(np.arange(len(counts)))
    ax.set(xlabel="positive labels on the image", ylabel="images", title=f"{title} (mean {per_image.mean():.2f})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def class_matrix(fig, ax, classes: list[str], values, vmax: float = 1.0, cmap: str = "viridis") -> None:
    """A class-by-class matrix on ``ax``: cells coloured 0..``vmax`` with their value written (up to 20 classes), NaN
    cells blank, a colour bar."""
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
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if values[i, j] > 0.6 * vmax else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def cooccurrence(classes: list[str], matrix, title: str = "class co-occurrence: P(column | row)"):
    """Co-occurrence normalised per row: the share of the row class's images that also hold the column class."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    norm = matrix / np.maximum(np.diag(matrix), 1)[:, None]
    side = max(5.0, 0.55 * len(classes) + 2.5)
    fig, ax = _figure(figsize=(side + 1.2, side))
    class_matrix(fig, ax, classes, norm)
    ax.set(xlabel="also holds", ylabel="images of", title=title)
    fig.tight_layout()
    return fig


def split_per_class(classes: list[str], counts: dict[str, list[int]], title: str = "images per split per class"):
    """Positive images of each class in each split (``counts``: split name -> one count per class), grouped bars."""
    import numpy as np

    n = len(classes)
    fig, ax = _figure(figsize=(9, _class_rows_height(n) * max(1.0, len(counts) / 2.5)))
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
