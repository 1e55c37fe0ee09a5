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
