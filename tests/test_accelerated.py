"""The engine's speed options: torch.compile (CPU and CUDA), and AMP, channels_last and the device-side batch
transform on CUDA. The CUDA tests run where a GPU is present and are skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.images import BatchTransform, image_steps, load_image
from mlabel_exp.data.loaders import CachedImages, make_loader
from mlabel_exp.runtime import precision
from mlabel_exp.training import trainer as engine
from mlabel_exp.data import cache as image_cache
from mlabel_exp.models.backbones import SmallCNN
from mlabel_exp.config import SchedulerConfig, TrainerConfig

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _smallcnn(channels=(16, 32, 64, 128)):
    return SmallCNN(14, channels)


def _fit(synthetic_root, tmp_path, device: str, perturb: bool = False, channels=(16, 32, 64, 128), **trainer):
    """Two short epochs of smallcnn (``channels``: its blocks) on the cached synthetic set; returns the FitResult and
    the trainer.

    SGD, not Adam: Adam's first steps move each weight by about lr * sign(gradient), so a rounding-level change of
    a near-zero gradient becomes a full step, and two correct runs diverge by far more than their arithmetic does.
    ``perturb`` moves every initial weight by one float32 ulp: the smallest change the inputs of a run can have."""
    index = build_index(synthetic_root)
    cache = image_cache.open_or_build(index, 32, tmp_path / "cache")
    rows = np.arange(len(index))
    train = make_loader(CachedImages.from_index(cache, index, rows[:200]), 16, shuffle=True, num_workers=0)
    val = make_loader(CachedImages.from_index(cache, index, rows[200:]), 16, shuffle=False, num_workers=0)
    torch.manual_seed(0)
    net = _smallcnn(channels)
    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
    cfg = TrainerConfig(epochs=2, batch_size=16, progress="none", max_steps_per_epoch=4,
                        scheduler=SchedulerConfig(name="none"), **trainer)
    t = engine.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), cfg, device=torch.device(device),
                       classes=index.classes, checkpoint_dir=tmp_path / "ckpt",
                       batch_transform=BatchTransform(32, hflip=True))
    return t.fit(train, val), t


def _losses(result) -> np.ndarray:
    return np.array([h[k] for h in result.history for k in ("train/loss", "val/loss")])


def _loads_into_a_plain_model(result, channels=(16, 32, 64, 128)) -> None:
    state = torch.load(result.checkpoints["last"], map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)  # the compiled wrapper is not what is saved
    _smallcnn(channels).load_state_dict(state)


@pytest.mark.integration
def test_compiled_training_on_cpu_matches_eager(synthetic_root, tmp_path):
    """Compiled kernels round differently from eager ones (and differently on each CPU), so the tolerance is measured
    in the same run. The floor: how far the losses move when every initial weight moves by one float32 ulp. Compiled
    kernels perturb by rounding at every optimizer step, not once; a perturbation made later has fewer steps left to
    grow, so the steps together move the losses by at most (number of steps) x the floor. A compiled model that
    computed something else (another mode, a dropped layer) misses by orders of magnitude.
    Two of smallcnn's four blocks: the same layers, and half of the cold compile time (C++ kernels on 2 cores)."""
    two_blocks = (16, 32)
    eager, _ = _fit(synthetic_root, tmp_path / "eager", "cpu", channels=two_blocks)
    nudged, _ = _fit(synthetic_root, tmp_path / "nudged", "cpu", perturb=True, channels=two_blocks)
    compiled, t = _fit(synthetic_root, tmp_path / "compiled", "cpu", compile=True, channels=two_blocks)
    assert t.model is not t.net
    reference = _losses(eager)
    noise_floor = np.max(np.abs(_losses(nudged) - reference) / reference)
    assert noise_floor > 0  # the nudge reached the losses: the floor is a real measurement
    steps = 2 * 4  # epochs x max_steps_per_epoch
    assert np.max(np.abs(_losses(compiled) - reference) / reference) <= steps * noise_floor
    _loads_into_a_plain_model(compiled, two_blocks)


@pytest.mark.integration
@cuda_only
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_amp_channels_last_and_compile(synthetic_root, tmp_path, dtype):
    result, t = _fit(synthetic_root, tmp_path, "cuda", amp_dtype=dtype, compile=True)
    assert t.amp_dtype == getattr(torch, dtype) and t.update.scaler.is_enabled() == (dtype == "float16")
    assert all(np.isfinite(h["train/loss"]) and 0 <= h["val/mAP"] <= 1 for h in result.history)
    assert result.best_probs.device.type == "cpu" and len(result.best_probs) == 4 * 16  # max_steps_per_epoch batches
    _loads_into_a_plain_model(result)


@cuda_only
def test_batch_transform_on_cuda_matches_cpu(synthetic_root):
    index = build_index(synthetic_root)
    x = torch.stack([image_steps(48)(load_image(p)) for p in index.paths(range(8))])
    t = BatchTransform(48, hflip=True)
    assert torch.allclose(t(x.cuda()).cpu(), t(x), atol=1e-5)
    t.set_epoch(2)
    a = t(x.cuda(), train=True)
    t.set_epoch(2)
    assert torch.equal(t(x.cuda(), train=True), a)


@pytest.mark.parametrize("value,native", [("1", True), ("0", False)])
def test_the_cpu_bfloat16_detection_can_be_pinned_and_a_bad_value_is_named(monkeypatch, value, native):
    """$MLABEL_EXP_CPU_BF16 makes any CPU run as one with (1) or without (0) bfloat16 instructions: how the suite runs
    the same tests everywhere, and how a user reproduces another machine's precision."""
    from mlabel_exp.errors import ConfigError

    monkeypatch.setenv(precision.CPU_BF16_ENV, value)
    assert precision.cpu_computes_bf16() is native
    assert precision.precision(TrainerConfig(), torch.device("cpu")) == ("bfloat16 autocast" if native else "float32")
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="MLABEL_EXP_CPU_BF16='yes' is invalid"):
        precision.cpu_computes_bf16()


@pytest.mark.parametrize("native", [True, False])
def test_cpu_training_autocasts_to_bfloat16_only_where_the_cpu_computes_it(monkeypatch, native):
    """trainer.amp=true (the default) means mixed precision where the hardware does it natively: on a CPU with
    bfloat16 instructions the convolutions run in bfloat16 (about twice float32's speed there), on one without
    (emulated: slower than float32) everything stays float32; trainer.amp=false is float32 everywhere."""
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert precision.precision(TrainerConfig(), cpu) == ("bfloat16 autocast" if native else "float32")
    assert precision.precision(TrainerConfig(amp=False), cpu) == "float32"
    assert precision.precision(TrainerConfig(amp_dtype="float16"), cpu) == "float32"  # no native float16 on CPUs
    net = _smallcnn((8,))
    seen = []
    net.features[0][0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    t = engine.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), TrainerConfig(progress="none", checkpoint=False),
                       device=cpu, classes=[str(i) for i in range(14)])
    batch = {"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), "target": torch.zeros(4, 14)}
    loss = t._step(batch)
    t.predictor.logits(batch["image"])
    expected = torch.bfloat16 if native else torch.float32
    assert seen == [expected, expected] and loss.dtype == torch.float32  # the loss is always float32
    assert t.checkpoints.metadata["amp_dtype"] == str(expected).removeprefix("torch.")
