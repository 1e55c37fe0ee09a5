"""Matplotlib figures for runs; returned (never shown) so callers log or save them."""

from __future__ import annotations


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def curves(history: list[dict], title: str = ""):
    """Loss (train vs val) and val mAP per epoch, side by side."""
    fig, (ax_loss, ax_map) = _figure(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train/loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val/loss"] for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    ax_loss.legend()
    ax_map.plot(epochs, [h["val/mAP"] for h in history], "o-", color="C2", label="val mAP")
    ax_map.plot(epochs, [h["val/f1_micro"] for h in history], "s--", color="C3", label="val F1 micro @0.5")
    ax_map.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    ax_map.legend()
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_class_bars(table, title: str = "per-class AP"):
    """Horizontal bars of per-class AP, with each class's validation support in the label."""
    fig, ax = _figure(figsize=(7, 0.35 * len(table) + 1.2))
    labels = [f"{c} ({s})" for c, s in zip(table["class"], table["support"])]
    ax.barh(labels, table["AP"], color="C0")
    ax.set(xlim=(0, 1), xlabel="average precision", title=title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
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
        style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[i // 10 % 4], marker="o", markersize=3)
        for ax, (key, _, _) in zip(axes, _CURVE_PANELS):
            points = history.get(key) or []
            if points:
                ax.plot(*zip(*points), **style)
        handles.append(Line2D([], [], **style))
    for ax, (_, name, ylabel) in zip(axes, _CURVE_PANELS):
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 1)
    fig.legend(handles, list(histories), loc="lower center", ncol=min(3, max(1, len(histories))),
               fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return fig


def per_class_heatmap(ap, title: str = "per-class AP (val, best epoch)"):
    """Runs x classes heatmap of AP; ``ap`` is a DataFrame indexed by run label with one column per class."""
    import numpy as np

    n_runs, n_classes = ap.shape
    fig, ax = _figure(figsize=(max(6.0, 0.55 * n_classes + 4), 0.4 * n_runs + 2.4))
    values = np.ma.masked_invalid(ap.to_numpy(dtype=float))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_classes), [str(c) for c in ap.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_runs), [str(r) for r in ap.index])
    if n_runs * n_classes <= 600:
        for (r, c), v in np.ndenumerate(ap.to_numpy(dtype=float)):
            if v == v:  # not NaN
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    fig.colorbar(image, ax=ax, label="AP")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def regularisation(table, x_columns: list[str], group_columns: list[str], score: str = "best_val_mAP"):
    """``score`` against each of ``x_columns`` (one panel each); runs equal in ``group_columns`` are joined."""
    fig, axes = _figure(1, len(x_columns), figsize=(6 * len(x_columns), 4.5), squeeze=False)
    for ax, x in zip(axes[0], x_columns):
        by = [c for c in group_columns if c != x]
        groups = table.groupby(by, dropna=False, sort=True) if by else [((), table)]
        for i, (key, group) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}" for c, v in zip(by, key))
            g = group.sort_values(x)
            ax.plot(g[x], g[score], "o-", color=f"C{i % 10}", label=label or "all runs")
        positive = table[x][table[x] > 0]
        if len(positive) and positive.max() / positive.min() >= 10:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set(xlabel=x, ylabel=score.replace("_", " "), title=f"{score.replace('_', ' ')} against {x}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def pr_curves(probs, targets, classes: list[str], title: str = "precision-recall (val, best epoch)"):
    """One precision-recall curve per class (classes without a validation positive are left out)."""
    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    fig, ax = _figure(figsize=(7, 6))
    targets = targets.int()
    precision, recall, _ = multilabel_precision_recall_curve(probs.float(), targets, num_labels=len(classes))
    for c, name in enumerate(classes):
        if int(targets[:, c].sum()) == 0:
            continue
        ax.plot(recall[c].numpy(), precision[c].numpy(), label=f"{name} ({int(targets[:, c].sum())})",
                color=f"C{c % 10}", linestyle="-" if c < 10 else "--")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    return fig
