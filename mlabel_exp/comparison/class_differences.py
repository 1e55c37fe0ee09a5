"""Where one group of runs beats another, class by class, and on which images: ``compare``'s per-class view.

A comparison's mAP says which group wins on average; a researcher choosing a model also wants the classes it wins
or loses (``class_differences``: per class, each group's seed-mean AP minus the best group's, with a paired bootstrap
interval over the shared evaluation images, ``stats.class_ap_differences``) and the images the two leading groups
disagree on most (``disagreements``: the largest |p_best - p_runner_up| on some class). A class with fewer than
MIN_POSITIVES known positives among the images gets no "wins" or "loses": its AP moves by a large step with one image,
and an interval drawn from so few positives is not to be trusted.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mlabel_exp.comparison.paired import PredictionFiles, paired_inputs
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.metrics import stats
from mlabel_exp.render.figures import class_rows_height, clip, figure, save

if TYPE_CHECKING:
    import pandas as pd

    from mlabel_exp.comparison.groups import Groups

COLUMNS = ["class", "group", "versus", "versus_AP", "difference", "low", "high", "positives", "verdict"]
#: Known positives a class needs among the evaluation images before a group is said to win or lose it.
MIN_POSITIVES = 5
WINS, LOSSES, UNDECIDED = "#0072B2", "#D55E00", "0.55"  # blue / vermillion: told apart by colour-blind readers too
MAX_PANELS = 6         # groups drawn beside the best in class_differences.png (the closest to it)
DISAGREEMENTS = 12     # images in disagreements.png


def class_differences(targets: np.ndarray, group_probs: dict[str, Sequence[np.ndarray]], classes: Sequence[str], *,
                      n_resamples: int = stats.DEFAULT_RESAMPLES, confidence: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """One row per (class, group other than the first): the group's seed-mean AP minus the first (best) group's on
    the same images, the paired bootstrap interval (``stats.class_ap_differences``), the class's known positives and
    the verdict (``class_verdict``). ``targets``: N x C, 1 positive, 0 negative, -1 unknown (left out of that
    class)."""
    import pandas as pd

    names = list(group_probs)
    result = stats.class_ap_differences(targets, [group_probs[n] for n in names], reference=0,
                                        n_resamples=n_resamples, confidence=confidence, seed=seed)
    positives = [int(k) for k in (np.asarray(targets) == 1).sum(0)]
    rows = [{"class": c, "group": name, "versus": names[0], "versus_AP": result.reference_ap[j],
             "difference": result.difference[g, j],
             "low": result.low[g, j], "high": result.high[g, j], "positives": positives[j],
             "verdict": class_verdict(result.difference[g, j], result.low[g, j], result.high[g, j], positives[j])}
            for g, name in enumerate(names) if g > 0 for j, c in enumerate(classes)]
    return pd.DataFrame(rows, columns=COLUMNS)


def class_verdict(difference: float, low: float, high: float, positives: int) -> str:
    """wins (the interval above 0), loses (below), not distinguishable; or no verdict: no positive, or fewer than
    MIN_POSITIVES."""
    if difference != difference:
        return "no positive"
    if positives < MIN_POSITIVES:
        return f"cannot tell ({positives} positive{'' if positives == 1 else 's'}, fewer than {MIN_POSITIVES})"
    return "wins" if low > 0 else "loses" if high < 0 else "not distinguishable"


def disagreements(probs_a: np.ndarray, probs_b: np.ndarray, k: int = DISAGREEMENTS) -> list[tuple[int, int]]:
    """(image, class) of the ``k`` images where two models' probabilities differ most on some class, largest first
    (ties: the earlier image); each image once, at its class of largest |p_a - p_b|."""
    gap = np.abs(np.asarray(probs_a, dtype=np.float64) - np.asarray(probs_b, dtype=np.float64))
    worst_class = gap.argmax(1)
    order = np.argsort(-gap.max(1), kind="stable")[:k]
    return [(int(i), int(worst_class[i])) for i in order]


# ------------------------------------------------------------------ figures

def _verdict_colour(verdict: str) -> str:
    return WINS if verdict == "wins" else LOSSES if verdict == "loses" else UNDECIDED


def class_differences_figure(frame: pd.DataFrame, n_images: int, title: str = ""):
    """One panel per group (the MAX_PANELS closest to the best): per class, the AP difference from the best group as
    a dot with its interval, blue where the interval lies above 0 (the group wins that class), vermillion below
    (loses), grey where it spans 0 or the class has too few positives for a verdict (a hollow dot)."""
    names = list(dict.fromkeys(frame["group"]))[:MAX_PANELS]
    classes = list(dict.fromkeys(frame["class"]))
    width = max(7.5, 1.5 + 3.6 * len(names))
    fig, axes = figure(1, len(names), figsize=(width, class_rows_height(len(classes)) + 1.0), sharey=True,
                        squeeze=False, layout="constrained")
    y = np.arange(len(classes))
    finite = frame[["low", "high", "difference"]].to_numpy(dtype=float)
    span = np.nanmax(np.abs(finite)) if np.isfinite(finite).any() else 0.1
    for ax, name in zip(axes[0], names):
        rows = frame[frame["group"] == name].set_index("class").loc[classes]
        wins = losses = 0
        for i, r in enumerate(rows.itertuples()):
            if r.difference != r.difference:  # NaN: no positive of this class among the images
                ax.text(0, i, "no positive", ha="center", va="center", fontsize=8, color="0.4")
                continue
            colour = _verdict_colour(r.verdict)
            wins, losses = wins + (colour == WINS), losses + (colour == LOSSES)
            if r.low == r.low:
                ax.plot([r.low, r.high], [i, i], color=colour, lw=2.5, solid_capstyle="butt")
            few = r.verdict.startswith("cannot tell")
            ax.plot([r.difference], [i], "o", color=colour, ms=6, mfc="white" if few else colour)
        ax.axvline(0, color="k", lw=1)
        ax.set_xlim(-span * 1.1, span * 1.1)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{textwrap.shorten(name, 60, placeholder=' ...')}\nwins {wins}, loses {losses} "
                     f"of {len(classes)} classes", fontsize=9, wrap=True)
        ax.set_xlabel("AP minus the best group's", fontsize=9)
    positives = frame.drop_duplicates("class").set_index("class")["positives"]
    axes[0][0].set_yticks(y, [f"{c} ({positives[c]})" for c in classes], fontsize=9)
    axes[0][0].set_ylim(len(classes) - 0.5, -0.5)  # first class on top, whole rows at both ends
    versus = frame["versus"].iloc[0] if len(frame) else ""
    lines = [title, f"per-class AP difference from the best group: {versus}",
             f"bar: 95% paired bootstrap interval over {n_images} images; blue: wins, vermillion: loses, "
             f"grey: the interval spans 0; hollow: fewer than {MIN_POSITIVES} positives (in brackets), no verdict"]
    fig.suptitle("\n".join(textwrap.fill(line, int(width * 13)) for line in lines if line), fontsize=9)
    return fig


def _thumbnail(path: Path | None, size: int = 192):
    from PIL import Image

    from mlabel_exp.data.images import load_image

    if path is None:
        return None
    try:
        image = load_image(path)
    except Exception:  # noqa: BLE001 - a moved or unreadable image costs its thumbnail, not the figure
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def disagreements_figure(picked: list[tuple[int, int]], files: Sequence[str], paths: Sequence[Path | None],
                         probs_a: np.ndarray, probs_b: np.ndarray, targets: np.ndarray,
                         classes: Sequence[str], names: tuple[str, str], title: str = ""):
    """The ``picked`` (image, class) pairs as thumbnails, four a row, each titled with its file, the class (present,
    absent or unknown), both models' probabilities and the image's true labels (``targets``: 1, 0, -1 unknown);
    ``paths[i]`` None (image not found) shows an empty frame."""
    cols = 4
    n_rows = max(1, -(-len(picked) // cols))
    fig, axes = _figure_grid(n_rows, cols)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, c) in zip(axes.ravel(), picked):
        pixels = _thumbnail(paths[i])
        if pixels is None:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=9, color="0.4",
                    transform=ax.transAxes)
        else:
            ax.imshow(pixels)
        truth = clip(", ".join(n for n, t in zip(classes, targets[i]) if t == 1) or "(none)", 36)
        present = {1: "present", 0: "absent"}.get(int(targets[i, c]), "unknown")
        ax.set_title(f"{clip(files[i], 36, keep='tail')}\n{clip(classes[c], 24)} ({present}): "
                     f"A {probs_a[i, c]:.2f}"
                     f"  B {probs_b[i, c]:.2f}\ntrue: {truth}", fontsize=8.5)
    a, b = (textwrap.shorten(n, 60, placeholder=" ...") for n in names)
    fig.suptitle(f"{title}\nimages the two leading groups disagree on most (largest |A - B| on one class; seed-mean "
                 f"probabilities)\nA = {a} (best)   B = {b} (runner-up)", fontsize=9, y=1 - 0.06 / fig.get_figheight(),
                 va="top")
    return fig


def _figure_grid(n_rows: int, cols: int):
    height = 3.5 * n_rows + 0.9  # 0.9 in: the three-line heading; each row: a thumbnail under its three-line title
    fig, axes = figure(n_rows, cols, figsize=(3.2 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.35 / height, wspace=0.05, hspace=0.55 / 2.95)
    return fig, axes


# ------------------------------------------------------------------ in compare

def image_path(params: dict, file: str) -> Path | None:
    """Where a run's evaluation image ``file`` (a predictions row) lies: under its data.images_dir, the data root's
    images/ folder or the root itself (data.root_resolved); None when none holds it (moved, another machine)."""
    root = params.get("data.root_resolved")
    if not root:
        return None
    root = Path(root)
    images_dir = params.get("data.images_dir")
    folders = ([root / images_dir] if images_dir and images_dir != "None" else []) + [root / "images", root]
    return next((f / file for f in folders if (f / file).is_file()), None)


def for_comparison(uri: str, runs: list[dict], found: Groups, out_dir: Path, title: str,
                   frames=None) -> tuple[dict[str, Path], pd.DataFrame | None, list[str]]:
    """class_differences.csv and .png and disagreements.png of compared groups scored on the same images: (figures,
    the class differences table, the one report.html shows too (its attrs say the split and the image count), notes).
    ``frames``: the runs' prediction files as compare read them."""

    # the groups on the compared data (best first); groups set apart (other data) are never paired with them
    members = {row.group: row.run_ids.split() for row in found.table.itertuples()
               if not str(row.verdict).startswith("set apart")}
    if len(members) < 2:
        return {}, None, []
    compared = {r for ids in members.values() for r in ids}
    frames = frames or PredictionFiles(uri)
    paired = paired_inputs(frames, [r for r in runs if r["run_id"] in compared])
    if isinstance(paired, str):
        return {}, None, [f"class_differences.png and disagreements.png skipped: {paired}"]
    split, targets, probs = paired
    scored = frames.get(next(iter(members.values()))[0], split)
    classes, files = scored.classes, scored.files
    group_probs = {g: [probs[r] for r in ids] for g, ids in members.items()}
    table = class_differences(targets, group_probs, classes)
    write_atomic(out_dir / "class_differences.csv", table.to_csv(index=False))
    where = "test" if split == "test" else "validation"
    table.attrs.update(split=where, n_images=len(targets))
    figures = {"class_differences.png": save(class_differences_figure(table, len(targets), title),
                                              out_dir / "class_differences.png")}
    (a, b), by_id = list(group_probs)[:2], {r["run_id"]: r for r in runs}
    mean_a, mean_b = (np.mean(group_probs[g], axis=0) for g in (a, b))
    picked = disagreements(mean_a, mean_b)
    params = by_id[members[a][0]]["params"]
    paths = {i: image_path(params, files[i]) for i, _ in picked}
    fig = disagreements_figure(picked, files, [paths.get(i) for i in range(len(files))], mean_a, mean_b, targets,
                               classes, (a, b), f"{title} ({where} images)")
    figures["disagreements.png"] = save(fig, out_dir / "disagreements.png", photos=True)  # thumbnails: 256 colours
    missing = sum(p is None for p in paths.values())
    notes = [f"disagreements.png: {missing} of {len(paths)} images not found under the runs' data root"] \
        if missing else []
    return figures, table, notes

