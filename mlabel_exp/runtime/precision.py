"""Device and precision rules, the one home: which device a setting means, what a run autocasts to there, and the
memory layout it trains in. Training, validation, predict and the pyfunc model all read them from here."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from mlabel_exp.config import DEVICES, one_of
from mlabel_exp.errors import ConfigError

if TYPE_CHECKING:  # the predictor and the pyfunc model import this module; the schema stays out of their import
    from mlabel_exp.config import TrainerConfig

#: Where channels_last pays: cuDNN, and oneDNN on the CPU (measured on smallcnn at 64 px, 2 cores: training 1.3x,
#: validation 1.5x the default layout; README, Performance).
CHANNELS_LAST_DEVICES = ("cuda", "cpu")


#: Overrides the CPU's bfloat16 detection: "1" runs as a CPU with bfloat16 instructions would (bfloat16 autocast,
#: emulated and slower where the instructions are missing, with the same arithmetic), "0" as one without (float32).
#: The test suite pins "0" so that every CPU runs the same suite, and runs its precision-sensitive tests again with
#: "1" (Makefile); a user can pin either to reproduce another machine's run.
CPU_BF16_ENV = "MLABEL_EXP_CPU_BF16"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _check_available(device: torch.device, setting: str) -> None:
    """A device this machine does not have is a setting to change, said in one line (not a traceback at first use)."""
    fix = f"use {setting}=auto or cpu"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={device}: this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                              f"{fix}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{setting}={device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                              f"use {setting}=cuda:N with N below {count}, or {setting}=auto")
    elif device.type == "mps" and not _mps_available():
        raise ConfigError(f"{setting}={device}: MPS is not available on this machine "
                          f"(torch.backends.mps.is_available() is False); {fix}")


def select_device(name: str = "auto", setting: str = "trainer.device") -> torch.device:
    """The device ``name`` means here (auto: CUDA, then MPS, then the CPU); one that is not there is a ConfigError
    naming ``setting``."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"{setting}={name!r} is not a device: expected {one_of(DEVICES)}") from None
        _check_available(device, setting)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN runs bfloat16 convolutions
    about twice as fast as float32. Elsewhere bfloat16 is emulated, slower than float32, and autocast stays off.
    $MLABEL_EXP_CPU_BF16 (CPU_BF16_ENV) overrides the detection."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ConfigError(f"{CPU_BF16_ENV}={forced!r} is invalid: expected 1 (run as a CPU with bfloat16 "
                          "instructions), 0 (as one without) or unset (detect)")
    # private in torch 2.x, hence looked up: a torch without them counts as "no"
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def autocast_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype to autocast in on ``device`` for a run that asks for ``dtype`` (float32: none): CUDA as asked; the
    CPU only bfloat16, and only where it computes it natively; float32 elsewhere (MPS)."""
    if dtype == torch.float32 or device.type == "cuda":
        return dtype
    return torch.bfloat16 if device.type == "cpu" and dtype == torch.bfloat16 and cpu_computes_bf16() else torch.float32


def amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """What trainer.amp=true trains in on ``device`` (float32: no autocast). CUDA: trainer.amp_dtype, where auto is
    bfloat16 if the GPU supports it (no loss scaling needed), else float16. CPU: bfloat16 where the CPU computes it
    natively (cpu_computes_bf16), else float32. MPS: float32."""
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
