"""Weight averaging (``trainer.ema``): an exponential moving average of the weights, updated after every optimizer
step and validated beside the raw weights each epoch; the run keeps the better of the two (docs/recipes.md).

torch's own ``AveragedModel`` with ``get_ema_multi_avg_fn`` (one fused lerp per device and dtype) and
``use_buffers=True``: BatchNorm's running statistics are averaged with the weights, as timm's ModelEma and the
ML-Decoder recipe do, rather than recomputed by a pass over the training data (``update_bn``) before every
validation, which would cost about a training epoch without its backward pass each time.
"""

from __future__ import annotations

from mlabel_exp.config import ema_setting


def ema_decay(setting, steps_per_epoch: int) -> float | None:
    """The decay per step that trainer.ema asks for (None: off). A window of N steps is the decay 1 - 1/N, whose
    average gives the last N steps about 63% of its weight (0.9997: about 3,300 steps); N epochs are
    N x ``steps_per_epoch`` steps (the steps an epoch of this run takes: trainer.max_steps_per_epoch counts)."""
    parsed = ema_setting(setting)
    if parsed is None:
        return None
    kind, value = parsed
    if kind == "decay":
        return value
    steps = value * steps_per_epoch if kind == "epochs" else value
    return 1.0 - 1.0 / max(steps, 1.0)


class WeightAverage:
    """The average of ``net``'s parameters and buffers, updated from ``net`` in place after each optimizer step. Its
    ``module`` has ``net``'s architecture and state-dict keys, so best.pt holds either without telling them apart.
    The step counter stays on the CPU, where the copy-or-average test after each step costs no device sync."""

    def __init__(self, net, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.net, self.decay = net, decay
        self.averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)  # no device=

    @property
    def module(self):
        return self.averaged.module

    def update(self) -> None:
        """After an optimizer step: the first call copies the weights, each later one moves the average 1 - decay of
        the way towards them."""
        self.averaged.update_parameters(self.net)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
