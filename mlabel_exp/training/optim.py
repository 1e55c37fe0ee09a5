"""Settings -> optimizer and per-step LR schedule; a schedule that a resumed run stretches or shortens
(``change_length``) without replaying it."""

from __future__ import annotations

import functools
import math

from mlabel_exp.config import OPTIMIZERS, Config, SchedulerConfig, one_of


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
    head = head_parameter_names(model, cfg.model.key)
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
    remaining steps (OneCycle.stretch), so the LR and momentum go on from where they are, without a jump; a cycle that
    has ended (a finished run trained longer: nothing left to spread, its LR near 0) is instead laid over the whole
    new length, as cosine is: from this step on the LR is where the longer cycle would be."""
    step, groups = scheduler.last_epoch, scheduler.optimizer.param_groups
    before = groups[0]["lr"]
    what = f"trainer.epochs {planned} -> {epochs} at step {step}"
    if isinstance(scheduler, _one_cycle()):
        end, ended = scheduler.end, step >= scheduler.end - 1
        scheduler.stretch(epochs * steps_per_epoch, whole=ended)
        if ended:
            scheduler.last_epoch -= 1  # this step again: its LR and momentum on the longer cycle, set now
            scheduler.step()
            return (f"{what}: onecycle had ended, so its cycle is stretched over the {epochs} epochs from the start: "
                    f"the LR goes from {before:.4g} to {groups[0]['lr']:.4g}, where the stretched cycle is at this step")
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

        def stretch(self, end: int, whole: bool = False) -> None:
            """From the current step k on, step s runs where step k + (s - k) * (old end - 1 - k) / (end - 1 - k) of the
            schedule so far would: the last step of the run is the last of the cycle, and nothing jumps at k.
            ``whole``: the schedule so far is laid over all ``end`` steps instead (k = 0), for a cycle that has ended."""
            self.stretches.append([0 if whole else self.last_epoch, self.end, end])

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


class OptimizerStep:
    """One update from a loss: the optimizer, its per-step LR schedule (or None) and the loss scaler (enabled for
    float16 only: bfloat16 needs no scaling, and so no per-step check of the gradients on the host), stepped and
    saved together (last.pt's "optimizer", "scheduler" and "scaler")."""

    def __init__(self, optimizer, scheduler=None, *, device_type: str = "cpu", scale_loss: bool = False):
        import torch

        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(device_type, enabled=scale_loss)

    def __call__(self, loss) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()

    @property
    def lr(self) -> float:
        """The LR of the first parameter group (the head's), as the next step uses it."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
