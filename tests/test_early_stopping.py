"""The Trainer's epoch bookkeeping on CPU, without MLflow or Hydra: early stopping (patience, best epoch,
``stopped_early``), best-checkpoint selection, its state round trip, and the patience counter across a resume.

The validation score of each epoch is scripted (``metrics.compute`` is replaced), so the expected best
epoch and stopping epoch follow from the script alone.
"""

from __future__ import annotations

import pytest
import torch

from mlabel_exp.metrics import scores as metrics
from mlabel_exp.metrics import thresholds
from mlabel_exp.config import TrainerConfig
from mlabel_exp.data.loaders import make_loader
from mlabel_exp.training import trainer as engine
from mlabel_exp.training.callbacks import Callbacks, TrainingInterrupted
from mlabel_exp.training.optim import build_scheduler

N_CLASSES = 3


def _loader(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = [{"image": torch.rand(4, generator=g), "target": (torch.rand(N_CLASSES, generator=g) > 0.5).float(),
              "name": f"im{i}.jpg"} for i in range(n)]
    return make_loader(items, 4, shuffle=False, num_workers=0)


class _Recorder(Callbacks):
    """Keeps a copy of the weights as each epoch ends (before its checkpoint is written), and tunes thresholds on each
    new best epoch, as a run's callbacks do."""

    def __init__(self, net):
        self.net, self.weights, self.new_best = net, {}, []

    def on_new_best(self, epoch, probs, targets):
        self.new_best.append(epoch)
        return thresholds.tune_thresholds(probs, targets)

    def on_epoch_end(self, epoch, metrics):
        self.weights[epoch] = {k: v.clone() for k, v in self.net.state_dict().items()}


def _trainer(tmp_path, epochs: int, patience: int):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, N_CLASSES)
    cfg = TrainerConfig(epochs=epochs, early_stopping_patience=patience, progress="none", device="cpu")
    recorder = _Recorder(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs, len(_loader()))  # onecycle, as a run's
    t = engine.Trainer(net, optimizer, cfg, device=torch.device("cpu"), classes=[f"c{i}" for i in range(N_CLASSES)],
                       callbacks=recorder, checkpoint_dir=tmp_path, scheduler=scheduler)
    return t, recorder


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(*scores)``: the next epochs' val mAPs, one per validation, in order."""
    queue: list[float] = []

    def compute(probs, targets, thresholds=0.5, classes=None, **_):
        return {"mAP": queue.pop(0), "f1_micro": 0.0}

    monkeypatch.setattr(metrics, "compute", compute)

    def script(*scores: float) -> None:
        queue[:] = scores

    return script


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_patience_stops_after_that_many_epochs_without_improvement(tmp_path, scripted):
    scripted(0.3, 0.5, 0.4, 0.45, 0.6)  # the 0.6 of epoch 5 is never reached
    t, rec = _trainer(tmp_path, epochs=5, patience=2)
    result = t.fit(_loader(), _loader(seed=1))
    assert result.stopped_early and [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_score) == (2, 0.5)
    best, last = _load(result.checkpoints["best"]), _load(result.checkpoints["last"])
    assert (best["epoch"], last["epoch"]) == (2, 4) and last["since_best"] == 2
    for k, v in best["model"].items():  # best.pt holds the weights as epoch 2 ended, not later ones
        assert torch.equal(v, rec.weights[2][k]), k
    assert not torch.equal(best["model"]["weight"], last["model"]["weight"])


def test_a_tie_is_not_an_improvement(tmp_path, scripted):
    scripted(0.5, 0.5, 0.5)
    t, _ = _trainer(tmp_path, epochs=5, patience=2)
    result = t.fit(_loader(), _loader(seed=1))
    assert result.stopped_early and result.best_epoch == 1 and len(result.history) == 3


def test_no_patience_runs_every_epoch(tmp_path, scripted):
    scripted(0.9, 0.8, 0.7, 0.6)
    t, _ = _trainer(tmp_path, epochs=4, patience=0)
    result = t.fit(_loader(), _loader(seed=1))
    assert not result.stopped_early and len(result.history) == 4 and result.best_epoch == 1
    assert _load(result.checkpoints["best"])["epoch"] == 1 and _load(result.checkpoints["last"])["epoch"] == 4


def test_a_resumed_run_keeps_its_patience_counter_and_best_epoch(tmp_path, scripted):
    scripted(0.5, 0.4, 0.3, 0.2, 0.1)
    full, _ = _trainer(tmp_path / "full", epochs=5, patience=3)
    whole = full.fit(_loader(), _loader(seed=1))
    assert whole.stopped_early and len(whole.history) == 4 and whole.best_epoch == 1

    scripted(0.5, 0.4)  # the interrupted run: stopped after epoch 2 ...
    cut, _ = _trainer(tmp_path / "cut", epochs=2, patience=3)
    cut.fit(_loader(), _loader(seed=1))
    last, best = _load(tmp_path / "cut" / "last.pt"), _load(tmp_path / "cut" / "best.pt")
    assert last["since_best"] == 1
    scripted(0.3, 0.2, 0.1)  # ... and resumed to 5 epochs: it stops where the uninterrupted run did
    resumed, _ = _trainer(tmp_path / "cut", epochs=5, patience=3)
    result = resumed.fit(_loader(), _loader(seed=1), resume=last, resume_best=best)
    assert result.stopped_early and [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_score) == (1, 0.5)
    assert _load(tmp_path / "cut" / "best.pt")["epoch"] == 1


def test_state_dict_round_trips_into_a_fresh_trainer(tmp_path, scripted):
    scripted(0.5, 0.7, 0.6)
    t, _ = _trainer(tmp_path / "a", epochs=3, patience=5)
    t.fit(_loader(), _loader(seed=1))
    state = t.state_dict()
    fresh, _ = _trainer(tmp_path / "b", epochs=3, patience=5)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert {k: again[k] for k in ("epoch", "best_epoch", "best_score", "since_best", "history", "bad_images")} == \
        {"epoch": 3, "best_epoch": 2, "best_score": 0.7, "since_best": 1, "history": t.result.history, "bad_images": {}}
    for k, v in state["model"].items():
        assert torch.equal(again["model"][k], v), k
    assert torch.equal(again["rng"], state["rng"]) and again["scheduler"] == state["scheduler"]
    assert again["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()


@pytest.mark.precision
def test_best_checkpoint_holds_the_thresholds_tuned_on_its_epoch(tmp_path, scripted):
    from mlabel_exp.metrics.thresholds import tune_thresholds

    scripted(0.5, 0.7, 0.6)
    t, recorder = _trainer(tmp_path, epochs=3, patience=0)
    result = t.fit(_loader(), _loader(seed=1))
    best = _load(result.checkpoints["best"])
    assert recorder.new_best == [1, 2]  # the hook that decides the thresholds is called on each new best epoch
    assert best["epoch"] == 2 and best["thresholds"] == result.thresholds
    assert best["thresholds"] == tune_thresholds(best["val"]["probs"], best["val"]["targets"])
    assert best["classes"] == ["c0", "c1", "c2"] and "thresholds" not in _load(result.checkpoints["last"])


class _StopInValidation(_Recorder):
    """A stop request that arrives while the model validates (a scheduler's warning during a long validation)."""

    def should_stop(self):
        return not self.net.training


@pytest.mark.parametrize("epochs,stops", [(2, True), (1, False)])
def test_a_stop_during_validation_ends_the_run_there_except_in_the_last_epoch(tmp_path, scripted, epochs, stops):
    """Validation checks for a stop at every batch, so a scheduler's warning leaves time to stop cleanly; the last
    epoch's validation runs to its end (only the closing evaluation is left)."""
    scripted(0.1, 0.2)
    t, recorder = _trainer(tmp_path, epochs=epochs, patience=0)
    t.callbacks = _StopInValidation(t.net)
    if stops:
        with pytest.raises(TrainingInterrupted, match="during validation"):
            t.fit(_loader(), _loader(seed=1))
        assert t.epoch == 0 and not (tmp_path / "last.pt").exists()  # epoch 1 never finished: nothing to resume
    else:
        assert t.fit(_loader(), _loader(seed=1)).best_epoch == 1 and (tmp_path / "last.pt").exists()
