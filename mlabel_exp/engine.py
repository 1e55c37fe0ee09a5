"""Training loop: epochs of train/validate with AMP, checkpoints, early stopping and clean interrupts.

The engine knows nothing of MLflow or Hydra: it reports metrics to any object with
``log_metrics(metrics, step)`` and writes checkpoints to a folder it is given.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from . import distributed
from . import metrics as M
from .config import SchedulerConfig, TrainerConfig

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class TrainingInterrupted(Exception):
    """Raised at a step boundary after a stop request (SIGINT/SIGTERM); the last checkpoint is written."""


class TrialPruned(Exception):
    """Raised by an epoch hook to end a run on purpose (a search trial pruned for poor val mAP)."""


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_probs: torch.Tensor | None = None     # validation probabilities of the best epoch
    best_targets: torch.Tensor | None = None
    best_names: list[str] = field(default_factory=list)  # validation file names, aligned with best_probs
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


def amp_dtype(name: str) -> torch.dtype:
    """trainer.amp_dtype: bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def build_optimizer(name: str, param_groups: list[dict], lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999),
                    fused: bool = False) -> torch.optim.Optimizer:
    """``fused`` (CUDA parameters only): Adam/AdamW update every parameter in one kernel, not a few per tensor."""
    extra = {"fused": True} if fused else {}
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **extra)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **extra)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               nesterov=nesterov and momentum > 0)
    raise ValueError(f"optimizer.name={name!r}: expected adam, adamw or sgd")


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """A per-step LR schedule: none, cosine or step, with optional linear warm-up; or one-cycle."""
    total = max(1, epochs * steps_per_epoch)
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        if cfg.name == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return cfg.min_lr_scale + (1 - cfg.min_lr_scale) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if cfg.name == "step":
            return cfg.gamma ** (step // steps_per_epoch // cfg.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_atomic(obj, path: Path) -> Path:
    """torch.save through a temporary file and a rename: a kill mid-write keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _split_outputs(out):
    """(main logits, aux logits or None): inception returns both in train mode."""
    if isinstance(out, tuple):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


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


class Trainer:
    """Runs ``fit``; one instance per training run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainerConfig, *,
                 device: torch.device, classes: list[str], aux_weight: float = 0.4,
                 loss_fn: nn.Module | None = None, reporter: Reporter | None = None,
                 checkpoint_dir: Path | None = None, checkpoint_extra: dict | None = None,
                 before_epoch: Callable[[int], dict[str, float] | None] | None = None,
                 after_train_mode: Callable[[nn.Module], None] | None = None,
                 stop_event: threading.Event | None = None, net: nn.Module | None = None,
                 batch_transform: Callable | None = None):
        """``model`` is what runs forward (a DistributedDataParallel wrapper under DDP); ``net`` the plain
        module whose state is checkpointed, so a checkpoint loads in a single process. ``batch_transform(x, train)``
        turns the loader's uint8 images into the model's input on the device (data.BatchTransform)."""
        self.cfg, self.device, self.classes = cfg, device, classes
        self.net = net if net is not None else model
        self.cuda = device.type == "cuda"
        self.amp = cfg.amp and self.cuda
        self.amp_dtype = amp_dtype(cfg.amp_dtype) if self.amp else torch.float32
        self.channels_last = cfg.channels_last and self.cuda
        self.model = model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        if cfg.compile:  # the checkpointed ``net`` stays the plain module: its state dict keys do not change
            self.model = torch.compile(self.model)
        self.batch_transform = batch_transform
        self.optimizer = optimizer
        self.loss_fn = loss_fn or nn.BCEWithLogitsLoss()
        self.aux_weight = aux_weight
        self.reporter = reporter
        self.checkpoint_dir = checkpoint_dir if cfg.checkpoint else None
        self.checkpoint_extra = checkpoint_extra or {}
        self.before_epoch = before_epoch
        self.after_train_mode = after_train_mode
        self.stop_event = stop_event or threading.Event()
        # bfloat16 needs no loss scaling (and so no per-step check of the gradients on the host)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.scheduler = None
        self.bad_images: dict[str, str] = {}  # file name -> error, over the whole run

    # -------------------------------------------------------------- steps
    def _to_device(self, x: torch.Tensor, y: torch.Tensor, train: bool):
        x = x.to(self.device, non_blocking=True)
        if self.batch_transform is not None:
            x = self.batch_transform(x, train)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _note_bad(self, batch) -> None:
        for name, error in batch["bad"]:
            if name not in self.bad_images:
                log.warning("skipping unreadable image %s (%s)", name, error)
                self.bad_images[name] = error

    def _seed_epoch(self, loader, epoch: int) -> None:
        """Shuffling, worker augmentation and batch flips of an epoch depend only on (seed, epoch): resumable."""
        if hasattr(loader.sampler, "set_epoch"):  # EpochShuffle, DistributedSampler
            loader.sampler.set_epoch(epoch)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(getattr(loader, "seed", 0) * 100_003 + epoch)
        if hasattr(self.batch_transform, "set_epoch"):
            self.batch_transform.set_epoch(epoch, distributed.rank())

    def _limit(self, loader) -> int:
        n = len(loader)
        return min(n, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else n

    def train_epoch(self, loader, epoch: int) -> dict[str, float]:
        self.model.train()
        if self.after_train_mode:
            self.after_train_mode(self.model)
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
            if self.stop_event.is_set():
                progress.close()
                raise TrainingInterrupted(f"stop requested during epoch {epoch}")
            self._note_bad(batch)
            if batch["image"] is None:
                continue
            x, y = self._to_device(batch["image"], batch["target"], train=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                main, aux = _split_outputs(self.model(x))
                loss = self.loss_fn(main, y)
                if aux is not None:
                    loss = loss + self.aux_weight * self.loss_fn(aux, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach() * len(x)
            seen += len(x)
            progress.step(i, lambda: float(loss_sum) / seen)
        progress.close()
        seconds = time.perf_counter() - start
        loss_sum, seen_all = distributed.sum_all(loss_sum, torch.tensor(float(seen), device=self.device))
        seen = int(seen_all)
        return {"train/loss": float(loss_sum) / max(seen, 1), "time/train_s": seconds,
                "throughput/img_s": seen / max(seconds, 1e-9)}

    @torch.inference_mode()
    def predict(self, loader) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
        """Probabilities, targets, mean loss and file names over (at most ``max_steps_per_epoch`` batches of) a loader."""
        self.model.eval()
        steps = self._limit(loader)
        probs, targets, names = [], [], []
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(loader, start=1):
            if i > steps:
                break
            self._note_bad(batch)
            if batch["image"] is None:
                continue
            names += batch["name"]
            x, y = self._to_device(batch["image"], batch["target"], train=False)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits, _ = _split_outputs(self.model(x))
            logits = logits.float()
            loss_sum += self.loss_fn(logits, y) * len(x)
            probs.append(torch.sigmoid(logits))
            targets.append(y)
        p = torch.cat(probs).cpu() if probs else torch.zeros(0, len(self.classes))
        t = torch.cat(targets).cpu() if targets else torch.zeros(0, len(self.classes))
        if distributed.active():  # every rank holds a disjoint share of the validation images
            parts = distributed.gather((p, t, float(loss_sum), names))
            p, t = torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts])
            names = [n for q in parts for n in q[3]]
            return p, t, sum(q[2] for q in parts) / max(len(p), 1), names
        return p, t, float(loss_sum) / max(len(p), 1), names

    # -------------------------------------------------------------- loop
    def _checkpoint(self, name: str, epoch: int, result: FitResult, since_best: int) -> None:
        """Everything a resumed run needs to continue exactly where this epoch ended."""
        if self.checkpoint_dir is None:
            return
        state = {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "since_best": since_best,
            "history": result.history,
            "bad_images": self.bad_images,
            "classes": self.classes,
            "amp_dtype": str(self.amp_dtype).removeprefix("torch."),  # what validation ran in: predict replays it
            **self.checkpoint_extra,
        }
        if name == "best":  # the validation outputs of the best epoch, for thresholds after a resume
            state["val"] = {"probs": result.best_probs, "targets": result.best_targets, "names": result.best_names}
        result.checkpoints[name] = save_atomic(state, self.checkpoint_dir / f"{name}.pt")

    def _restore(self, last: dict, best: dict | None, result: FitResult) -> tuple[int, int]:
        """Load a last.pt (and best.pt) state: returns (first epoch to run, epochs since best)."""
        self.net.load_state_dict(last["model"])
        self.optimizer.load_state_dict(last["optimizer"])
        if self.scheduler is not None and last.get("scheduler") is not None:
            self.scheduler.load_state_dict(last["scheduler"])
        self.scaler.load_state_dict(last["scaler"])
        torch.set_rng_state(last["rng"])
        self.bad_images.update(last.get("bad_images", {}))
        result.history = list(last["history"])
        result.best_epoch, result.best_score = last["best_epoch"], last["best_score"]
        if best is not None and "val" in best:
            v = best["val"]
            result.best_probs, result.best_targets, result.best_names = v["probs"], v["targets"], list(v["names"])
        for name in ("best", "last"):
            path = self.checkpoint_dir / f"{name}.pt" if self.checkpoint_dir else None
            if path is not None and path.exists():
                result.checkpoints[name] = path
        log.info("resuming after epoch %d (best val/mAP %.4f at epoch %d)", last["epoch"], result.best_score,
                 result.best_epoch)
        return last["epoch"] + 1, last.get("since_best", 0)

    def fit(self, train_loader, val_loader, resume: dict | None = None, resume_best: dict | None = None) -> FitResult:
        """Train for ``cfg.epochs``; ``resume`` (a last.pt state) continues an interrupted run exactly."""
        cfg = self.cfg
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.epochs, self._limit(train_loader))
        result = FitResult()
        first, since_best = self._restore(resume, resume_best, result) if resume else (1, 0)
        epoch = 0
        try:
            for epoch in range(first, cfg.epochs + 1):
                extra = (self.before_epoch(epoch) if self.before_epoch else None) or {}
                lr = self.optimizer.param_groups[0]["lr"]
                start = time.perf_counter()
                row = self.train_epoch(train_loader, epoch)
                probs, targets, val_loss, names = self.predict(val_loader)
                scores = M.compute(probs, targets, classes=self.classes)
                row.update({"val/loss": val_loss, **{f"val/{k}": v for k, v in scores.items()},
                            "lr": lr, "time/epoch_s": time.perf_counter() - start, **extra})
                result.history.append({"epoch": epoch, **row})
                improved = scores[M.OBJECTIVE] > result.best_score
                if improved:
                    result.best_epoch, result.best_score = epoch, scores[M.OBJECTIVE]
                    result.best_probs, result.best_targets, result.best_names = probs, targets, names
                    since_best = 0
                else:
                    since_best += 1
                log.info("epoch %d/%d train/loss %.4f val/loss %.4f val/mAP %.4f val/f1_micro %.4f (%.1fs)%s",
                         epoch, cfg.epochs, row["train/loss"], val_loss, scores["mAP"], scores["f1_micro"],
                         row["time/epoch_s"], " *best*" if improved else "")
                if self.reporter is not None:
                    self.reporter.log_metrics(row, step=epoch)
                if improved:
                    self._checkpoint("best", epoch, result, since_best)
                self._checkpoint("last", epoch, result, since_best)
                if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
                    log.info("early stop: val/mAP has not improved for %d epochs", since_best)
                    result.stopped_early = True
                    break
                if self.stop_event.is_set():
                    raise TrainingInterrupted(f"stop requested after epoch {epoch}")
        except TrainingInterrupted:
            log.warning("training interrupted in epoch %d; %s holds the last finished epoch", epoch,
                        result.checkpoints.get("last", "no checkpoint (none finished)"))
            raise
        return result
