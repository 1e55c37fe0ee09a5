"""The main job: ``python -m mlabel_exp.run [overrides]`` trains one model per Hydra job, tracked in MLflow.

``main`` is a thin Hydra wrapper around ``train(cfg)``, which tests and sweepers call directly and
which returns the objective (best validation mAP). Heavy imports (torch, mlflow) happen inside
``train`` so that ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .config import CONF_DIR, Config, ConfigError, project_root, register, resolve_path, validate

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ Hydra context

def _hydra_cfg():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def output_dir_of_job() -> Path:
    """Hydra's job folder, or a fresh outputs/<time> folder when called without Hydra."""
    hc = _hydra_cfg()
    if hc is not None:
        return Path(hc.runtime.output_dir)
    return project_root() / "outputs" / time.strftime("%Y-%m-%d/%H-%M-%S")


def output_dir(cfg: Config) -> Path:
    """trainer.output_dir, else the job's folder."""
    return resolve_path(cfg.trainer.output_dir) if cfg.trainer.output_dir else output_dir_of_job()


def sweep_id_of(sweep_dir: str) -> str:
    """A sweep's id: its output folder, which Hydra makes unique per `-m` invocation."""
    return str(Path(sweep_dir).resolve()).replace("/", "_").strip("_")


def run_identity(cfg: Config, group: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Run name (model + overrides) and the tags that place a run in its sweep (or the given ``group``)."""
    hc = _hydra_cfg()
    overrides = list(hc.overrides.task) if hc is not None else []
    group = dict(group or {})
    overrides += [o for o in group.pop("overrides", "").split() if o]
    shown = [o for o in overrides if not o.startswith(("model=", "tracking.", "hydra"))]
    name = cfg.tracking.run_name or " ".join([cfg.model.name, *shown])
    tags = {"model": cfg.model.name, "overrides": " ".join(overrides) or "(none)"}
    if hc is not None:
        from hydra.types import RunMode

        if hc.mode == RunMode.MULTIRUN:
            tags["sweep_id"] = sweep_id_of(hc.sweep.dir)
            tags["sweep_dir"] = hc.sweep.dir
            tags["job_num"] = str(hc.job.num)
    return name, {**tags, **group}


@contextmanager
def stop_on_signals(event: threading.Event):
    """SIGINT/SIGTERM ask training to stop at the next step boundary; a second Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.signum = signum
        event.set()
        log.warning("%s received: stopping at the next step and writing a checkpoint "
                    "(Ctrl-C again to abort now)", signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ the job

def _resume_point(cfg: DictConfig) -> tuple[DictConfig, dict | None]:
    """For ``resume=...``: the interrupted run's own config and its checkpoints; else (cfg, None)."""
    if not cfg.resume:
        return cfg, None
    import torch

    from . import tracking

    tracker = tracking.open_tracker(validate(cfg).tracking)
    run_id, tags = tracker.find_resumable(cfg.resume)
    folder = Path(tags.get("output_dir", "")) / "checkpoints"
    last = folder / "last.pt"
    if not last.is_file():
        raise ConfigError(f"resume={cfg.resume!r}: run {run_id} has no checkpoint at {last} "
                          "(it stopped before finishing its first epoch, or its output folder moved)")
    state = torch.load(last, map_location="cpu", weights_only=True)
    best = folder / "best.pt"
    original = OmegaConf.merge(OmegaConf.structured(Config), state["config"])  # typed, as when it started
    original.tracking = cfg.tracking           # where to find the run: as given now
    original.trainer.output_dir = str(folder.parent)
    original.resume = None
    return original, {"run_id": run_id, "last": state,
                      "best": torch.load(best, map_location="cpu", weights_only=True) if best.is_file() else None}


def _optimizer(cfg: Config, model, cuda: bool = False):
    """All parameters in two groups (new head at optimizer.lr, backbone scaled), frozen ones included so
    that unfreezing later needs no new optimizer (parameters without gradients are skipped). On CUDA (the model
    already there) Adam/AdamW run fused: +6% images/s for resnet50 on an H200 (benchmarks/bench_gpu.py)."""
    from . import engine, models

    o = cfg.optimizer
    head = models.head_parameter_names(model, cfg.model.name)
    groups = [{"params": [p for n, p in model.named_parameters() if n in head], "lr": o.lr},
              {"params": [p for n, p in model.named_parameters() if n not in head], "lr": o.lr * o.backbone_lr_scale}]
    return engine.build_optimizer(o.name, [g for g in groups if g["params"]], o.lr, cfg.weight_decay,
                                  o.momentum, o.nesterov, o.betas, fused=cuda)


def _decoded_cache(cfg: Config, index):
    """The decoded-image cache for this run (data.decoded_cache), or None: images are then decoded every epoch."""
    from . import image_cache

    d = cfg.data
    size = d.decoded_cache_size or cfg.model.input_size
    if d.decoded_cache == "off":
        return None
    if d.decoded_cache == "auto":
        pays, why = image_cache.pays_off(len(index), size, cfg.trainer.epochs, d.cache_dir)
        log.info("data.decoded_cache=auto: %s (%s)", "on" if pays else "off", why)
        if not pays:
            return None
    from .data import default_workers

    cache = image_cache.open_or_build(index, size, resolve_path(d.cache_dir), threads=default_workers(-1),
                                      required=d.decoded_cache == "on")
    if cache is not None and cache.bad and d.on_bad_image == "error":
        from .data import DataError

        row, error = next(iter(sorted(cache.bad.items())))
        raise DataError(f"{index.paths([row])[0]}: unreadable image ({error}); replace or remove the file, or set "
                        f"data.on_bad_image=skip ({len(cache.bad)} unreadable image(s) in all)")
    return cache


def _loaders(cfg: Config, index, split, cuda: bool):
    """Train loader (shuffled by seed and epoch) and validation loader (in split order) of uint8 images, and the
    BatchTransform that finishes them on the device; with the decoded cache, batches are gathered from it."""
    from . import data as D

    m, d, aug = cfg.model, cfg.data, cfg.data.augment
    cache = _decoded_cache(cfg, index)
    crop = aug.random_resized_crop
    workers = D.default_workers(d.num_workers, cached=cache is not None, cuda=cuda)
    val_rows = split["val"][distributed.rank()::distributed.world_size()]  # each image once, no padding
    if cache is not None:
        from torchvision.transforms import v2

        crop_tf = v2.RandomResizedCrop(m.input_size, scale=(aug.crop_scale_min, 1.0), antialias=True) if crop else None
        train_set = D.CachedImages.from_index(cache, index, split["train"], crop_tf)
        val_set = D.CachedImages.from_index(cache, index, val_rows)
    else:
        train_tf = D.image_steps(m.input_size, train=True, random_resized_crop=crop, crop_scale_min=aug.crop_scale_min)
        train_set = D.MultiLabelImages.from_index(index, split["train"], train_tf, d.on_bad_image)
        val_set = D.MultiLabelImages.from_index(index, val_rows, D.image_steps(m.input_size), d.on_bad_image)
    sampler = None
    if distributed.active():  # each rank its share of every epoch
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
    batch = cfg.trainer.batch_size
    train = D.make_loader(train_set, batch, shuffle=True, num_workers=workers, seed=cfg.seed, pin_memory=cuda,
                          sampler=sampler, persistent=not crop)  # a random crop draws in the workers: reseeded per epoch
    val = D.make_loader(val_set, batch, shuffle=False, num_workers=workers, pin_memory=cuda, persistent=True)
    return train, val, D.BatchTransform(m.input_size, m.mean, m.std, hflip=aug.hflip, seed=cfg.seed), workers, cache


class _EpochHook:
    """Reports each epoch to the tracker, then to ``on_epoch(epoch, metrics)`` (which may raise TrialPruned)."""

    def __init__(self, tracker, on_epoch):
        self.tracker, self.on_epoch = tracker, on_epoch

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step)
        self.on_epoch(step, metrics)


def train(cfg: DictConfig, *, on_epoch=None, group: dict[str, str] | None = None) -> float:
    """Train one model as configured; returns the best validation mAP (the sweep objective).

    ``on_epoch(epoch, metrics)`` sees every epoch's metrics (a search prunes with it); ``group`` adds tags,
    ``sweep_id`` among them, that make the run a child of that group's parent run.
    """
    validate(cfg)  # every setting checked before any data is read
    cfg, resume = _resume_point(cfg)
    typed = validate(cfg)
    if typed.trainer.devices > 1 and not distributed.launched_by_torchrun():
        if on_epoch is not None:
            raise ConfigError("trainer.devices > 1 cannot run inside a search; use trainer.devices=1")
        # N fresh processes on this machine; the Hydra context (output folder, run name, sweep tags) goes along
        pinned = OmegaConf.to_container(cfg, resolve=True)
        pinned["trainer"]["output_dir"] = str(output_dir(typed))
        return distributed.spawn(_train_process, typed.trainer.devices, pinned, run_identity(typed, group), resume)
    return _train(cfg, typed, resume, on_epoch, run_identity(typed, group))


def _train_process(container: dict, identity, resume) -> float:
    """One rank of a ``trainer.devices=N`` run (a spawned process: no Hydra context of its own)."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), container)
    if os.environ.get("RANK") == "0":  # rank 0 reports progress; the others stay quiet
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        return _train(cfg, validate(cfg), resume, None, identity)
    finally:
        distributed.teardown()


def _train(cfg: DictConfig, typed: Config, resume, on_epoch, identity) -> float:
    import numpy as np
    import torch

    from . import data as D
    from . import engine, losses, models, tracking

    torch.manual_seed(typed.seed)
    np.random.seed(typed.seed)
    if typed.trainer.num_threads:
        torch.set_num_threads(typed.trainer.num_threads)
    m, t = typed.model, typed.trainer
    if m.input_size < models.min_input_size(m.name, m.aux_logits):  # before any data is read
        models.build_model(m.name, 1, aux_logits=m.aux_logits, input_size=m.input_size)  # raises, naming the fix
    device = engine.select_device(t.device)
    if distributed.launched_by_torchrun():
        device = distributed.setup(device.type)
    main_rank = distributed.is_main()
    # an unwritable store fails here, before training; only rank 0 records anything
    tracker = tracking.open_tracker(typed.tracking) if main_rank else tracking.NullTracker()
    out = output_dir(typed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {out} ({e.strerror}): set trainer.output_dir "
                          "(or hydra.run.dir) to a writable location") from e

    index = D.index_from_config(typed.data)
    split = D.split_from_config(index, typed.data)
    if main_rank:
        D.save_split(out / "split.json", index, split, seed=typed.data.split_seed)
    classes = index.classes

    model = models.build_model(m.name, len(classes), weights=m.weights, dropout=typed.dropout, hidden=m.hidden,
                               aux_logits=m.aux_logits, input_size=m.input_size)
    final_trainable = list(m.trainable) if not isinstance(m.trainable, str) else m.trainable
    n_trainable = models.set_trainable(model, m.name, "head" if t.unfreeze_at_epoch else final_trainable)
    frozen_count = n_trainable

    def before_epoch(epoch: int) -> dict[str, float]:
        nonlocal n_trainable
        if t.unfreeze_at_epoch and epoch > t.unfreeze_at_epoch and n_trainable == frozen_count:  # also on resume
            n_trainable = models.set_trainable(model, m.name, final_trainable)
            log.info("epoch %d: unfreezing model.trainable=%s (%d trainable parameters)",
                     epoch, final_trainable, n_trainable)
        return {"trainable_params": float(n_trainable)}

    net = model.to(device)
    optimizer = _optimizer(typed, model, cuda=device.type == "cuda")
    if distributed.active():
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader, val_loader, batch_transform, workers, cache = _loaders(typed, index, split, device.type == "cuda")

    run_name, tags = identity
    weights_used = models.weights_description(m.name, m.weights)
    params = {k: v for k, v in tracking.flatten(OmegaConf.to_container(cfg, resolve=True)).items()
              if not k.startswith(("presets.", "search."))}
    params.update({"dropout_value": typed.dropout, "weight_decay_value": typed.weight_decay,
                   "model.weights_used": weights_used, "device": str(device), "data.root_resolved": str(index.root),
                   "data.num_images": len(index), "data.num_train": len(split["train"]),
                   "data.num_val": len(split["val"]), "data.num_workers_used": workers,
                   "data.decoded_cache_used": cache is not None,
                   "world_size": distributed.world_size()})
    if resume:
        tracker.attach(resume["run_id"])
    else:
        if "sweep_id" in tags:  # every job of a -m sweep is a child of the sweep's one parent run
            tags["mlflow.parentRunId"] = tracker.sweep_parent(tags["sweep_id"], tags["sweep_dir"])
        tracker.start(run_name, {**tags, "weights": weights_used, "output_dir": str(out)}, params)
        _log_inputs(tracker, cfg, out, classes, index, split)
    log.info("training %s on %s: %d train / %d val images, %d classes, %d trainable parameters; outputs in %s",
             m.name, device, len(split["train"]), len(split["val"]), len(classes), n_trainable, out)

    loss_fn = losses.build_loss(typed.loss, index.labels[split["train"]]).to(device)
    trainer = engine.Trainer(
        model, optimizer, t, device=device, classes=classes, aux_weight=m.aux_weight, loss_fn=loss_fn,
        reporter=_EpochHook(tracker, on_epoch) if on_epoch else tracker,
        checkpoint_dir=out / "checkpoints" if main_rank else None, net=net,
        checkpoint_extra={"config": OmegaConf.to_container(cfg, resolve=True), "model_name": m.name,
                          "weights_used": weights_used},
        before_epoch=before_epoch, after_train_mode=models.keep_frozen_bn_in_eval, stop_event=threading.Event(),
        batch_transform=batch_transform)
    try:
        with stop_on_signals(trainer.stop_event):
            result = trainer.fit(train_loader, val_loader, resume=resume and resume["last"],
                                 resume_best=resume and resume["best"])
        if main_rank:
            _log_results(tracker, typed, out, classes, index, split, result)
    except engine.TrialPruned:
        tracker.set_tags({"pruned": "true"})
        tracker.end("KILLED")
        raise
    except engine.TrainingInterrupted as e:
        log.warning("run interrupted: %s", e)
        tracker.end("KILLED")
        signum = getattr(trainer.stop_event, "signum", signal.SIGINT)
        raise SystemExit(128 + int(signum)) from None
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            tracker.end("KILLED")
        else:
            tracker.log_text(traceback.format_exc(), "error/traceback.txt")
            tracker.end("FAILED")
        raise
    _log_data_problems(tracker, out, index, trainer.bad_images)
    tracker.set_tags({"best_epoch": result.best_epoch, "stopped_early": result.stopped_early})
    tracker.log_metrics({"best/val_mAP": result.best_score, "best/epoch": result.best_epoch}, step=result.best_epoch)
    tracker.end("FINISHED")
    if main_rank:
        log.info("best val/mAP %.4f at epoch %d (run %s)", result.best_score, result.best_epoch, tracker.run_id)
    return float(result.best_score)


def _log_data_problems(tracker, out: Path, index, bad_images: dict[str, str]) -> None:
    """Counts of used and skipped images as metrics; the index problems and the skipped files as artifacts."""
    from .data import write_atomic

    tracker.log_metrics({"data/skipped_images": len(bad_images), "data/used_images": len(index) - len(bad_images),
                         "data/index_problems": len(index.problems)}, step=0)
    if bad_images or index.problems:
        write_atomic(out / "data_problems.json", json.dumps(
            {"index_problems": index.problems, "skipped_images": bad_images}, indent=1))
        tracker.log_artifact(out / "data_problems.json")
        log.warning("%d image(s) skipped as unreadable, %d index problem(s): see data_problems.json",
                    len(bad_images), len(index.problems))


def _log_inputs(tracker, cfg: DictConfig, out: Path, classes, index, split) -> None:
    """What defines the run, logged at its start so even a killed run has it."""
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    tracker.log_text(json.dumps(classes, indent=1), "classes.json")
    tracker.log_artifact(out / "split.json")
    if (out / ".hydra").is_dir():
        tracker.log_artifacts(out / ".hydra", "hydra")


def _log_results(tracker, cfg: Config, out: Path, classes, index, split, result) -> None:
    """Curves, tuned thresholds, per-class table, validation predictions and the best checkpoint."""
    import torch

    from . import metrics as M
    from . import plots
    from .data import write_atomic
    from .engine import save_atomic
    from .predict import write_predictions

    fig = plots.curves(result.history, title=f"{cfg.model.name}: best val mAP {result.best_score:.3f}")
    fig.savefig(out / "curves.png", dpi=100)
    tracker.log_figure(fig, "curves.png")
    if result.best_probs is None:
        return
    probs, targets = result.best_probs, result.best_targets
    thresholds = M.tune_thresholds(probs, targets)
    tuned = torch.tensor(thresholds["per_class"])
    write_atomic(out / "thresholds.json", json.dumps({"classes": classes, **thresholds}, indent=1))
    tracker.log_artifact(out / "thresholds.json")
    scores = M.compute(probs, targets, tuned, classes)
    tracker.log_metrics({f"tuned/{k}": v for k, v in scores.items() if k != "mAP"}
                        | {"tuned/global_threshold": thresholds["global"]}, step=result.best_epoch)
    table = M.per_class_table(probs, targets, classes, tuned)
    table.insert(4, "F1@0.5", M.per_class_table(probs, targets, classes)["F1"])
    write_atomic(out / "per_class.csv", table.to_csv(index=False, float_format="%.4f"))
    tracker.log_artifact(out / "per_class.csv")
    tracker.log_figure(plots.per_class_bars(table, f"{cfg.model.name}: per-class AP (val, best epoch)"),
                       "per_class_ap.png")
    tracker.log_figure(plots.pr_curves(probs, targets, classes), "pr_curves.png")
    for path in write_predictions(out / "predictions", "val", result.best_names, probs, classes, tuned.numpy(),
                                  targets=targets):
        tracker.log_artifact(path, "predictions")
    best = result.checkpoints.get("best")
    if best is not None:
        state = torch.load(best, map_location="cpu", weights_only=True)
        save_atomic({**state, "thresholds": thresholds}, best)  # predictions reuse the tuned thresholds
        if cfg.tracking.log_checkpoint:
            tracker.log_artifact(best, "checkpoints")
        if cfg.tracking.log_model:
            tracker.log_model(best, classes, cfg.model.input_size)


FAILED_JOBS_FILE = "failed_jobs.jsonl"


def _sweep_dir() -> Path | None:
    from hydra.types import RunMode

    hc = _hydra_cfg()
    return Path(hc.sweep.dir) if hc is not None and hc.mode == RunMode.MULTIRUN else None


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One Hydra job. In a sweep a failing job is recorded and the sweep goes on (see SweepSummary)."""
    try:
        return train(cfg)
    except Exception as e:
        sweep = _sweep_dir()
        if sweep is None:
            raise
        hc = _hydra_cfg()
        log.exception("job %s (%s) failed; the sweep continues", hc.job.num, " ".join(hc.overrides.task))
        sweep.mkdir(parents=True, exist_ok=True)
        with open(sweep / FAILED_JOBS_FILE, "a") as fh:  # one short line per job: appends do not interleave
            fh.write(json.dumps({"job": hc.job.num, "overrides": " ".join(hc.overrides.task),
                                 "error": f"{type(e).__name__}: {e}"[:500]}) + "\n")
        return float("nan")


class SweepSummary(Callback):
    """Hydra callback: after a sweep, name the failed jobs and exit non-zero if there were any."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / FAILED_JOBS_FILE
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        lines = [f"  job {f['job']} ({f['overrides']}): {f['error']}" for f in failed]
        summary = f"{len(failed)} sweep job(s) failed:\n" + "\n".join(lines) if failed else "all jobs finished"
        if config.tracking.enabled:
            from . import tracking

            try:
                tracking.end_sweep_parent(config.tracking, sweep_id_of(config.hydra.sweep.dir),
                                          "FAILED" if failed else "FINISHED", summary)
            except Exception as e:  # the jobs' own runs are complete either way
                log.warning("could not close the sweep's parent run: %s", e)
        if failed:
            log.error(summary)
            raise SystemExit(1)


register()

if __name__ == "__main__":
    main()
