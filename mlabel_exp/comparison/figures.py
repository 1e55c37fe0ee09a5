"""A comparison's figures: every run's curves, per-class AP of every run, the regularisation a sweep varied,
accuracy against cost and each group's interval over seeds; returned (never shown) for the caller to save."""

from __future__ import annotations

from mlabel_exp.render.figures import DASHES, QUALITATIVE, clip, figure

_CURVE_PANELS = (("train/loss", "train loss", "BCE loss"), ("val/loss", "validation loss", "BCE loss"),
                 ("val/mAP", "validation mAP", "mAP"))


def _curve_styles(labels: list[str], groups: dict[str, str] | None) -> tuple[list[dict], list[tuple[dict, str]]]:
    """A line style per run and the legend's entries. With ``groups`` (run label -> group legend line): a colour per
    group, a line style and marker per run within it, one legend entry per group; else a colour per run."""
    if not groups:
        styles = [dict(color=QUALITATIVE[i % len(QUALITATIVE)], linestyle=DASHES[i // len(QUALITATIVE) % len(DASHES)],
                       marker="osD^v<>ph*"[i % 10], markersize=4 + 1.5 * (i % 3)) for i in range(len(labels))]
        return styles, list(zip(styles, labels))
    order = list(dict.fromkeys(groups[label] for label in labels))
    seen: dict[str, int] = {}
    styles = []
    for label in labels:
        g, k = order.index(groups[label]), seen.get(groups[label], 0)
        seen[groups[label]] = k + 1
        styles.append(dict(color=QUALITATIVE[g % len(QUALITATIVE)], linestyle=DASHES[k % len(DASHES)],
                           marker="osD^v<>ph*"[g // len(QUALITATIVE) % 10], markersize=4))
    first: dict[str, dict] = {}  # a group's legend entry: its colour and marker, a solid line
    for label, style in zip(labels, styles):
        first.setdefault(groups[label], {**style, "linestyle": "-"})
    return styles, [(first[g], f"{g} ({seen[g]} run{'s' * (seen[g] > 1)})") for g in order]


def run_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], title: str = "",
               groups: dict[str, str] | None = None):
    """The original project's graph: train loss, val loss and val mAP per epoch, one line per run.

    ``histories``: run label -> metric key -> [(epoch, value), ...]; ``groups``: run label -> its group's legend line
    (a colour per group, a line style per seed run in it, the legend per group); the legend sits under the panels.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    styles, entries = _curve_styles(list(histories), groups)
    legend_h = (0.2 * len(entries) + 0.4) if groups else 0.25 * -(-len(entries) // 3) + 0.3
    height = 4.2 + legend_h
    fig, axes = figure(1, 3, figsize=(15, height))
    for style, history in zip(styles, histories.values()):
        # some transparency and hollow markers: a run identical to another still shows under it
        for ax, (key, _, _) in zip(axes, _CURVE_PANELS):
            points = history.get(key) or []
            if points:
                ax.plot(*zip(*points), alpha=0.85, markerfacecolor="none", **style)
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
    handles = [Line2D([], [], alpha=0.85, markerfacecolor="none", **style) for style, _ in entries]
    fig.legend(handles, [clip(name, 160 if groups else 60) for _, name in entries], loc="lower center",
               ncol=1 if groups else min(3, max(1, len(entries))), fontsize="small", frameon=False,
               title="colour: group; line style: each of its runs" if groups else None, title_fontsize="small")
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
    fig, ax = figure(figsize=(max(6.0, 0.6 * n_classes + 4), 0.4 * n_runs + 2.8))
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
    from mlabel_exp.metrics.stats import seed_interval

    fig, axes = figure(1, len(x_columns), figsize=(6 * len(x_columns), 4.5), squeeze=False)
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


def cost(frame, title: str = "accuracy against inference cost", labels: dict[str, str] | None = None):
    """Mean best val mAP (95% t-interval where 2+ seeds) of each group against the inference time per image of its
    best run, one marker per group, named beside it (after its short label in ``labels``: group -> label).
    ``frame``: group, mean, ci_low, ci_high, ms_per_image, model."""
    import textwrap

    fig, ax = figure(figsize=(9, 5.5))
    markers = "oDs^v<>ph*"
    for i, row in enumerate(frame.itertuples(index=False)):
        colour = QUALITATIVE[i % len(QUALITATIVE)]
        name = f"{labels[row.group]}: {row.group}" if labels and row.group in labels else str(row.group)
        if row.ci_low is not None and row.ci_low == row.ci_low:
            ax.plot([row.ms_per_image] * 2, [row.ci_low, row.ci_high], color=colour, lw=2.5, alpha=0.6)
        ax.plot([row.ms_per_image], [row.mean], markers[i // len(QUALITATIVE) % 10], color=colour, ms=8,
                label=textwrap.shorten(name, 60, placeholder=" ..."))
        ax.annotate(textwrap.shorten(name, 28, placeholder="..."), (row.ms_per_image, row.mean),
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


def group_intervals(groups, title: str = "", objective: str = "best val mAP", labels: list[str] | None = None):
    """Each group's mean over seeds with its 95% t-interval, every seed run as a dot, and the verdict beside it; best
    group on top. ``groups``: groups.COLUMNS rows (a DataFrame), best first; ``labels``: their short labels (the
    console's), put before each name. The title is wrapped to the figure's width, centred on it."""
    import textwrap

    n = len(groups)
    lines = [wrapped for line in title.splitlines() for wrapped in textwrap.wrap(line, 125) or [""]]
    fig, ax = figure(figsize=(10, 1.4 + 0.5 * n + 0.17 * len(lines)))
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
    named = [f"{label}: {g}" for label, g in zip(labels, groups["group"])] if labels else list(groups["group"])
    names = [textwrap.shorten(g, 80, placeholder=" ...") for g in reversed(named)]
    ax.set_yticks(range(n), [textwrap.fill(g, 42) for g in names], fontsize=8)  # long names: two lines at most
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(*_interval_axis(groups))
    low, high = ax.get_xlim()
    scale = "full scale" if (low, high) == (0, 1) else f"axis {low:.2f}-{high:.2f}, zoomed to the intervals"
    folds = "unit" in groups and str(groups["unit"].iloc[0]).startswith("fold")  # fold groups: a value a fold
    what = ("mean over folds; bar: 95% corrected t-interval; circles: folds (seeds averaged)" if folds else
            "mean over seeds; bar: 95% t-interval; circles: seed runs")
    ax.set_xlabel(f"{objective} ({scale})\ndiamond: {what}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    if lines:
        fig.suptitle("\n".join(lines), fontsize=9)
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
