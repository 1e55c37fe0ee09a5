"""Training loop: epochs of train/validate with AMP, early stopping and clean interrupts.

The engine knows nothing of MLflow or Hydra: a run hands it its optimizer and LR schedule, one ``Callbacks`` object
(epoch start and end, a new best epoch, should-stop) and a folder for checkpoints (``Checkpoints``). Its progress
(epoch, best score, patience, history, RNG) is explicit state: ``state_dict()`` is what ``last.pt`` holds and
``load_state_dict()`` continues from it exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mlabel_exp.config import TrainerConfig
from mlabel_exp.errors import DataError
from mlabel_exp.inference.predictor import Predictor
from mlabel_exp.runtime import distributed
from mlabel_exp.runtime.precision import memory_format, train_dtype
from mlabel_exp.training.callbacks import Callbacks, TrainingInterrupted
from mlabel_exp.training.checkpoints import Checkpoints, planned_epochs
from mlabel_exp.training.ema import WeightAverage, ema_decay
from mlabel_exp.training.optim import OptimizerStep, change_length
from mlabel_exp.training.progress import Progress, RunEstimate

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_weights: str = "raw"                  # which weights scored best_score: raw, or ema (trainer.ema's average)
    best_probs: torch.Tensor | None = None     # validation probabilities of the best epoch
    best_targets: torch.Tensor | None = None
    best_names: list[str] = field(default_factory=list)  # validation file names, aligned with best_probs
    thresholds: dict | None = None             # decided on the best epoch's validation outputs (Callbacks.on_new_best)
    checkpoints: dict[str, Path] = field(default_factory=dict)  # "best" / "last" -> file (Checkpoints.paths)
    stopped_early: bool = False

    def restore(self, state: dict[str, Any], best: dict[str, Any] | None) -> None:
        """The history and best epoch of a resumed run: from last.pt (``state``), its outputs from best.pt."""
        self.history, self.best_epoch = list(state["history"]), state["best_epoch"]
        self.best_score, self.best_weights = state["best_score"], state.get("best_weights", "raw")
        if best is not None and "val" in best:
            v = best["val"]
            self.best_probs, self.best_targets, self.best_names = v["probs"], v["targets"], list(v["names"])
            self.thresholds = best.get("thresholds")


def epoch_steps(loader, cfg: TrainerConfig) -> int:
    """The batches an epoch takes from ``loader``: all, or at most trainer.max_steps_per_epoch."""
    n = len(loader)
    return min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n


def _seed_epoch(loader, batch_transform, epoch: int) -> None:
    """Shuffling, worker augmentation and batch flips of an epoch depend only on (seed, epoch): resumable."""
    loader.set_epoch(epoch)  # data.make_loader's loaders
    if hasattr(batch_transform, "set_epoch"):
        batch_transform.set_epoch(epoch, distributed.rank())


def _gathered(probs: list, targets: list, loss: float, names: list[str], n_classes: int, bad_images: dict[str, str]):
    """(probabilities, targets, mean loss, names) of a whole validation: this process's batches, and under DDP every
    rank's (each holds a disjoint share of the images); no readable image at all is a DataError."""
    p = torch.cat(probs).cpu() if probs else torch.zeros(0, n_classes)
    t = torch.cat(targets).cpu() if targets else torch.zeros(0, n_classes)
    if distributed.active():
        parts = distributed.gather((p, t, loss, names))
        p, t = torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts])
        names, loss = [n for q in parts for n in q[3]], sum(q[2] for q in parts)
    if len(p) == 0:
        raise DataError(f"no readable image among the {len(bad_images)} unreadable validation/test images "
                        f"(e.g. {sorted(bad_images)[:3]}): replace them, or raise data.val_fraction")
    return p, t, loss / len(p), names


def _batches(trainer: "Trainer", loader, stop: str | None):
    """(step, batch) of an epoch (at most ``epoch_steps``), unreadable images noted in ``trainer.bad_images`` and
    batches without a readable image left out; with ``stop`` (the reason it names), a stop request ends it before the
    next batch."""
    steps = epoch_steps(loader, trainer.cfg)
    for i, batch in enumerate(loader, start=1):
        if i > steps:
            break
        if stop and trainer.callbacks.should_stop():
            raise TrainingInterrupted(stop)
        for name, error in batch["bad"]:
            if name not in trainer.bad_images:
                log.warning("skipping unreadable image %s (%s)", name, error)
                trainer.bad_images[name] = error
        if batch["image"] is not None:
            yield i, batch


def _resume(trainer: "Trainer", state: dict[str, Any], best: dict[str, Any] | None, steps: int) -> None:
    """Continue from last.pt (``state``) and best.pt; a changed trainer.epochs changes the schedule's length."""
    trainer.load_state_dict(state, best)
    log.info("resuming after epoch %d (best val/mAP %.4f at epoch %d)", trainer.epoch, trainer.result.best_score,
             trainer.result.best_epoch)
    planned, cfg, scheduler = planned_epochs(state), trainer.cfg, trainer.update.scheduler
    if planned is not None and planned != cfg.epochs and scheduler is not None:
        log.info(change_length(scheduler, cfg.scheduler.name, planned, cfg.epochs, steps))


def _scored(split: str, outputs, classes: list[str], quiet: bool, every: bool = True) -> dict[str, float]:
    """``<split>/loss`` and the metrics of a validation's (probabilities, targets, loss, names): every one, or (``every``
    false) the key ones."""
    from mlabel_exp.metrics import scores as M  # imported late: run.py imports it beside the first epoch

    scores = M.compute(outputs[0], outputs[1], classes=classes, quiet=quiet)
    return {f"{split}/loss": outputs[2], **{M.logged_name(split, k): v for k, v in scores.items()
                                            if every or k in M.KEY_METRICS}}


def _cut_short(trainer: "Trainer", loader, targets: torch.Tensor) -> bool:
    """Whether trainer.max_steps_per_epoch cuts the validation short (a smoke run). Such a validation misses rare classes
    by design: said once, in the first epoch, as what the cut does, not warned as if the data lacked them (the run's
    param metrics.classes_left_out counts those)."""
    if epoch_steps(loader, trainer.cfg) == len(loader):
        return False
    missing = [c for c, n in zip(trainer.classes, (targets == 1).sum(0).tolist()) if n == 0]
    if missing and not trainer.result.history:
        log.info("validation cut to %d images (trainer.max_steps_per_epoch=%d): %d class(es) without a positive among "
                 "them (%s) are left out of its mAP", len(targets), trainer.cfg.max_steps_per_epoch, len(missing),
                 ", ".join(missing))
    return True


def _log_epoch(epoch: int, epochs: int, row: dict[str, float], improved: bool) -> None:
    ema = f" val_ema/mAP {row['val_ema/mAP']:.4f}" if "val_ema/mAP" in row else ""
    log.info("epoch %d/%d train/loss %.4f val/loss %.4f val/mAP %.4f%s val/f1_micro %.4f (%.1fs)%s", epoch, epochs,
             row["train/loss"], row["val/loss"], row["val/mAP"], ema, row["val/f1_micro"], row["time/epoch_s"],
             " *best*" if improved else "")


class Trainer:
    """Runs ``fit``; one instance per training run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainerConfig, *,
                 device: torch.device, classes: list[str], loss_fn: nn.Module | None = None, aux_weight: float = 0.4,
                 batch_transform: Callable | None = None, callbacks: Callbacks | None = None,
                 checkpoint_dir: Path | None = None, metadata: dict[str, Any] | None = None,
                 net: nn.Module | None = None, scheduler=None):
        """``model`` is what runs forward (a DistributedDataParallel wrapper under DDP); ``net`` the plain module whose
        state is checkpointed, so a checkpoint loads in a single process. ``batch_transform(x, train)`` turns the
        loader's uint8 images into the model's input on the device (data.BatchTransform). ``scheduler``: the per-step
        LR schedule for cfg.epochs epochs of ``epoch_steps`` (optim.build_scheduler), or None. ``metadata`` (config,
        classes, preprocessing, ...) goes into every checkpoint as written, with the thresholds in best.pt."""
        self.cfg, self.device, self.classes = cfg, device, classes
        self.net = net if net is not None else model
        self.amp_dtype = train_dtype(cfg, device)  # bfloat16 on CPUs that compute it natively, too
        self.model = model.to(device, memory_format=memory_format(cfg, device))
        if cfg.compile:  # the checkpointed ``net`` stays the plain module: its state dict keys do not change
            self.model = torch.compile(self.model)
        self.batch_transform = batch_transform or (lambda x, train=False: x.float())
        self.loss_fn, self.aux_weight = loss_fn or nn.BCEWithLogitsLoss(), aux_weight
        self.callbacks = callbacks or Callbacks()
        self.channels_last = memory_format(cfg, device) == torch.channels_last
        self.checkpoints = Checkpoints(checkpoint_dir if cfg.checkpoint else None, {
            "classes": classes, "amp_dtype": str(self.amp_dtype).removeprefix("torch."),
            "channels_last": self.channels_last, **(metadata or {})})
        self.predictor = self._predictor(self.model)
        self.average: WeightAverage | None = None  # trainer.ema's, made by fit (its decay needs the epoch's steps)
        self.update = OptimizerStep(optimizer, scheduler, device_type=device.type,
                                    scale_loss=self.amp_dtype == torch.float16)
        self.result = FitResult(checkpoints=self.checkpoints.paths)
        self.epoch = 0           # the last finished epoch
        self.since_best = 0      # epochs without improvement (early-stopping patience)
        self.bad_images: dict[str, str] = {}  # file name -> error, over the whole run
        self.estimate: RunEstimate | None = None  # set by fit: the time estimate said after the first steps

    def _predictor(self, model: nn.Module, tta: str = "none") -> Predictor:
        """``model`` behind the run's preprocessing, precision and layout: training and validation run through the same
        Predictor that predict and the pyfunc model use."""
        return Predictor(model, {}, self.classes, device=self.device, amp_dtype=self.amp_dtype,
                         channels_last=self.channels_last, transform=self.batch_transform, tta=tta)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where the last finished epoch ended."""
        r = self.result
        return {"model": self.net.state_dict(), **self.update.state_dict(), "rng": torch.get_rng_state(),
                "epoch": self.epoch, "planned_epochs": self.cfg.epochs,  # the length the schedule was built for
                "best_epoch": r.best_epoch, "best_score": r.best_score, "since_best": self.since_best,
                "history": r.history, "bad_images": self.bad_images, "best_weights": r.best_weights,
                "ema": self.average.state_dict() if self.average is not None else None}

    def load_state_dict(self, state: dict[str, Any], best: dict[str, Any] | None = None) -> None:
        """Continue from a ``state_dict()`` (last.pt); ``best`` (best.pt) brings back the best epoch's outputs."""
        self.net.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["ema"])
        self.update.load_state_dict(state)
        torch.set_rng_state(state["rng"])
        self.epoch, self.since_best = state["epoch"], state.get("since_best", 0)
        self.bad_images.update(state.get("bad_images", {}))
        self.result.restore(state, best)
        self.checkpoints.find_existing()

    def _step(self, batch) -> torch.Tensor:
        main, aux = self.predictor.outputs(self.predictor.inputs(batch["image"], train=True))
        y = batch["target"].to(self.device, non_blocking=True)
        # the loss in float32: focal and ASL losses use sigmoid, log and powers that autocast leaves in half precision
        loss = self.loss_fn(main.float(), y)
        if aux is not None:
            loss = loss + self.aux_weight * self.loss_fn(aux.float(), y)
        self.update(loss)
        if self.average is not None:
            self.average.update()
        return loss.detach()

    def train_epoch(self, loader, epoch: int) -> dict[str, float]:
        self.model.train()
        self.callbacks.on_train_mode(self.model)
        loss_sum = torch.zeros((), device=self.device)  # summed on device: no per-step host sync
        seen, steps, every = 0, epoch_steps(loader, self.cfg), max(1, self.cfg.log_every_steps)
        progress = Progress(self.cfg.progress if distributed.is_main() else "none", steps, f"epoch {epoch} train",
                            self.cfg.log_every_steps)
        start = time.perf_counter()
        _seed_epoch(loader, self.batch_transform, epoch)
        try:
            for i, batch in _batches(self, loader, stop=f"stop requested during epoch {epoch}"):
                lr = self.update.lr  # the LR this step trains at (the schedule moves it after the step)
                loss_sum += self._step(batch) * len(batch["image"])
                seen += len(batch["image"])
                progress.step(i, lambda: float(loss_sum) / seen)
                if i % every == 0 or i == steps:  # by training step of the run: a schedule's change on resume shows
                    self.callbacks.on_steps((epoch - 1) * steps + i, {"lr": lr})
                if self.estimate is not None and distributed.is_main():
                    self.estimate.step(i)
        finally:
            progress.close()
        seconds = time.perf_counter() - start
        loss_sum, seen_all = distributed.sum_all(loss_sum, torch.tensor(float(seen), device=self.device))
        seen = int(seen_all)
        return {"train/loss": float(loss_sum) / max(seen, 1), "time/train_s": seconds,
                "throughput/img_s": seen / max(seconds, 1e-9)}

    @torch.inference_mode()
    def predict(self, loader, stoppable: bool = False,
                predictor: Predictor | None = None) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
        """Probabilities, targets, mean loss and file names over (at most ``max_steps_per_epoch`` batches of) a loader,
        by ``predictor`` (default: the trained model's; its ``tta`` averages the probabilities, the loss is the plain
        pass's). ``stoppable``: a stop request ends it at the next batch (TrainingInterrupted; last.pt holds the epoch
        before), so that a scheduler's warning during a long validation still leaves time to stop cleanly."""
        predictor = predictor or self.predictor
        predictor.model.eval()
        probs, targets, names = [], [], []
        loss_sum = torch.zeros((), device=self.device)
        for _, batch in _batches(self, loader, "stop requested during validation" if stoppable else None):
            names += batch["name"]
            logits = predictor.logits(batch["image"])
            y = batch["target"].to(self.device, non_blocking=True)
            loss_sum += self.loss_fn(logits, y) * len(y)
            probs.append(predictor.probabilities_of(batch["image"], logits))
            targets.append(y)
        return _gathered(probs, targets, float(loss_sum), names, len(self.classes), self.bad_images)

    def evaluate_best(self, loader, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
        """``predict`` over ``loader`` (the test split; with ``tta``, trainer.tta's) with best.pt's weights (the kept
        ones: raw or averaged)."""
        best = self.checkpoints.best_weights(self.device)  # rank 0's: under DDP the other ranks write no checkpoint
        if best is not None:
            self.net.load_state_dict(best)
        elif distributed.is_main():
            log.warning("no best.pt (trainer.checkpoint=false): the last epoch's weights are scored")
        distributed.broadcast_state(self.net)  # so every rank scores its share with rank 0's weights
        return self.predict(loader, predictor=self._predictor(self.model, tta))

    def _epoch(self, epoch: int, train_loader, val_loader) -> bool:
        """Train and validate epoch ``epoch`` (and trainer.ema's average: the epoch keeps the better weights); returns
        True when early stopping ends the run."""
        extra = self.callbacks.on_epoch_start(epoch) or {}
        start = time.perf_counter()
        row = self.train_epoch(train_loader, epoch)
        # the last epoch's validation runs to its end: then only the closing evaluation is left
        outputs = {"raw": self.predict(val_loader, stoppable=epoch < self.cfg.epochs)}
        cut = _cut_short(self, val_loader, outputs["raw"][1])
        row.update(_scored("val", outputs["raw"], self.classes, quiet=bool(self.result.history) or cut))
        if self.average is not None:
            distributed.broadcast_state(self.average.module, buffers_only=True)  # rank 0's (the saved) statistics
            outputs["ema"] = self.predict(val_loader, epoch < self.cfg.epochs, self._predictor(self.average.module))
            row.update(_scored("val_ema", outputs["ema"], self.classes, quiet=True, every=False))
        row.update({"time/epoch_s": time.perf_counter() - start, **extra})  # lr: per step (Callbacks.on_steps)
        weights = "ema" if "ema" in outputs and row["val_ema/mAP"] > row["val/mAP"] else "raw"
        return self._end_epoch(epoch, row, outputs[weights], weights)

    def _end_epoch(self, epoch: int, row: dict[str, float], outputs, weights: str) -> bool:
        """Record epoch ``epoch`` with the validation ``outputs`` of its kept ``weights`` (raw or ema): best score,
        patience, checkpoints, report. Returns True when early stopping ends the run."""
        r, (probs, targets, _, names) = self.result, outputs
        r.history.append({"epoch": epoch, **row})
        self.epoch = epoch
        score = row["val_ema/mAP" if weights == "ema" else "val/mAP"]
        improved = score > r.best_score
        if improved:
            r.best_epoch, r.best_score, r.best_weights = epoch, score, weights
            r.best_probs, r.best_targets, r.best_names = probs, targets, names
            r.thresholds = self.callbacks.on_new_best(epoch, probs, targets)
            self.since_best = 0
        else:
            self.since_best += 1
        _log_epoch(epoch, self.cfg.epochs, row, improved)
        self.callbacks.on_epoch_end(epoch, row)
        if improved:
            kept = self.average.module if weights == "ema" else self.net
            self.checkpoints.save_best(kept.state_dict(), epoch, r.best_score,
                                       {"probs": probs, "targets": targets, "names": names}, r.thresholds, weights)
        self.checkpoints.save_last(self.state_dict())
        patience = self.cfg.early_stopping_patience
        if patience and self.since_best >= patience:
            log.info("early stop: val/mAP has not improved for %d epochs", self.since_best)
            r.stopped_early = True
        return r.stopped_early

    def fit(self, train_loader, val_loader, resume: dict | None = None, resume_best: dict | None = None) -> FitResult:
        """Train for ``cfg.epochs``; ``resume`` (a last.pt state) continues an interrupted run exactly."""
        decay = ema_decay(self.cfg.ema, epoch_steps(train_loader, self.cfg))
        self.average = WeightAverage(self.net, decay) if decay is not None else None
        if resume:
            _resume(self, resume, resume_best, epoch_steps(train_loader, self.cfg))
        validations = 2 if self.average is not None else 1  # the raw weights' and the average's
        self.estimate = RunEstimate(self.device, epoch_steps(train_loader, self.cfg),
                                    epoch_steps(val_loader, self.cfg) * validations, self.cfg.epochs - self.epoch)
        epoch = self.epoch
        try:
            for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
                if self._epoch(epoch, train_loader, val_loader):
                    break
                if epoch < self.cfg.epochs and self.callbacks.should_stop():  # after the last: the run finishes
                    raise TrainingInterrupted(f"stop requested after epoch {epoch}")
        except TrainingInterrupted:
            log.warning("training interrupted in epoch %d; %s holds the last finished epoch", epoch,
                        self.result.checkpoints.get("last", "no checkpoint (none finished)"))
            raise
        return self.result
