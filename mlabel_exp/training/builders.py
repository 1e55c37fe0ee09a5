"""Config -> training objects: the decoded-image cache decision, data loaders, optimizer and LR schedule.

The one place where settings become objects, so that ``run.train`` only wires them together.
"""

from __future__ import annotations

import functools
import logging
import math

from mlabel_exp.config import OPTIMIZERS, Config, SchedulerConfig, one_of

log = logging.getLogger(__name__)


def build_optimizer(name: str, param_groups: list[dict], lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999), fused: bool = False):
    """``fused`` (CUDA parameters only): Adam/AdamW update every parameter in one kernel, not a few per tensor."""
    import torch

    extra = {"fused": True} if fused else {}
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **extra)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **extra)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               nesterov=nesterov and momentum > 0)
    raise ValueError(f"optimizer.name={name!r}: expected {one_of(OPTIMIZERS)}")


def optimizer(cfg: Config, model, cuda: bool = False):
    """All parameters in two groups (new head at optimizer.lr, backbone scaled), frozen ones included so
    that unfreezing later needs no new optimizer (parameters without gradients are skipped). On CUDA (the model
    already there) Adam/AdamW run fused: +6% images/s for resnet50 on an H200 (benchmarks/bench_gpu.py)."""
    from mlabel_exp.models.freeze import head_parameter_names

    o = cfg.optimizer
    head = head_parameter_names(model, cfg.model.name)
    groups = [{"params": [p for n, p in model.named_parameters() if n in head], "lr": o.lr},
              {"params": [p for n, p in model.named_parameters() if n not in head], "lr": o.lr * o.backbone_lr_scale}]
    return build_optimizer(o.name, [g for g in groups if g["params"]], o.lr, cfg.weight_decay,
                           o.momentum, o.nesterov, o.betas, fused=cuda)


def build_scheduler(cfg: SchedulerConfig, optimizer, epochs: int, steps_per_epoch: int):
    """A per-step LR schedule: none, cosine or step, with optional linear warm-up; or one-cycle."""
    import torch

    total = max(1, epochs * steps_per_epoch)
    if cfg.name == "onecycle":
        return _one_cycle()(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
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


def change_length(scheduler, name: str, planned: int, epochs: int, steps_per_epoch: int) -> str:
    """A resumed run whose trainer.epochs changed (``planned`` -> ``epochs``) continues its schedule from the step it
    is at, without replaying it. Returns the log line that says what happens to the LR.

    none, step, cosine (``scheduler`` built for ``epochs``): from this step on, the LR is the one a run planned for
    ``epochs`` from the start would have; a longer cosine therefore raises the LR to that curve (step and none do not
    depend on the length). onecycle: the phase it is in is kept and the rest of the cycle is spread over the new
    remaining steps (OneCycle.stretch), so the LR and momentum go on from where they are, without a jump."""
    step, groups = scheduler.last_epoch, scheduler.optimizer.param_groups
    before = groups[0]["lr"]
    what = f"trainer.epochs {planned} -> {epochs} at step {step}"
    if isinstance(scheduler, _one_cycle()):
        end = scheduler.end
        scheduler.stretch(epochs * steps_per_epoch)
        return (f"{what}: onecycle keeps its phase and spreads its remaining {max(end - step, 0)} steps over "
                f"{epochs * steps_per_epoch - step}: the LR goes on from {before:.4g} without a jump")
    lrs = [base * factor(step) for factor, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    change = f"stays {before:.4g}" if lrs[0] == before else f"goes from {before:.4g} to {lrs[0]:.4g}"
    return f"{what}: the {name} schedule continues as one planned for {epochs} epochs would; the LR {change}"


@functools.cache
def _one_cycle():
    """The OneCycle class (defined on first use: torch is imported only by what trains)."""
    import torch

    class OneCycle(torch.optim.lr_scheduler.OneCycleLR):
        """torch's one-cycle schedule, whose remaining part can be stretched over a longer run (``stretch``).
        Without a stretch it is OneCycleLR exactly; the stretches are part of its state (last.pt)."""

        def __init__(self, optimizer, max_lr, total_steps: int):
            self.stretches: list[list[int]] = []  # [at step, old end, new end] per change of length, oldest first
            super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps)

        @property
        def end(self) -> int:
            """The step the schedule now ends at (its total steps, after the stretches)."""
            return self.stretches[-1][2] if self.stretches else self.total_steps

        def stretch(self, end: int) -> None:
            """From the current step k on, step s runs where step k + (s - k) * (old end - 1 - k) / (end - 1 - k) of the
            schedule so far would: the last step of the run is the last of the cycle, and nothing jumps at k."""
            self.stretches.append([self.last_epoch, self.end, end])

        def planned_step(self, step: int) -> float:
            """The step of the original cycle that ``step`` runs at."""
            for at, old, new in reversed(self.stretches):
                if step > at:
                    step = at + (step - at) * max(old - 1 - at, 0) / max(new - 1 - at, 1)
            return min(step, self.total_steps)  # past the end (the value after the last step, never used): its end

        def get_lr(self):
            if not self.stretches:
                return super().get_lr()
            step = self.last_epoch
            self.last_epoch = self.planned_step(step)
            try:
                return super().get_lr()
            finally:
                self.last_epoch = step

    return OneCycle


class RunCallbacks:
    """The engine's Callbacks (engine.Callbacks) for a training run: the unfreezing schedule, reporting each epoch
    to the tracker and then to ``on_epoch`` (a search prunes there), and stopping on a StopRequest."""

    def __init__(self, cfg: Config, model, tracker, stop, on_epoch=None):
        from mlabel_exp.models.freeze import set_trainable

        m, t = cfg.model, cfg.trainer
        self.model, self.tracker, self.stop, self.on_epoch = model, tracker, stop, on_epoch
        self.name, self.unfreeze_at = m.name, t.unfreeze_at_epoch
        self.final = m.trainable if isinstance(m.trainable, str) else list(m.trainable)
        self.trainable = set_trainable(model, m.name, "head" if self.unfreeze_at else self.final)
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

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)

    def should_stop(self) -> bool:
        return self.stop.is_set()
