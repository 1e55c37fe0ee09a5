"""The engine's speed options: torch.compile (CPU and CUDA), and AMP, channels_last and the device-side batch
transform on CUDA. The CUDA tests run where a GPU is present and are skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlabel_exp import data as D
from mlabel_exp import engine, image_cache, models
from mlabel_exp.config import TrainerConfig

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fit(synthetic_root, tmp_path, device: str, **trainer):
    """Two short epochs of smallcnn on the cached synthetic set; returns the FitResult and the trainer."""
    index = D.build_index(synthetic_root)
    cache = image_cache.open_or_build(index, 32, tmp_path / "cache")
    rows = np.arange(len(index))
    train = D.make_loader(D.CachedImages.from_index(cache, index, rows[:200]), 16, shuffle=True, num_workers=0)
    val = D.make_loader(D.CachedImages.from_index(cache, index, rows[200:]), 16, shuffle=False, num_workers=0)
    torch.manual_seed(0)
    net = models.build_model("smallcnn", len(index.classes), input_size=32)
    cfg = TrainerConfig(epochs=2, batch_size=16, progress="none", max_steps_per_epoch=4, **trainer)
    t = engine.Trainer(net, torch.optim.AdamW(net.parameters(), lr=3e-3), cfg, device=torch.device(device),
                       classes=index.classes, checkpoint_dir=tmp_path / "ckpt",
                       batch_transform=D.BatchTransform(32, hflip=True))
    return t.fit(train, val), t


def _loads_into_a_plain_model(result, n_classes: int) -> None:
    state = torch.load(result.checkpoints["last"], map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)  # the compiled wrapper is not what is saved
    models.build_model("smallcnn", n_classes, input_size=32).load_state_dict(state)


@pytest.mark.slow
def test_compiled_training_on_cpu_matches_eager(synthetic_root, tmp_path):
    eager, _ = _fit(synthetic_root, tmp_path / "eager", "cpu")
    compiled, t = _fit(synthetic_root, tmp_path / "compiled", "cpu", compile=True)
    assert t.model is not t.net
    losses = [[h["train/loss"] for h in r.history] for r in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    _loads_into_a_plain_model(compiled, 14)


@cuda_only
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_amp_channels_last_and_compile(synthetic_root, tmp_path, dtype):
    result, t = _fit(synthetic_root, tmp_path, "cuda", amp_dtype=dtype, compile=True)
    assert t.amp_dtype == getattr(torch, dtype) and t.scaler.is_enabled() == (dtype == "float16")
    assert all(np.isfinite(h["train/loss"]) and 0 <= h["val/mAP"] <= 1 for h in result.history)
    assert result.best_probs.device.type == "cpu" and len(result.best_probs) == 4 * 16  # max_steps_per_epoch batches
    _loads_into_a_plain_model(result, 14)


@cuda_only
def test_batch_transform_on_cuda_matches_cpu(synthetic_root):
    index = D.build_index(synthetic_root)
    x = torch.stack([D.image_steps(48)(D.load_image(p)) for p in index.paths(range(8))])
    t = D.BatchTransform(48, hflip=True)
    assert torch.allclose(t(x.cuda()).cpu(), t(x), atol=1e-5)
    t.set_epoch(2)
    a = t(x.cuda(), train=True)
    t.set_epoch(2)
    assert torch.equal(t(x.cuda(), train=True), a)
