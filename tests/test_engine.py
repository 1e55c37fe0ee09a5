import pytest
import torch

from mlabel_exp.config import SchedulerConfig
from mlabel_exp.errors import ConfigError
from mlabel_exp.training.optim import build_optimizer, build_scheduler
from mlabel_exp.runtime.precision import select_device
from mlabel_exp.fsutil import save_atomic


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def dies_mid_write(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. the job is killed while writing

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _lrs(cfg, epochs=4, steps=5):
    opt = build_optimizer("sgd", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0, weight_decay=0)
    sched = build_scheduler(cfg, opt, epochs, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_rises_then_decays_to_the_floor():
    lrs = _lrs(SchedulerConfig(name="cosine", warmup_epochs=1, min_lr_scale=0.01))
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])) and 0.01 <= lrs[-1] < 0.03  # floor after the last step


def test_step_and_none_schedules():
    assert _lrs(SchedulerConfig(name="step", step_size=2, gamma=0.5))[::5] == pytest.approx([1, 1, 0.5, 0.5])
    assert set(_lrs(SchedulerConfig(name="none"))) == {1.0}


def test_onecycle_peaks_at_the_configured_lr():
    lrs = _lrs(SchedulerConfig(name="onecycle"))
    assert max(lrs) == pytest.approx(1.0, rel=0.05) and lrs[0] < 0.1 and lrs[-1] < 0.01


def test_optimizers_take_weight_decay_and_groups():
    p = torch.nn.Parameter(torch.zeros(2))
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)):
        opt = build_optimizer(name, [{"params": [p], "lr": 0.5}], lr=0.1, weight_decay=1e-3)
        assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 1e-3 and opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu_and_a_choice_is_honoured(monkeypatch, cuda, mps, expected):
    """Each machine is simulated (what torch reports), so every host checks every branch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"  # a choice wins over what is available
    if cuda:
        assert select_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name,setting,message", [
    ("cuda", "trainer.device", "trainer.device=cuda: this machine has no CUDA GPU "
                               "(torch.cuda.is_available() is False); use trainer.device=auto or cpu"),
    ("cuda:3", "trainer.device", "trainer.device=cuda:3: this machine has no CUDA GPU"),
    ("mps", "trainer.device", "trainer.device=mps: MPS is not available on this machine"),
    ("cuda", "device", "device=cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                       "use device=auto or cpu"),  # predict's setting
    ("gpu", "device", "device='gpu' is not a device: expected auto, cpu, cuda, cuda:N or mps"),
])
def test_a_device_that_is_not_there_is_one_line_naming_the_setting_and_the_fix(monkeypatch, name, setting, message):
    """A CPU-only machine is simulated, so every host checks the message (at first use it was a 36-line traceback)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        select_device(name, setting)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_cuda_index_beyond_the_gpus_there_names_how_many_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:3: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        select_device("cuda:3")


def _estimate_after(monkeypatch, caplog, seconds_per_step: float, device: str = "cpu", **kw):
    """The estimate's log after its first steps, with a clock that advances ``seconds_per_step`` a step."""
    from mlabel_exp.training import progress

    clock = iter(range(0, 10_000))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock) * seconds_per_step)
    estimate = progress.RunEstimate(torch.device(device), **kw)
    caplog.set_level("INFO", logger="mlabel_exp.training.progress")
    for i in range(1, kw["train_steps"] + 1):
        estimate.step(i)
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_the_time_estimate_counts_training_and_validation_and_warns_of_a_long_cpu_run(monkeypatch, caplog):
    # 1.2 s a step: an epoch is 100 steps + 30 validation batches at a third of a step = 132 s; 40 epochs = 88 min
    said = _estimate_after(monkeypatch, caplog, 1.2, train_steps=100, val_steps=30, epochs_left=40)
    assert said[0] == ("INFO", "estimated 2.2 min per epoch, 88.0 min for the 40 epoch(s) to go "
                               "(early stopping may end it sooner)")
    assert said[1][0] == "WARNING" and "about 88.0 min" in said[1][1] and "trainer=smoke" in said[1][1]
    assert len(said) == 2  # said once


def test_no_estimate_for_a_short_run_nor_a_warning_on_a_gpu(monkeypatch, caplog):
    assert _estimate_after(monkeypatch, caplog, 0.01, train_steps=100, val_steps=30, epochs_left=2) == []
    caplog.clear()
    said = _estimate_after(monkeypatch, caplog, 2.0, device="cuda", train_steps=100, val_steps=30, epochs_left=40)
    assert [level for level, _ in said] == ["INFO"]
