"""The diagnostics' figures (``diagnostics``' numbers drawn): reliability diagrams, what is predicted although absent
beside the labels' co-occurrence, and one error gallery per class. Returned, never shown."""

from __future__ import annotations

import textwrap

import numpy as np

from mlabel_exp.render.figures import (DASHES, QUALITATIVE, blank_figure, class_matrix, clip, figure, integer_epochs,
                                      wrap_path)

PERFECT = ("a perfectly calibrated model draws every dot on the dashed diagonal (of the labels given probability p, "
           "a share p is present)")


def _reliability_panel(ax, bins, title: str, width: float, fontsize: float = 8) -> None:
    """Each bin (diagnostics.Bins): a dot at (mean probability, share present) with its Wilson interval, its number of
    labels along the top edge (above the plot: never over a dot); grey bars: where the labels lie, each bin's share
    spread over its span (``width``: one equal-width bin's; a merged bin is lower, its area its share)."""
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1)
    span = bins.upper - bins.lower
    ax.bar(bins.lower, bins.count / max(bins.count.sum(), 1) * width / np.maximum(span, width), width=span,
           align="edge", color="C7", alpha=0.25, edgecolor="0.6", lw=0.5)
    whiskers = np.maximum(0, [bins.positive - bins.low, bins.high - bins.positive])  # no -1e-17 from rounding
    ax.errorbar(bins.confidence, bins.positive, yerr=whiskers, fmt="o", ms=4, color="C0", mec="k", mew=0.5,
                elinewidth=1, capsize=2, zorder=3)
    counts = ax.secondary_xaxis("top")
    counts.set_xticks(bins.confidence, [str(n) for n in bins.count], rotation=90, fontsize=fontsize - 2,
                      color="0.3")
    counts.tick_params(length=2, pad=1, color="0.6")
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.set_title(title, fontsize=fontsize)
    ax.tick_params(labelsize=fontsize)
    ax.grid(alpha=0.3)


def reliability(cal, classes: list[str], panels: list[int], positives, known, rule: str, title: str):
    """The pooled reliability diagram (every known label of every class) and one small diagram per class of
    ``panels`` (diagnostics.panel_classes, whose ``rule`` the figure states), each with its ECE and Brier score."""
    cols = 4 if panels else 0
    rows = max(2, -(-len(panels) // cols)) if panels else 1
    width = max(7.5, 5.2 + 2.4 * cols)
    fig = figure(figsize=(width, max(6.2, 2.5 * rows + 1.8)))[0]
    fig.clf()
    grid = fig.add_gridspec(rows, 2 + cols, width_ratios=[1, 1] + [0.9] * cols)
    ax = fig.add_subplot(grid[: min(rows, 2), :2])
    _reliability_panel(ax, cal.pooled_bins, f"all classes pooled: ECE {cal.ece_pooled:.3f}, Brier "
                       f"{cal.brier_pooled:.3f}", 1 / cal.bins, fontsize=9)
    ax.set_xlabel("predicted probability (the bin's mean)", fontsize=9)
    ax.set_ylabel("share of images holding the class", fontsize=9)
    for k, c in enumerate(panels):
        small = fig.add_subplot(grid[k // cols, 2 + k % cols])
        _reliability_panel(small, cal.class_bins[c], f"{clip(classes[c], 18)} ({positives[c]} pos. of {known[c]})\n"
                           f"ECE {cal.ece[c]:.3f}, Brier {cal.brier[c]:.3f}", 1 / cal.bins)
    left_out = [classes[c] for c in range(len(classes)) if c not in set(panels)]
    note = (f" Pooled only ({len(left_out)}): {clip(', '.join(left_out), 120)}." if left_out else "")
    explained = textwrap.fill(
        f"Dots: ECE's {cal.bins} equal-width bins, adjacent ones merged until each holds {cal.min_count} labels or "
        f"more, at their labels' mean probability, with a 95% Wilson interval and the number of labels; grey bars: "
        f"where the labels lie (a bin's share of them, spread over its span); {PERFECT}. ECE: torchmetrics' L1 over "
        f"the {cal.bins} equal-width bins, unmerged. A class has a panel of its own with {rule}.{note}",
        int(width * 15))
    fig.suptitle(f"{title}\n{explained}", fontsize=9)
    fig.tight_layout()
    return fig


#: Widest figure a page shows at its own size (report.html's column: 1,200 px less its margins, at 100 dpi), inches.
PAGE_WIDTH = 11.5
CELL = 0.27  # the narrowest cell (inches) that holds a value written at 7 points ("0.25")


def confusion(classes: list[str], cooccurrence, fp_share, fp_n, title: str):
    """Left (or above): P(j present | i present) of the true labels (label correlation). Right (or below): P(j
    predicted | i present, j absent), the false positives of j when i is in the image (model confusion); blank where no
    image qualifies. As wide as a page shows at its own size, so the values written in the cells read at 7-8 points:
    side by side where the cells are wide enough, else one above the other."""
    n = len(classes)
    side_by_side = (PAGE_WIDTH - 3.6) / 2 / n >= CELL
    cell = (PAGE_WIDTH - 3.6) / 2 / n if side_by_side else min(0.6, (PAGE_WIDTH - 2.2) / n)
    panel = n * cell + 1.5  # the matrix, its rotated class names below and its title above
    fig, (left, right) = figure(1 if side_by_side else 2, 2 if side_by_side else 1,
                                figsize=(PAGE_WIDTH, (panel if side_by_side else 2 * panel) + 0.7))
    fontsize = 7 if cell < 0.4 else 8
    cooc = np.asarray(cooccurrence, dtype=float)
    class_matrix(fig, left, classes, cooc / np.maximum(np.diag(cooc), 1)[:, None], vmax=1.0, fontsize=fontsize)
    left.set(xlabel="class j", ylabel="images holding class i")
    left.set_title("true labels: P(j present | i present)\n(how labels go together in the data)", fontsize=9)
    top = float(np.nanmax(fp_share)) if np.isfinite(fp_share).any() else 1.0
    class_matrix(fig, right, classes, fp_share, vmax=max(top, 0.05), cmap="magma", fontsize=fontsize)
    right.set(xlabel="class j (predicted although absent)", ylabel="images holding class i")
    right.set_title(f"errors: P(j predicted | i present, j absent)\n(false positives of j; colour scale 0-"
                    f"{max(top, 0.05):.2f})", fontsize=9)
    for ax in (left, right):
        ax.tick_params(labelsize=8)
    fewest = int(fp_n[fp_n > 0].min()) if (fp_n > 0).any() else 0
    side = "Right" if side_by_side else "Below"
    fig.suptitle(title + "\n" + textwrap.fill(
        f"{side}: j is truly absent in every image counted, so label correlation cannot raise a cell; a bright cell "
        f"there is the model confusing j with i (the fewest images behind a cell: {fewest})", int(PAGE_WIDTH * 13)),
        fontsize=9)
    fig.tight_layout()
    return fig


def _caption(name: str, p: float, true: list[str], predicted: list[str], width: int) -> str:
    """Short lines under a thumbnail, each at most ``width`` characters: the whole file name (wrapped at '/', never cut:
    two images may differ only in the middle of their paths), p, and the labels (two lines at most)."""
    def labels(prefix: str, names: list[str]) -> str:
        return textwrap.fill(f"{prefix}: {', '.join(names) or '(none)'}", width, subsequent_indent="  ",
                             max_lines=2, placeholder=" ...")

    shown = "\n".join(wrap_path(name, width))
    return f"{shown}\np = {p:.3f}\n{labels('true', true)}\n{labels('pred', predicted)}"


TILE, TILE_GAP = 200, 35  # pixels at 100 dpi: a gallery's thumbnail box (writer.THUMBNAIL_PX), the space between


def _tiles(images: list, size: int) -> np.ndarray:
    """One row of ``size`` TILE-square boxes, each image (an RGB array) scaled to fill its box with its aspect ratio
    kept and centred there, light grey where it is None (not found here), white past the last."""
    from PIL import Image

    strip = np.full((TILE, size * (TILE + TILE_GAP) - TILE_GAP, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        left = k * (TILE + TILE_GAP)
        if image is None:
            strip[:, left:left + TILE] = 235
            continue
        h, w = image.shape[:2]
        h, w = max(1, round(h * TILE / max(h, w))), max(1, round(w * TILE / max(h, w)))
        top, x = (TILE - h) // 2, left + (TILE - w) // 2
        strip[top:top + h, x:x + w] = np.asarray(Image.fromarray(image[..., :3]).resize((w, h), Image.BILINEAR))
    return strip


def gallery(ev, c: int, false_pos, false_neg, thumbnail, size: int):
    """The top false positives (upper row) and false negatives (lower row) of class ``c``: each image with its path,
    its probability for the class, its true and its predicted labels. ``thumbnail(row)``: an RGB array or None (the
    image could not be read here). One axes per row (the thumbnails side by side in one array): a grid of axes per
    image cost twice as much to draw."""
    cls, threshold = ev.classes[c], ev.thresholds[c]
    predicted = ev.predicted

    def caption(row) -> str:
        true = [n for n, t in zip(ev.classes, ev.targets[row]) if t == 1]
        pred = [n for n, t in zip(ev.classes, predicted[row]) if t]
        return _caption(ev.names[row], float(ev.probs[row, c]), true, pred, 26)

    captions = {row: caption(row) for row in (*false_pos, *false_neg)}
    lines = max((text.count("\n") + 1 for text in captions.values()), default=1)
    below = max(1.25, 0.14 * lines + 0.1)  # inches under the thumbnails: the longest caption (8 pt lines) fits
    width, strip_w = size * (TILE + TILE_GAP) / 100 + 0.2, (size * (TILE + TILE_GAP) - TILE_GAP) / 100
    title = textwrap.fill(f"{ev.split}: errors of class '{cls}' at its threshold {threshold:.3f} (the "
                          f"{len(false_pos)} most confident false positives and {len(false_neg)} false negatives)",
                          int(width * 12))  # about 12 characters of 10 pt an inch: wrapped, never cut at the edges
    row_h = 0.35 + TILE / 100 + below  # inches: a row's title, thumbnails and captions
    head = 0.35 + 0.2 * (title.count("\n") + 1)  # the figure's title
    fig = blank_figure(figsize=(width, head + 2 * row_h))
    height = head + 2 * row_h
    for r, (rows, what) in enumerate(((false_pos, f"false positives: '{cls}' predicted (p >= {threshold:.3f}) "
                                                  "but absent; highest p first"),
                                      (false_neg, f"false negatives: '{cls}' present but p < {threshold:.3f}; "
                                                  "lowest p first"))):
        bottom = height - head - (r + 1) * row_h + below
        ax = fig.add_axes([0.1 / width, bottom / height, strip_w / width, TILE / 100 / height])
        images = [thumbnail(row) for row in rows]
        ax.imshow(_tiles(images, size), interpolation="nearest", aspect="auto")
        ax.axis("off")
        ax.set_title(what if len(rows) else f"{what}: none", fontsize=9, loc="left")
        for k, (row, image) in enumerate(zip(rows, images)):
            left = k * (TILE + TILE_GAP)
            if image is None:
                ax.text(left + TILE / 2, TILE / 2, "image not\nfound here", ha="center", va="center", fontsize=8,
                        color="0.4")
            ax.text(left, TILE + 6, captions[row], fontsize=8, va="top", ha="left", clip_on=False)
    fig.suptitle(title, fontsize=10, y=1 - 0.15 / height, va="top")
    return fig


LOSS_NAMES = {"bce": "BCE loss", "focal": "focal loss", "asl": "asymmetric loss (ASL)"}


def curves(history: list[dict], title: str = "", loss: str = "bce"):
    """Loss (train vs val) and val mAP per epoch, side by side; ``loss``: the loss.name the run used."""
    fig, (ax_loss, ax_map) = figure(1, 2, figsize=(10, 4))
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
        integer_epochs(ax)
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
    fig, ax = figure(figsize=(8, height))
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


def pr_curves(probs, targets, classes: list[str], title: str = "precision-recall (val, best epoch)"):
    """One precision-recall step curve per class, with its AP and support in the legend, in distinct colours (and line
    styles past ten classes);
    classes without a validation positive have no curve (and say so in the legend's title). Unknown labels (-1) are
    left out of each class's curve."""
    import textwrap

    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    from mlabel_exp.metrics.scores import ignored, per_class_ap, positives

    fig, ax = figure(figsize=(10, 6.5))
    targets = targets.int()
    precision, recall, _ = multilabel_precision_recall_curve(probs.float(), targets, num_labels=len(classes),
                                                             ignore_index=ignored(targets))
    ap = per_class_ap(probs.float(), targets)
    support = positives(targets).tolist()
    without = [name for c, name in enumerate(classes) if support[c] == 0]
    order = sorted((c for c in range(len(classes)) if classes[c] not in without), key=lambda c: -float(ap[c]))
    for i, c in enumerate(order):
        # a colour of its own among ten distinct ones; past ten, the colours repeat with another line style
        ax.step(recall[c].numpy(), precision[c].numpy(), where="post", color=QUALITATIVE[i % len(QUALITATIVE)],
                linestyle=DASHES[i // len(QUALITATIVE) % len(DASHES)], linewidth=1.4,
                label=f"{classes[c]}  AP {float(ap[c]):.2f}  ({support[c]})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    legend_title = "class, AP (validation positives)" + (f"\nno positive: {', '.join(without)}" if without else "")
    wrapped = "\n".join(textwrap.fill(line, 40) for line in legend_title.split("\n"))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title=wrapped, title_fontsize=8)
    fig.tight_layout()
    return fig
