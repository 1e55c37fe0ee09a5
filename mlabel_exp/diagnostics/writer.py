"""The diagnostics pass: from a run's prediction files (validation, and test when present) to the files of
``<run output>/diagnostics/`` (figures, tables, index.json) and the summary metrics (``<split>/ece``,
``<split>/brier``). The same pass runs at the end of training and in ``python -m mlabel_exp.diagnose``."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from mlabel_exp.diagnostics import figures as F
from mlabel_exp.diagnostics import measures as D
from mlabel_exp.diagnostics.activation_maps import write_activation_maps
from mlabel_exp.floats import written
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.render.figures import save

log = logging.getLogger(__name__)

FOLDER = "diagnostics"
SPLITS = ("val", "test")
THUMBNAIL_PX = 200


def image_locator(image_dir: Path, files: list[str]):
    """name -> the image's path, for the names prediction files use (a file's path below the image folder, or its
    bare name where that is unique); None for a name not in the data set."""
    by_name = {f: Path(image_dir) / f for f in files}
    bare: dict[str, list[str]] = {}
    for f in files:
        bare.setdefault(Path(f).name, []).append(f)
    for name, found in bare.items():
        if len(found) == 1:
            by_name.setdefault(name, Path(image_dir) / found[0])
    return by_name.get


def label_lookup(files: list[str], labels: np.ndarray):
    """name -> its label row in the data set (with unknowns) or None, keyed as ``image_locator``."""
    row_of = {f: r for r, f in enumerate(files)}
    bare: dict[str, list[int]] = {}
    for r, f in enumerate(files):
        bare.setdefault(Path(f).name, []).append(r)
    row_of.update({n: rows[0] for n, rows in bare.items() if len(rows) == 1 and n not in row_of})
    return lambda name: labels[row_of[name]] if name in row_of else None


def thumbnail(path: Path | None) -> np.ndarray | None:
    """An RGB thumbnail (longest side THUMBNAIL_PX) of one image; None when it cannot be read here."""
    if path is None:
        return None
    from mlabel_exp.data.images import load_image

    try:
        image = load_image(path)
    except Exception:  # a moved data set, a broken file: the gallery says "not found", the rest is drawn
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return np.asarray(image)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]


def _csv(frame, folder: Path, name: str) -> Path:
    numeric = frame.select_dtypes("float").columns
    frame[numeric] = written(frame[numeric].to_numpy())  # float32 values, as every number the run writes
    return write_atomic(folder / name, frame.to_csv(index=False))


def ap_table(probs: np.ndarray, targets: np.ndarray, classes: list[str], resamples: int):
    """class, support, prevalence, AP and its bootstrap interval (``stats.per_class_ap_intervals``, seed 0) of one
    split's probabilities and labels (-1: unknown): what per_class.csv adds and per_class_ap.png draws."""
    import pandas as pd
    import torch

    from mlabel_exp.metrics.scores import per_class_ap
    from mlabel_exp.metrics.stats import per_class_ap_intervals

    known = (targets >= 0).sum(0)
    support = (targets == 1).sum(0)
    ci = per_class_ap_intervals(probs, targets, n_resamples=resamples)
    # the AP itself as per_class.csv has it (torchmetrics on the float32 probabilities): the same number in every file
    ap = per_class_ap(torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(targets)).numpy()
    table = pd.DataFrame({"class": classes, "support": support, "prevalence": support / np.maximum(known, 1),
                          "AP": ap, "AP low": ci.low, "AP high": ci.high})
    table.attrs["confidence"] = ci.confidence
    return table


def _calibration(ev: D.Evaluation, folder: Path, settings) -> tuple[list[dict], dict[str, float]]:
    import pandas as pd


    cal = D.calibration(ev.probs, ev.targets, settings.bins, settings.min_bin_count)
    positives, known = (ev.targets == 1).sum(0), (ev.targets >= 0).sum(0)
    table = pd.DataFrame({"class": [*ev.classes, "(all classes pooled)"], "positives": [*positives, positives.sum()],
                          "known labels": [*known, known.sum()],
                          "ECE": [*cal.ece, cal.ece_pooled], "Brier": [*cal.brier, cal.brier_pooled]})
    _csv(table, folder, f"calibration_{ev.split}.csv")
    _csv(bins_table(cal, ev.classes), folder, f"reliability_{ev.split}.csv")
    panels = D.panel_classes(ev.targets, settings.min_positives, settings.min_bin_count)
    rule = (f"at least {settings.min_positives} positives and as many negatives, and {2 * settings.min_bin_count} "
            "known labels (two bins)")
    save(F.reliability(cal, ev.classes, panels, positives, known, rule, f"{ev.split}: reliability of P(label), "
                       f"{len(ev.names)} images"), folder / f"reliability_{ev.split}.png")
    entries = [{"title": f"Reliability ({ev.split})", "image": f"reliability_{ev.split}.png",
                "caption": f"Predicted probability against the share of images that hold the class, per bin (ECE's "
                           f"{settings.bins} equal-width bins merged to {settings.min_bin_count} labels or more, with "
                           f"a 95% Wilson interval and the count; numbers: reliability_{ev.split}.csv); {F.PERFECT}. "
                           f"ECE {cal.ece_pooled:.4f} (all labels pooled), Brier {cal.brier_pooled:.4f}."},
               {"title": f"Calibration per class ({ev.split})", "table": f"calibration_{ev.split}.csv",
                "caption": "Expected calibration error (L1, equal-width bins) and Brier score of each class over its "
                           "known labels; the last row pools every label."}]
    return entries, {f"{ev.split}/ece": cal.ece_pooled, f"{ev.split}/brier": cal.brier_pooled}


def bins_table(cal: D.Calibration, classes: list[str]):
    """The bins the reliability diagram draws, pooled first, then each class's: span, labels, mean probability, share
    present and its 95% Wilson interval."""
    import pandas as pd

    frames = [pd.DataFrame({"class": name, "from": b.lower, "to": b.upper, "labels": b.count,
                            "mean probability": b.confidence, "share present": b.positive, "Wilson low": b.low,
                            "Wilson high": b.high})
              for name, b in zip(["(all classes pooled)", *classes], [cal.pooled_bins, *cal.class_bins])]
    return pd.concat(frames, ignore_index=True)


def _confusion(ev: D.Evaluation, folder: Path) -> list[dict]:
    import pandas as pd


    share, n = D.false_positive_given_present(ev.targets, ev.predicted)
    frame = pd.DataFrame(share, columns=ev.classes)
    frame.insert(0, "present \\ predicted although absent", ev.classes)
    _csv(frame, folder, f"confusion_{ev.split}.csv")
    save(F.confusion(ev.classes, D.cooccurrence_counts(ev.targets), share, n,
                     f"{ev.split}: label co-occurrence and model confusion ({len(ev.names)} images)"),
         folder / f"confusion_{ev.split}.png")
    return [{"title": f"Confusion beside co-occurrence ({ev.split})", "image": f"confusion_{ev.split}.png",
             "caption": "Left: how often class j is present when class i is (the labels). Right: how often j is "
                        "predicted when i is present and j is absent (the model's false positives of j given i). "
                        f"Matrix in confusion_{ev.split}.csv."}]


def _ap(ev: D.Evaluation, folder: Path, settings, table=None) -> list[dict]:
    """per_class_ap_<split>.csv and .png; ``table``: ap_table's of these very predictions where the run computed it
    already (per_class.csv's), else computed here."""
    if table is None or list(table["class"]) != list(ev.classes):
        table = ap_table(ev.probs, ev.targets, ev.classes, settings.resamples)
    _csv(table.copy(), folder, f"per_class_ap_{ev.split}.csv")
    save(F.per_class_bars(table, f"{ev.split}: per-class AP, {len(ev.names)} images"),
         folder / f"per_class_ap_{ev.split}.png")
    return [{"title": f"Per-class AP with intervals ({ev.split})", "image": f"per_class_ap_{ev.split}.png",
             "caption": f"AP of each class with a {table.attrs['confidence']:.0%} percentile bootstrap interval over "
                        f"the {len(ev.names)} images ({settings.resamples} resamples); the red mark is the class's "
                        "prevalence, the AP of a random ranking. Numbers: "
                        f"per_class_ap_{ev.split}.csv."}]


def _galleries(ev: D.Evaluation, folder: Path, settings) -> list[dict]:
    earlier = list(folder.glob(f"gallery_{ev.split}_*.png"))  # an earlier pass's: other classes may be chosen now
    D.drop_from_index(folder, {p.name for p in earlier})
    for path in earlier:
        path.unlink()
    predicted, entries = ev.predicted, []
    classes = D.gallery_classes(ev.targets, predicted, settings.gallery_classes)
    errors = D.errors_per_class(ev.targets, predicted)
    for c in classes:
        fp, fn = D.top_errors(ev.probs, ev.targets, predicted, c, settings.gallery_size)
        name = f"gallery_{ev.split}_{c:02d}_{_safe(ev.classes[c])}.png"
        save(F.gallery(ev, c, fp, fn, lambda row: thumbnail(ev.paths[row]), settings.gallery_size), folder / name,
             photos=True)  # thumbnails: 256 colours, drawn and encoded once
        entries.append({"title": f"Errors of {ev.classes[c]} ({ev.split})", "image": name,
                        "caption": f"{int(errors[c])} errors at the threshold {ev.thresholds[c]:.4f}: the most "
                                   "confident false positives (top) and false negatives (bottom), with each image's "
                                   "path, probability, true and predicted labels."})
    return entries


def _temperature(val: D.Evaluation, test: D.Evaluation, folder: Path, settings) -> list[dict]:
    """Temperature scaling fitted on validation, judged on the test split only (validation's own gain would be an
    in-sample fit): test ECE and Brier before and after, in temperature_scaling.csv."""
    import pandas as pd

    t = D.fit_temperature(val.probs, val.targets)
    before = D.calibration(test.probs, test.targets, settings.bins)
    after = D.calibration(D.scaled(test.probs, t), test.targets, settings.bins)
    table = pd.DataFrame({"split": ["test", "test"], "probabilities": ["as trained", f"temperature {t:.4g}"],
                          "temperature": [1.0, t], "ECE": [before.ece_pooled, after.ece_pooled],
                          "Brier": [before.brier_pooled, after.brier_pooled]})
    _csv(table, folder, "temperature_scaling.csv")
    return [{"title": "Temperature scaling (fitted on val, judged on test)", "table": "temperature_scaling.csv",
             "caption": f"One temperature T = {t:.4g} for every class, fitted on validation (minimum cross-entropy "
                        f"of sigmoid(logit(p) / T)); the test split's pooled ECE {before.ece_pooled:.4f} -> "
                        f"{after.ece_pooled:.4f} and Brier {before.brier_pooled:.4f} -> {after.brier_pooled:.4f}. "
                        "The run's predictions and thresholds are unchanged."}]


def write_diagnostics(folder: Path, evaluations: list[D.Evaluation], settings,
                      ap_tables: dict | None = None) -> dict[str, float]:
    """Every figure and table of the ``evaluations`` (one per split) into ``folder``, listed in its index.json;
    returns the summary metrics (``<split>/ece``, ``<split>/brier``). ``settings``: config.DiagnosticsConfig;
    ``ap_tables``: split -> ap_table of the same predictions, computed already (the bootstrap is drawn once)."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    for ev in evaluations:
        started = time.perf_counter()
        entries, figures = _calibration(ev, folder, settings)
        metrics |= figures
        entries += _ap(ev, folder, settings, (ap_tables or {}).get(ev.split)) + _confusion(ev, folder) + \
            _galleries(ev, folder, settings)
        D.add_to_index(folder, entries)
        log.info("diagnostics of %s (%d images) in %.1f s: %s", ev.split, len(ev.names),
                 time.perf_counter() - started, folder)
    splits = {ev.split: ev for ev in evaluations}
    if {"val", "test"} <= set(splits):
        D.add_to_index(folder, _temperature(splits["val"], splits["test"], folder, settings))
    return metrics


def activation_maps(folder: Path, evaluations: list[D.Evaluation], checkpoint: Path | None, settings) -> None:
    """Grad-CAM pages (diagnostics.activation_maps) of the validation set, from the run's best checkpoint: for the
    classes with the most errors (``settings.activation_map_classes``), their most confident true positives, false
    positives and false negatives (``settings.activation_maps`` of each); listed in index.json after the other
    diagnostics. Nothing when the settings, the checkpoint or the images are missing (only the images shown are read)."""
    import torch

    from mlabel_exp.inference.predictor import Predictor

    val = next((ev for ev in evaluations if ev.split == "val"), None)
    if not settings.activation_maps or val is None or checkpoint is None or not checkpoint.is_file():
        return
    found = [r for r, p in enumerate(val.paths) if p is not None]
    if not found:
        log.warning("activation maps skipped: the validation images are not on this machine")
        return
    predictor = Predictor.from_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=False))
    entries = write_activation_maps(folder / "activation_maps", predictor, [val.paths[r] for r in found],
                                    val.probs[found], val.thresholds, val.classes, settings.activation_maps,
                                    targets=val.targets[found], names=[val.names[r] for r in found],
                                    pages=settings.activation_map_classes, relative_to=folder)
    D.add_to_index(folder, entries)


def read_evaluations(predictions: Path, image_of=None, labels_of=None) -> list[D.Evaluation]:
    """The Evaluations of the splits whose prediction files ``predictions/`` holds (val, test)."""
    return [D.read_predictions(predictions / f"{split}.json", split, image_of, labels_of)
            for split in SPLITS if (predictions / f"{split}.json").is_file()]
