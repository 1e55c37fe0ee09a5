"""What a training run records: its settings and inputs at the start, its results, figures, predictions and data
problems at the end, and how it ends (FINISHED, KILLED on a stop or a pruned trial, FAILED on an error)."""

from __future__ import annotations

import json
import logging
import traceback
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlabel_exp.config import FORMAT_SETTINGS, Config, dataset_name
from mlabel_exp.diagnostics import figures as plots
from mlabel_exp.diagnostics import writer as P
from mlabel_exp.diagnostics.report import write_run_report
from mlabel_exp.diagnostics.writer import ap_table
from mlabel_exp.errors import UserError
from mlabel_exp.experiment.resume import length_params
from mlabel_exp.floats import as_threshold, written
from mlabel_exp.fsutil import share_bytes, write_atomic
from mlabel_exp.inference.outputs import write_predictions
from mlabel_exp.render.figures import save
from mlabel_exp.render.shell import module_command, override
from mlabel_exp.runtime import distributed
from mlabel_exp.tracking import registry
from mlabel_exp.tracking.runs import BEST_SCORE, NullTracker, flatten
from mlabel_exp.tracking.sweeps import sweep_parent, swept
from mlabel_exp.training.callbacks import TrainingInterrupted, TrialPruned
from mlabel_exp.training.stop import stop_on_signals

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ start of a run

def run_params(cfg: DictConfig, typed: Config, facts: dict, cuda: bool = False) -> dict:
    """The settings in effect, once each, and ``facts`` of this run. Left out: settings that do not apply (the focal
    loss's gamma with BCE, a step schedule's gamma with none, inception's aux head elsewhere, AMP on the CPU, ...),
    the regularisation as typed (a preset name or 'model') and the model's recommendation, both replaced by the
    value in effect (``dropout_value``, ``weight_decay_value``), and where things are written (tracking, output)."""
    from mlabel_exp.models.backbones import backbone

    t, d, o = typed.trainer, typed.data, typed.optimizer
    loss_keys = {"bce": ("pos_weight", "pos_weight_max") if typed.loss.pos_weight != "none" else ("pos_weight",),
                 "focal": ("focal_alpha", "focal_gamma"), "asl": ("asl_gamma_neg", "asl_gamma_pos", "asl_clip")}
    schedule_keys = {"step": ("step_size", "gamma", "warmup_epochs"), "cosine": ("min_lr_scale", "warmup_epochs"),
                     "none": ("warmup_epochs",), "onecycle": ()}[t.scheduler.name]
    applies = {
        "loss.": lambda k: k in ("name", *loss_keys[typed.loss.name]),
        "trainer.scheduler.": lambda k: k == "name" or k in schedule_keys,
        "optimizer.": lambda k: k not in ("momentum", "nesterov", "betas") or
        (k in ("momentum", "nesterov")) == (o.name == "sgd"),
        "model.": lambda k: k not in ("dropout", "weight_decay") and
        (k not in ("aux_logits", "aux_weight") or (typed.model.source == "builtin" and
                                                   backbone(typed.model.name).aux_classifier is not None)) and
        (k != "hidden" or typed.model.source == "builtin"),
        "data.synthetic.": lambda k: d.name == "synthetic",
        "data.": lambda k: (k in FORMAT_SETTINGS.get(d.name, ()) or
                            all(k not in keys for keys in FORMAT_SETTINGS.values())) and
        (k != "crop_scale_min" or d.random_resized_crop) and (k != "repeat_threshold" or d.sampler == "repeat_factor")
        and (k not in ("folds", "fold") or d.folds > 0) and (k != "val_fraction" or d.folds == 0),
        "trainer.": lambda k: k != "amp_dtype" or cuda,  # amp also applies on the CPU (bfloat16 where native)
    }
    skipped = ("presets.", "tracking.", "diagnostics.", "resume", "dropout", "weight_decay", "trainer.output_dir", "trainer.progress",
               "trainer.log_every_steps", "data.cache_dir", "data.verify_images")
    params = {}
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        if key.startswith(skipped):
            continue
        prefix = max((p for p in applies if key.startswith(p)), key=len, default=None)
        if prefix is None or applies[prefix](key[len(prefix):]):
            params[key] = value
    return {**params, "dropout_value": typed.dropout, "weight_decay_value": typed.weight_decay, **facts}


def run_facts(index, split, *, weights: str, device, precision: str, workers: int, cache,
              ema_decay: float | None = None) -> dict:
    """What this run used, beyond its settings: weights, device, data counts, the classes validation cannot score
    (no known positive), and, only where the data set has any, the number of unknown labels (``data.unknown_labels``;
    per class and split in unknown_labels.json); with trainer.ema, the decay per step in effect."""
    without = [c for c, n in zip(index.classes, (index.labels[split["val"]] == 1).sum(0)) if n == 0]
    unknown = unknown_label_counts(index, split)
    return {"model.weights_used": weights, "device": str(device), "precision": precision,
            "data.root_resolved": str(index.root), "data.num_images": len(index), "data.num_train": len(split["train"]), "data.num_val": len(split["val"]),
            "data.num_test": len(split.get("test", ())), "data.num_workers_used": workers,
            "data.decoded_cache_used": cache is not None, "world_size": distributed.world_size(),
            # left out of mAP and of every macro average (no validation positive)
            "metrics.classes_left_out": f"{len(without)}: {', '.join(without)}" if without else "0",
            **({"data.unknown_labels": unknown["total"]} if unknown else {}),
            **({"trainer.ema_decay_used": ema_decay} if ema_decay is not None else {})}


def unknown_label_counts(index, split) -> dict | None:
    """How many labels are unknown (-1): in all, per class, and per class in each split (what unknown_labels.json
    holds); None when every label is known (a run on such data records nothing about them)."""
    import numpy as np

    unknown = np.asarray(index.labels) < 0
    if not unknown.any():
        return None

    def per_class(rows) -> dict[str, int]:
        return {c: int(n) for c, n in zip(index.classes, unknown[rows].sum(0))}

    return {"total": int(unknown.sum()), "per_class": per_class(slice(None)),
            "per_split": {part: per_class(rows) for part, rows in split.items()}}


def images_used(split, trainer_cfg) -> str:
    """'N train / M val images', saying so when trainer.max_steps_per_epoch uses only some of them."""
    n_train, n_val = len(split["train"]), len(split["val"])
    steps = trainer_cfg.max_steps_per_epoch
    if not steps:
        return f"{n_train} train / {n_val} val images"
    cap = steps * trainer_cfg.batch_size
    return (f"{min(n_train, cap)} of {n_train} train / {min(n_val, cap)} of {n_val} val images an epoch "
            f"(trainer.max_steps_per_epoch={steps})")


def dataset_digests(index, split, content) -> dict[str, str]:
    """Per split, as MLflow dataset contexts (train, validation, test): a digest of its classes, image ids, labels and
    file content (``content``: image_cache.content_hashes), so that two runs on different data (other pixels too), or
    on another split of it (another fold), show different datasets in the UI."""
    digests = {}
    for part, context in (("train", "train"), ("val", "validation"), ("test", "test")):
        rows = split.get(part)
        if rows is None or len(rows) == 0:
            continue
        digests[context] = _digest(index, rows, content)
    return digests


def fold_set_digest(index, split, content) -> str:
    """The digest of the images the folds cut (train and validation together: the same for every fold of one data set
    and test split); with data.folds and data.split_seed (which fix the folds) the ``data.fold_set`` tag of a fold
    run, which compare groups a setting's folds by and pairs folds within."""
    import numpy as np

    return _digest(index, np.sort(np.concatenate([split["train"], split["val"]])), content)


def _digest(index, rows, content) -> str:
    import hashlib

    import numpy as np

    h = hashlib.sha256("\n".join(index.classes).encode())
    h.update(np.asarray(index.ids[rows], dtype=np.int64).tobytes())
    # the labels' int8 bytes (an unknown -1 as 255): a change of unknowns changes the digest, 0/1 labels keep theirs
    h.update(np.ascontiguousarray(np.asarray(index.labels[rows]).astype(np.int8)).view(np.uint8).tobytes())
    h.update(np.ascontiguousarray(content[rows], dtype=np.uint8).tobytes())
    return h.hexdigest()[:10]


def start(tracker, cfg: DictConfig, identity, out: Path, index, split, content, params: dict, tags: dict,
          resume: dict | None):
    """Continue the ``resume``d run (with the param of a changed length), or start one (a child of its sweep's parent)
    with what defines it: settings, data (MLflow datasets, one per split; ``content``: the files' hashes), config and
    split files."""
    if isinstance(tracker, NullTracker):  # nothing recorded: no parent run to find, no digest to compute
        return
    if resume:

        tracker.attach(resume["run_id"], length_params(resume["last"], cfg.trainer.epochs))
        return
    run_name, run_tags = identity
    if "sweep_id" in run_tags:  # every job of a -m sweep is a child of the sweep's one parent run
        name = " ".join(swept(Path(run_tags["sweep_dir"]))) or None  # named by what it varies
        run_tags["mlflow.parentRunId"] = sweep_parent(tracker, run_tags["sweep_id"], run_tags["sweep_dir"], name)
    if cfg.data.folds:  # what compare groups a setting's folds by (their validation images differ)
        tags = {**tags, "data.fold_set": f"{fold_set_digest(index, split, content)}:{cfg.data.folds}:"
                f"{cfg.data.split_seed}"}
    tracker.start(run_name, {**run_tags, **tags, "output_dir": str(out)}, params)
    tracker.log_datasets(dataset_name(cfg.data), index.root, dataset_digests(index, split, content))
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")  # at the start: a killed run has it too
    tracker.log_text(json.dumps(index.classes, indent=1), "classes.json")
    if index.meta:  # what the format knows beyond the labels (COCO: category_ids {name: id}); absent otherwise
        tracker.log_text(json.dumps(index.meta, indent=1), "data_meta.json")
    unknown = unknown_label_counts(index, split)
    if unknown:  # only data with unknown labels: the record of a run on fully labelled data is what it always was
        log.info("%d unknown label(s) (per class in unknown_labels.json): masked out of the loss and every metric",
                 unknown["total"])
        write_atomic(out / "unknown_labels.json", json.dumps(unknown, indent=1))
        tracker.log_artifact(out / "unknown_labels.json")
    tracker.log_artifact(out / "split.json")
    if (out / ".hydra").is_dir():
        tracker.log_artifacts(out / ".hydra", "hydra")


# ------------------------------------------------------------------ end of a run

def log_results(tracker, cfg: Config, out: Path, classes: list[str], result, test=None, index=None,
                tta: dict | None = None) -> dict[str, dict]:
    """Curves, tuned thresholds, per-class table and figures, validation (and test) predictions and metrics, their
    diagnostics (``index``: the data set, where the galleries find the images), the best weights (in the model, once).
    ``test``: (probs, targets, loss, names) of the test split from the best epoch's weights; ``tta``: the same of
    trainer.tta's final evaluation, per split. Returns the held-out figures (test split, out-of-fold tuned F1, TTA)
    for the closing lines."""

    fig = plots.curves(result.history, title=f"{cfg.model.name}: best val mAP {result.best_score:.3f}", loss=cfg.loss.name)
    tracker.log_artifact(save(fig, out / "curves.png"))
    if result.best_probs is None:
        return {}
    (out / "summary.json").unlink(missing_ok=True)  # this run's single figures only (a resumed run rewrites them)
    tuned, scores, ap = _log_thresholds(tracker, cfg, out, classes, result)
    held_out = {"tuned": {"F1 micro": scores["f1_micro"], "F1 macro": scores["f1_macro"]}}
    for path in write_predictions(out / "predictions", "val", result.best_names, result.best_probs, classes,
                                  tuned.numpy(), targets=result.best_targets):
        tracker.log_artifact(path, "predictions")
    if test is not None:
        held_out["test"] = _log_test(tracker, out, classes, test, tuned, result.best_epoch)
    held_out.update(_log_tta(tracker, out, classes, tta or {}, tuned, result.best_epoch))
    if cfg.diagnostics.enabled:
        log_diagnostics(tracker, cfg.diagnostics, out, index, result.best_epoch, {"val": ap})
    if "best" in result.checkpoints:
        _log_checkpoints(tracker, cfg, result.checkpoints, classes)
    log_report(tracker, cfg, out, result)
    return held_out


def log_report(tracker, cfg: Config, out: Path, result) -> None:
    """report.html (analysis.run_report): the run's figures and tables on one page, from its output folder; the best
    epoch's validation mAP joins summary.json first, so that the page and the file say the same."""
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary["val"] = {"mAP": result.best_score, "best_epoch": result.best_epoch, "epochs": len(result.history),
                      "weights": result.best_weights}
    write_atomic(path, json.dumps(summary, indent=1))
    tracker.log_artifact(path)
    name = f"run {tracker.run_id[:8]}" if tracker.run_id else out.name
    tracker.log_artifact(write_run_report(out, f"{cfg.model.name}: {name}"))


def log_diagnostics(tracker, settings, out: Path, index, step: int, ap_tables: dict | None = None) -> None:
    """diagnostics/ from the prediction files just written (what ``python -m mlabel_exp.diagnose`` recomputes), logged
    under diagnostics/, with ``<split>/ece`` and ``<split>/brier`` at the best epoch; ``ap_tables``: per split, the
    per-class AP table (bootstrap intervals) already computed for per_class.csv, drawn again rather than resampled. A
    failure here costs the run its diagnostics, not its results: it is logged, tagged and left to the diagnose
    command."""

    image_of = labels_of = None
    if index is not None:
        image_of, labels_of = P.image_locator(index.image_dir, index.files), P.label_lookup(index.files, index.labels)
    try:
        evaluations = P.read_evaluations(out / "predictions", image_of, labels_of)
        metrics = P.write_diagnostics(out / P.FOLDER, evaluations, settings, ap_tables)
        P.activation_maps(out / P.FOLDER, evaluations, out / "checkpoints" / "best.pt", settings)
    except Exception as e:  # noqa: BLE001 - reported, and the diagnose command can redo it
        log.warning("diagnostics failed (%s: %s); %s writes them again", type(e).__name__, e,
                    module_command("diagnose", override("run", tracker.run_id)) if tracker.run_id else
                    "python -m mlabel_exp.diagnose run=<run id>")
        tracker.set_tags({"diagnostics_error": f"{type(e).__name__}: {e}"[:500]})
        return
    tracker.log_metrics(metrics, step=step)
    tracker.log_artifacts(out / P.FOLDER, P.FOLDER)


def _log_checkpoints(tracker, cfg: Config, checkpoints: dict[str, Path], classes: list[str]) -> None:
    """The best weights once: inside the pyfunc model (tracking.log_model), else as checkpoints/best.pt;
    tracking.log_checkpoints=all adds last.pt (the resumable state), none logs no weights. Where the store keeps its
    artifacts on this disk, the output folder's file then shares the stored copy's bytes (a hard link): each checkpoint
    sits on disk once, and checkpoint=<output folder>/checkpoints/best.pt still works."""
    t, best = cfg.tracking, checkpoints["best"]
    stored = {}
    if t.log_model:
        model_uri = tracker.log_model(best, classes, cfg.model.input_size, timm=cfg.model.source == "timm")
        stored[best] = tracker.stored_file(f"artifacts/{best.name}", in_model=True)
        if t.register and model_uri is not None:  # None: nothing recorded (NullTracker)
            _register(tracker, model_uri, t.register)
    elif t.log_checkpoints != "none":
        tracker.log_artifact(best, "checkpoints")
        stored[best] = tracker.stored_file(f"checkpoints/{best.name}")
    if t.log_checkpoints == "all" and "last" in checkpoints:
        tracker.log_artifact(checkpoints["last"], "checkpoints")
        stored[checkpoints["last"]] = tracker.stored_file(f"checkpoints/{checkpoints['last'].name}")
    for local, copy in stored.items():
        if copy is not None and not share_bytes(copy, local):
            log.info("%s is also stored in the run at %s (another file system: two copies)", local, copy)


def _register(tracker, model_uri: str, name: str) -> None:
    """A registry that refuses (a store without one, a bad name) costs the run its registration, not its results."""
    try:
        registry.register_model(tracker.uri, model_uri, name)
    except UserError as e:
        log.warning("the model was not registered: %s", e)
        tracker.set_tags({"registration_error": str(e)[:500]})


def _log_test(tracker, out: Path, classes: list[str], test, tuned, step: int) -> dict[str, float]:
    """The held-out estimate: the test split, never seen in training or tuning, at the thresholds tuned on validation."""
    from mlabel_exp.metrics import scores as M

    probs, targets, loss, names = test
    scores = M.compute(probs, targets, tuned, classes)
    _log_summary(tracker, out, "test", scores, step, loss=loss)
    log.info("test split (%d images, best epoch's weights, tuned thresholds): mAP %.4f, F1 micro %.4f, macro %.4f",
             len(probs), scores["mAP"], scores["f1_micro"], scores["f1_macro"])
    for path in write_predictions(out / "predictions", "test", names, probs, classes, tuned.numpy(), targets=targets):
        tracker.log_artifact(path, "predictions")
    return {"mAP": scores["mAP"], "F1 micro": scores["f1_micro"], "F1 macro": scores["f1_macro"]}


def _log_tta(tracker, out: Path, classes: list[str], tta: dict, tuned, step: int) -> dict[str, dict[str, float]]:
    """trainer.tta's figures, beside the plain ones (never in their place): ``val_tta/*`` at 0.5 as val/* per epoch,
    ``test_tta/*`` at the tuned thresholds as test/*."""
    from mlabel_exp.metrics import scores as M

    figures = {}
    for part, (probs, targets, _, _) in tta.items():
        scores = M.compute(probs, targets, tuned if part == "test" else 0.5, classes, quiet=True)
        _log_summary(tracker, out, f"{part}_tta", scores, step)
        figures[f"{part}_tta"] = {"mAP": scores["mAP"], "F1 micro": scores["f1_micro"], "F1 macro": scores["f1_macro"]}
    return figures


SUMMARY_METRICS = ("mAP", "f1_micro", "f1_macro")  # of a single figure set, the few logged as metrics


def _log_summary(tracker, out: Path, part: str, scores: dict[str, float], step: int, **extra: float) -> None:
    """A set of single figures (tuned, test): a few as metrics, all of them in summary.json (a table on the run),
    so that the run's charts show the per-epoch curves rather than a page of one-point charts."""
    shown = {f"{part}/{k}": scores[k] for k in SUMMARY_METRICS if not (part == "tuned" and k == "mAP")}
    tracker.log_metrics(shown | {f"{part}/{k}": v for k, v in extra.items()}, step=step)
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary[part] = {**scores, **extra}
    write_atomic(path, json.dumps(summary, indent=1))
    tracker.log_artifact(path)


def _log_thresholds(tracker, cfg: Config, out: Path, classes: list[str], result):
    """thresholds.json (tuned on the best epoch, also in best.pt), metrics at them, the per-class table and figures;
    returns the tuned thresholds, the figures at them and the per-class AP table with its bootstrap intervals (which
    the diagnostics draw again)."""
    import torch

    from mlabel_exp.metrics import scores as M
    from mlabel_exp.metrics.thresholds import cross_fitted

    probs, targets, thresholds = result.best_probs, result.best_targets, result.thresholds
    # as floats.written (tune_thresholds keeps them so; a run resumed from an older best.pt may not): the same
    # decimals as in the predictions files
    thresholds = {**thresholds, "global": as_threshold(thresholds["global"]),
                  "per_class": [as_threshold(t) for t in thresholds["per_class"]]}
    tuned = torch.tensor(thresholds["per_class"])
    write_atomic(out / "thresholds.json", json.dumps({"classes": classes, **thresholds}, indent=1))
    tracker.log_artifact(out / "thresholds.json")
    # tuned/*: out-of-fold on validation (thresholds tuned on the other folds); in-sample figures would be optimistic
    scores = cross_fitted(probs, targets, classes=classes)  # quiet: validation's classes were named already
    _log_summary(tracker, out, "tuned", scores, result.best_epoch, global_threshold=thresholds["global"])
    table = M.per_class_table(probs, targets, classes, tuned)  # in-sample at the tuned thresholds: say so
    table = table.rename(columns={c: f"{c} (in-sample)" for c in ("F1", "precision", "recall")})
    table.insert(4, "F1@0.5", M.per_class_table(probs, targets, classes)["F1"])
    intervals = ap_table(probs.float().cpu().numpy(), targets.cpu().numpy(), classes, cfg.diagnostics.resamples)
    table.insert(2, "prevalence", intervals["prevalence"])  # class, support, prevalence, AP, AP low, AP high, ...
    table.insert(4, "AP low", intervals["AP low"])
    table.insert(5, "AP high", intervals["AP high"])
    table.attrs["confidence"] = intervals.attrs["confidence"]
    numeric = table.select_dtypes("float").columns  # every one a float32 value: written as the predictions are
    table[numeric] = written(table[numeric].to_numpy())
    write_atomic(out / "per_class.csv", table.to_csv(index=False))
    tracker.log_artifact(out / "per_class.csv")
    title = f"{cfg.model.name}: {{}} (val, best epoch)"
    tracker.log_artifact(save(plots.per_class_bars(table, title.format("per-class AP")), out / "per_class_ap.png"))
    tracker.log_artifact(save(plots.pr_curves(probs, targets, classes, title.format("precision-recall")),
                              out / "pr_curves.png"))
    return tuned, scores, intervals


def log_data_problems(tracker, out: Path, index, bad_images: dict[str, str]) -> None:
    """Counts of skipped images and index problems as tags (single numbers, not one-point charts); the problems
    and the skipped files as an artifact."""
    tracker.set_tags({"data.skipped_images": len(bad_images), "data.index_problems": len(index.problems)})
    if bad_images or index.problems:
        write_atomic(out / "data_problems.json", json.dumps(
            {"index_problems": index.problems, "skipped_images": bad_images}, indent=1))
        tracker.log_artifact(out / "data_problems.json")
        found = [f"{n} {what}" for n, what in ((len(bad_images), "unreadable image(s) skipped"),
                                                (len(index.problems), "data problem(s)")) if n]
        log.warning("%s: see data_problems.json", ", ".join(found))


def finish(tracker, result, held_out: dict[str, dict[str, float]]) -> None:
    """The run's summary figures and its description (MLflow shows ``mlflow.note.content`` on the run page)."""
    stop = ", early stop" if result.stopped_early else ""
    ema = " (the averaged weights, trainer.ema)" if result.best_weights == "ema" else ""
    note = [f"**best val mAP {result.best_score:.4f}**{ema} at epoch {result.best_epoch} of {len(result.history)}{stop}"]
    note += [f"**{part}**: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) for part, scores in held_out.items()]
    tracker.set_tags({"best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                      "best_weights": result.best_weights,  # raw, or ema: trainer.ema's average scored higher
                      "mlflow.note.content": "  \n".join(note) + "  \n(test: the held-out split at thresholds tuned on "
                      "validation; tuned: validation, thresholds tuned out of fold)"})
    tracker.log_metrics({BEST_SCORE: result.best_score, "val/best_epoch": result.best_epoch}, step=result.best_epoch)
    tracker.end("FINISHED")


@contextmanager
def run_status(tracker, stop):
    """Signals become stop requests (``stop``: a training.stop.StopRequest); a stop, a pruned trial or an error ends the
    MLflow run with the matching status. A stopped run exits 128 + signal (SIGUSR2: 140, SIGTERM: 143), after a
    scheduler's own handler had its turn."""
    try:
        with stop_on_signals(stop):
            yield
    except TrialPruned:
        tracker.set_tags({"pruned": "true"})
        tracker.end("KILLED")
        raise
    except TrainingInterrupted as e:
        log.warning("run interrupted: %s", e)
        tracker.set_tags({"preempted": str(stop.preempted).lower()})  # true: the same command continues it
        tracker.end("KILLED")
        stop.hand_over()  # under submitit its own handler now checkpoints the job and requeues it (and exits)
        raise SystemExit(128 + int(stop.signum)) from None
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            tracker.set_tags({"preempted": "false"})
            tracker.end("KILLED")
        else:
            tracker.log_text(traceback.format_exc(), "error/traceback.txt")
            tracker.end("FAILED")
        raise
