"""What a run hooks into training: the hooks the Trainer calls (``Callbacks``), the two ways a hook ends training
(``TrainingInterrupted``, ``TrialPruned``), and a training run's own hooks (``RunCallbacks``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from mlabel_exp.config import Config

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

    def on_new_best(self, epoch: int, probs: torch.Tensor, targets: torch.Tensor) -> dict | None:
        """Epoch ``epoch`` scored the best val mAP so far; returns the thresholds decided on its validation outputs
        (FitResult.thresholds, kept in best.pt), or None."""
        return None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After validation (report the metrics; may raise TrialPruned)."""

    def on_steps(self, step: int, metrics: dict[str, float]) -> None:
        """Every trainer.log_every_steps training steps (and an epoch's last): ``metrics`` of training step ``step``,
        counted over the whole run (the LR a schedule set for it)."""

    def should_stop(self) -> bool:
        """Checked at every step: True ends training at that step boundary (TrainingInterrupted)."""
        return False


class RunCallbacks(Callbacks):
    """A training run's hooks: the unfreezing schedule, thresholds tuned on each new best epoch, reporting each epoch
    to the tracker and then to ``on_epoch`` (a search prunes there), and stopping on a StopRequest."""

    def __init__(self, cfg: Config, model, tracker, stop, on_epoch=None):
        from mlabel_exp.models.freeze import set_trainable

        m, t = cfg.model, cfg.trainer
        self.model, self.tracker, self.stop, self.on_epoch = model, tracker, stop, on_epoch
        self.name, self.unfreeze_at = m.key, t.unfreeze_at_epoch
        self.final = m.trainable if isinstance(m.trainable, str) else list(m.trainable)
        self.trainable = set_trainable(model, m.key, "head" if self.unfreeze_at else self.final)
        self.frozen_count = self.trainable

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        from mlabel_exp.models.freeze import set_trainable

        if self.unfreeze_at and epoch > self.unfreeze_at and self.trainable == self.frozen_count:  # also on resume
            self.trainable = set_trainable(self.model, self.name, self.final)
            log.info("epoch %d: unfreezing model.trainable=%s (%d trainable parameters)", epoch, self.final,
                     self.trainable)
        return {"trainable_params": float(self.trainable)}

    def on_train_mode(self, model) -> None:
        from mlabel_exp.models.freeze import keep_frozen_bn_in_eval

        keep_frozen_bn_in_eval(model)

    def on_new_best(self, epoch: int, probs, targets) -> dict:
        """Per-class and global thresholds tuned on the best epoch's validation outputs (thresholds.tune_thresholds)."""
        from mlabel_exp.metrics.thresholds import tune_thresholds

        return tune_thresholds(probs, targets)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)

    def on_steps(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=step)  # the one metric by training step, not by epoch: lr

    def should_stop(self) -> bool:
        return self.stop.is_set()
