"""Training loop: epochs of train/validate with AMP, checkpoints, early stopping and clean interrupts.

The engine knows nothing of MLflow or Hydra: a run hands it one ``Callbacks`` object (epoch start and end,
should-stop) and a folder for checkpoints. Its progress (epoch, best score, patience, history, RNG) is explicit
state: ``state_dict()`` is what ``last.pt`` holds and ``load_state_dict()`` continues from it exactly.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mlabel_exp.training import distributed
from mlabel_exp.config import TrainerConfig
from mlabel_exp.fsutil import save_atomic
from mlabel_exp.inference.predictor import CHANNELS_LAST_DEVICES, Predictor, autocast_dtype, split_outputs

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Raised at a step boundary after a stop request (SIGINT/SIGTERM); the last checkpoint is written."""


class TrialPruned(Exception):
    """Raised by an epoch hook to end a run on purpose (a search trial pruned for poor val mAP)."""


class Callbacks:
    """What a run hooks into training; each method does nothing here, override what you need."""

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """Before epoch ``epoch`` trains (e.g. unfreeze layers); returns extra metrics to log with the epoch."""
        return {}

    def on_train_mode(self, model: nn.Module) -> None:
        """After ``model.train()`` (e.g. keep frozen BatchNorm layers in eval mode)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After validation (report the metrics; may raise TrialPruned)."""

    def should_stop(self) -> bool:
        """Checked at every step: True ends training at that step boundary (TrainingInterrupted)."""
        return False


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_probs: torch.Tensor | None = None     # validation probabilities of the best epoch
    best_targets: torch.Tensor | None = None
    best_names: list[str] = field(default_factory=list)  # validation file names, aligned with best_probs
    thresholds: dict | None = None             # tuned on the best epoch's validation outputs (metrics.tune_thresholds)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    stopped_early: bool = False


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """What trainer.amp=true trains in on ``device`` (float32: no autocast). CUDA: trainer.amp_dtype, where auto is
    bfloat16 if the GPU supports it (no loss scaling needed), else float16. CPU: bfloat16 where the CPU computes it
    natively (predictor.cpu_computes_bf16), else float32. MPS: float32."""
    if device.type == "cuda" and name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return autocast_dtype(device, torch.bfloat16 if name == "auto" else getattr(torch, name))


def train_dtype(cfg: TrainerConfig, device: torch.device) -> torch.dtype:
    """What a run autocasts to on ``device`` (float32: no autocast), by trainer.amp and trainer.amp_dtype."""
    return amp_dtype(cfg.amp_dtype, device) if cfg.amp else torch.float32


def memory_format(cfg: TrainerConfig, device: torch.device) -> torch.memory_format:
    """The layout a run's model trains in: channels_last where it pays (trainer.channels_last, CUDA and the CPU).
    A DDP run converts its model before wrapping it: DDP's gradient buckets take the parameters' layout then."""
    return torch.channels_last if cfg.channels_last and device.type in CHANNELS_LAST_DEVICES else torch.preserve_format


def precision(cfg: TrainerConfig, device: torch.device) -> str:
    """What a run computes in, as its logs and params say it: 'bfloat16 autocast', 'float16 autocast' or 'float32'."""
    dtype = train_dtype(cfg, device)
    return "float32" if dtype == torch.float32 else f"{str(dtype).removeprefix('torch.')} autocast"


class _Progress:
    """A tqdm bar on a terminal, plain log lines elsewhere (logs, SLURM), or nothing."""

    def __init__(self, mode: str, total: int, desc: str, every: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.desc, self.every = mode, total, desc, max(1, every)
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def step(self, i: int, loss: Callable[[], float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if i % self.every == 0:
                self.bar.set_postfix(loss=f"{loss():.4f}")
        elif self.mode == "log" and (i % self.every == 0 or i == self.total):
            log.info("%s step %d/%d loss %.4f", self.desc, i, self.total, loss())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _RunEstimate:
    """Said once, after the first steps of a run of a minute or more: about how long an epoch and the rest of the run
    take, with the faster
    options when a CPU run would take over an hour. The first step is left out (one-off allocations and warm-up);
    a validation batch is counted as a third of a training step (a forward pass, no backward)."""

    LONG_CPU_RUN_S = 3600

    def __init__(self, device: torch.device, train_steps: int, val_steps: int, epochs_left: int,
                 min_steps: int = 3, min_seconds: float = 5.0):
        self.device, self.train_steps, self.val_steps, self.epochs_left = device, train_steps, val_steps, epochs_left
        self.min_steps, self.min_seconds = min_steps, min_seconds
        self.since = None
        self.done = epochs_left < 1 or train_steps < 2

    def step(self, i: int) -> None:
        """After training step ``i`` of the epoch (steps of skipped batches are not counted)."""
        if self.done:
            return
        now = time.perf_counter()
        if self.since is None:
            self.since, self.timed = now, 0
            return
        self.timed += 1
        timed = self.timed
        if (timed < self.min_steps or now - self.since < self.min_seconds) and i < self.train_steps:
            return
        self.done = True
        per_step = (now - self.since) / timed
        epoch = per_step * (self.train_steps + self.val_steps / 3)
        run = epoch * self.epochs_left
        if run < 60:  # a short run needs no forecast
            return
        log.info("estimated %s per epoch, %s for the %d epoch(s) to go (early stopping may end it sooner)",
                 _duration(epoch), _duration(run), self.epochs_left)
        if self.device.type == "cpu" and run > self.LONG_CPU_RUN_S:
            log.warning("this CPU run would take about %s: a GPU (trainer.device=cuda), a smaller model.input_size or "
                        "model (model=resnet18, model=smallcnn) is faster; trainer=smoke checks the set-up in seconds",
                        _duration(run))


def planned_epochs(state: dict[str, Any]) -> int | None:
    """The trainer.epochs a last.pt ``state``'s schedule was built for (older checkpoints: their config's)."""
    return state.get("planned_epochs", state.get("config", {}).get("trainer", {}).get("epochs"))


class Trainer:
    """Runs ``fit``; one instance per training run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainerConfig, *,
                 device: torch.device, classes: list[str], loss_fn: nn.Module | None = None, aux_weight: float = 0.4,
                 batch_transform: Callable | None = None, callbacks: Callbacks | None = None,
                 checkpoint_dir: Path | None = None, metadata: dict[str, Any] | None = None,
                 net: nn.Module | None = None):
        """``model`` is what runs forward (a DistributedDataParallel wrapper under DDP); ``net`` the plain module whose
        state is checkpointed, so a checkpoint loads in a single process. ``batch_transform(x, train)`` turns the
        loader's uint8 images into the model's input on the device (data.BatchTransform). ``metadata`` (config,
        classes, preprocessing, ...) goes into every checkpoint as written, with the thresholds in best.pt."""
        self.cfg, self.device, self.classes = cfg, device, classes
        self.net = net if net is not None else model
        self.amp_dtype = train_dtype(cfg, device)
        self.amp = self.amp_dtype != torch.float32  # bfloat16 on CPUs that compute it natively, too
        self.channels_last = memory_format(cfg, device) == torch.channels_last
        self.model = model.to(device, memory_format=memory_format(cfg, device))
        if cfg.compile:  # the checkpointed ``net`` stays the plain module: its state dict keys do not change
            self.model = torch.compile(self.model)
        self.batch_transform = batch_transform or (lambda x, train=False: x.float())
        self.optimizer, self.loss_fn, self.aux_weight = optimizer, loss_fn or nn.BCEWithLogitsLoss(), aux_weight
        self.callbacks = callbacks or Callbacks()
        self.checkpoint_dir = checkpoint_dir if cfg.checkpoint else None
        self.metadata = {"classes": classes, "amp_dtype": str(self.amp_dtype).removeprefix("torch."),
                         "channels_last": self.channels_last, **(metadata or {})}
        # validation runs through the same Predictor that predict and the pyfunc model use
        self.predictor = Predictor(self.model, {}, classes, device=device, amp_dtype=self.amp_dtype,
                                   channels_last=self.channels_last, transform=self.batch_transform)
        # bfloat16 needs no loss scaling (and so no per-step check of the gradients on the host)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.scheduler = None
        self.result = FitResult()
        self.epoch = 0           # the last finished epoch
        self.since_best = 0      # epochs without improvement (early-stopping patience)
        self.bad_images: dict[str, str] = {}  # file name -> error, over the whole run
        self.estimate: _RunEstimate | None = None  # set by fit: the time estimate said after the first steps

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where the last finished epoch ended."""
        r = self.result
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict(), "rng": torch.get_rng_state(), "epoch": self.epoch,
                "planned_epochs": self.cfg.epochs,  # the length the schedule was built for
                "best_epoch": r.best_epoch, "best_score": r.best_score, "since_best": self.since_best,
                "history": r.history, "bad_images": self.bad_images}

    def load_state_dict(self, state: dict[str, Any], best: dict[str, Any] | None = None) -> None:
        """Continue from a ``state_dict()`` (last.pt); ``best`` (best.pt) brings back the best epoch's outputs."""
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.since_best = state["epoch"], state.get("since_best", 0)
        self.bad_images.update(state.get("bad_images", {}))
        r = self.result
        r.history, r.best_epoch, r.best_score = list(state["history"]), state["best_epoch"], state["best_score"]
        if best is not None and "val" in best:
            v = best["val"]
            r.best_probs, r.best_targets, r.best_names = v["probs"], v["targets"], list(v["names"])
            r.thresholds = best.get("thresholds")
        for name in ("best", "last"):
            path = self.checkpoint_dir / f"{name}.pt" if self.checkpoint_dir else None
            if path is not None and path.exists():
                r.checkpoints[name] = path

    def _checkpoint(self, name: str) -> None:
        """last.pt: everything a resume needs (state_dict). best.pt: what predicting and a resume read of the best
        epoch, its weights, validation outputs and tuned thresholds; no optimizer state (twice the weights with Adam),
        which nothing reads from it."""
        if self.checkpoint_dir is None:
            return
        r = self.result
        if name == "best":
            # not the data record (every file name, label and content hash: for a resume, which reads last.pt), which
            # would otherwise travel in the served and registered model
            metadata = {k: v for k, v in self.metadata.items() if k != "data"}
            state = {"model": self.net.state_dict(), "epoch": self.epoch, "best_score": r.best_score, **metadata,
                     "val": {"probs": r.best_probs, "targets": r.best_targets, "names": r.best_names},
                     "thresholds": r.thresholds}
        else:
            state = {**self.state_dict(), **self.metadata}
        r.checkpoints[name] = save_atomic(state, self.checkpoint_dir / f"{name}.pt")

    # -------------------------------------------------------------- steps
    def _note_bad(self, batch) -> None:
        for name, error in batch["bad"]:
            if name not in self.bad_images:
                log.warning("skipping unreadable image %s (%s)", name, error)
                self.bad_images[name] = error

    def _seed_epoch(self, loader, epoch: int) -> None:
        """Shuffling, worker augmentation and batch flips of an epoch depend only on (seed, epoch): resumable."""
        loader.set_epoch(epoch)  # data.make_loader's loaders
        if hasattr(self.batch_transform, "set_epoch"):
            self.batch_transform.set_epoch(epoch, distributed.rank())

    def _limit(self, loader) -> int:
        n = len(loader)
        return min(n, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else n

    def _step(self, batch) -> torch.Tensor:
        x = self.batch_transform(batch["image"].to(self.device, non_blocking=True), train=True)
        if self.channels_last and x.dim() == 4:  # image batches; other inputs keep their layout
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["target"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            main, aux = split_outputs(self.model(x))
        # the loss in float32: focal and ASL losses use sigmoid, log and powers that autocast leaves in half precision
        loss = self.loss_fn(main.float(), y)
        if aux is not None:
            loss = loss + self.aux_weight * self.loss_fn(aux.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()

    def train_epoch(self, loader, epoch: int) -> dict[str, float]:
        self.model.train()
        self.callbacks.on_train_mode(self.model)
        steps = self._limit(loader)
        loss_sum = torch.zeros((), device=self.device)  # summed on device: no per-step host sync
        seen = 0
        progress = _Progress(self.cfg.progress if distributed.is_main() else "none", steps, f"epoch {epoch} train",
                             self.cfg.log_every_steps)
        start = time.perf_counter()
        self._seed_epoch(loader, epoch)
        for i, batch in enumerate(loader, start=1):
            if i > steps:
                break
            if self.callbacks.should_stop():
                progress.close()
                raise TrainingInterrupted(f"stop requested during epoch {epoch}")
            self._note_bad(batch)
            if batch["image"] is None:
                continue
            loss_sum += self._step(batch) * len(batch["image"])
            seen += len(batch["image"])
            progress.step(i, lambda: float(loss_sum) / seen)
            if self.estimate is not None and distributed.is_main():
                self.estimate.step(i)
        progress.close()
        seconds = time.perf_counter() - start
        loss_sum, seen_all = distributed.sum_all(loss_sum, torch.tensor(float(seen), device=self.device))
        seen = int(seen_all)
        return {"train/loss": float(loss_sum) / max(seen, 1), "time/train_s": seconds,
                "throughput/img_s": seen / max(seconds, 1e-9)}

    @torch.inference_mode()
    def predict(self, loader, stoppable: bool = False) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
        """Probabilities, targets, mean loss and file names over (at most ``max_steps_per_epoch`` batches of) a loader.
        ``stoppable``: a stop request ends it at the next batch (TrainingInterrupted; last.pt holds the epoch before),
        so that a scheduler's warning during a long validation still leaves time to stop cleanly."""
        self.model.eval()
        steps = self._limit(loader)
        probs, targets, names = [], [], []
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(loader, start=1):
            if i > steps:
                break
            if stoppable and self.callbacks.should_stop():
                raise TrainingInterrupted("stop requested during validation")
            self._note_bad(batch)
            if batch["image"] is None:
                continue
            names += batch["name"]
            logits = self.predictor.logits(batch["image"])
            y = batch["target"].to(self.device, non_blocking=True)
            loss_sum += self.loss_fn(logits, y) * len(y)
            probs.append(torch.sigmoid(logits))
            targets.append(y)
        p = torch.cat(probs).cpu() if probs else torch.zeros(0, len(self.classes))
        t = torch.cat(targets).cpu() if targets else torch.zeros(0, len(self.classes))
        loss = float(loss_sum)
        if distributed.active():  # every rank holds a disjoint share of the validation images
            parts = distributed.gather((p, t, loss, names))
            p, t = torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts])
            names, loss = [n for q in parts for n in q[3]], sum(q[2] for q in parts)
        if len(p) == 0:
            from mlabel_exp.data.index import DataError

            raise DataError(f"no readable image among the {len(self.bad_images)} unreadable validation/test images "
                            f"(e.g. {sorted(self.bad_images)[:3]}): replace them, or raise data.val_fraction")
        return p, t, loss / len(p), names

    def evaluate_best(self, loader) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
        """``predict`` over ``loader`` (the test split) with the best epoch's weights from best.pt."""
        best = self.result.checkpoints.get("best")
        if best is not None:
            self.net.load_state_dict(torch.load(best, map_location=self.device, weights_only=True)["model"])
        else:
            log.warning("no best.pt (trainer.checkpoint=false): the test split is scored with the last epoch's weights")
        return self.predict(loader)

    # -------------------------------------------------------------- loop
    def _end_epoch(self, epoch: int, row: dict[str, float], probs, targets, names) -> bool:
        """Record epoch ``epoch``: best score, patience, checkpoints, report. Returns True when early stopping ends the run."""
        r = self.result
        r.history.append({"epoch": epoch, **row})
        self.epoch = epoch
        improved = row["val/mAP"] > r.best_score
        if improved:
            r.best_epoch, r.best_score = epoch, row["val/mAP"]
            r.best_probs, r.best_targets, r.best_names = probs, targets, names
            from mlabel_exp.analysis import metrics as M

            r.thresholds = M.tune_thresholds(probs, targets)
            self.since_best = 0
        else:
            self.since_best += 1
        log.info("epoch %d/%d train/loss %.4f val/loss %.4f val/mAP %.4f val/f1_micro %.4f (%.1fs)%s",
                 epoch, self.cfg.epochs, row["train/loss"], row["val/loss"], row["val/mAP"], row["val/f1_micro"],
                 row["time/epoch_s"], " *best*" if improved else "")
        self.callbacks.on_epoch_end(epoch, row)
        if improved:
            self._checkpoint("best")
        self._checkpoint("last")
        patience = self.cfg.early_stopping_patience
        if patience and self.since_best >= patience:
            log.info("early stop: val/mAP has not improved for %d epochs", self.since_best)
            r.stopped_early = True
        return r.stopped_early

    def fit(self, train_loader, val_loader, resume: dict | None = None, resume_best: dict | None = None) -> FitResult:
        """Train for ``cfg.epochs``; ``resume`` (a last.pt state) continues an interrupted run exactly."""
        from mlabel_exp.training.builders import build_scheduler, change_length

        steps = self._limit(train_loader)
        self.scheduler = build_scheduler(self.cfg.scheduler, self.optimizer, self.cfg.epochs, steps)
        if resume:
            self.load_state_dict(resume, resume_best)
            log.info("resuming after epoch %d (best val/mAP %.4f at epoch %d)", self.epoch, self.result.best_score,
                     self.result.best_epoch)
            planned = planned_epochs(resume)
            if planned is not None and planned != self.cfg.epochs:
                log.info(change_length(self.scheduler, self.cfg.scheduler.name, planned, self.cfg.epochs, steps))
        self.estimate = _RunEstimate(self.device, self._limit(train_loader), self._limit(val_loader),
                                     self.cfg.epochs - self.epoch)
        epoch = self.epoch
        try:
            for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
                extra = self.callbacks.on_epoch_start(epoch) or {}
                lr = self.optimizer.param_groups[0]["lr"]
                start = time.perf_counter()
                row = self.train_epoch(train_loader, epoch)
                # the last epoch's validation runs to its end: then only the closing evaluation is left
                probs, targets, val_loss, names = self.predict(val_loader, stoppable=epoch < self.cfg.epochs)
                from mlabel_exp.analysis import metrics as M  # imported late: run.py imports it beside the first epoch

                scores = M.compute(probs, targets, classes=self.classes, quiet=bool(self.result.history))
                row.update({"val/loss": val_loss, **{M.logged_name("val", k): v for k, v in scores.items()},
                            "lr": lr, "time/epoch_s": time.perf_counter() - start, **extra})
                if self._end_epoch(epoch, row, probs, targets, names):
                    break
                if epoch < self.cfg.epochs and self.callbacks.should_stop():  # after the last: the run finishes
                    raise TrainingInterrupted(f"stop requested after epoch {epoch}")
        except TrainingInterrupted:
            log.warning("training interrupted in epoch %d; %s holds the last finished epoch", epoch,
                        self.result.checkpoints.get("last", "no checkpoint (none finished)"))
            raise
        return self.result
