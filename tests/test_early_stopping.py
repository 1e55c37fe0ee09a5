"""The Trainer's epoch bookkeeping on CPU, without MLflow or Hydra: early stopping (patience, best epoch,
``stopped_early``), best-checkpoint selection, and the patience counter across a resume.

The validation score of each epoch is scripted (``metrics.compute`` is replaced), so the expected best
epoch and stopping epoch follow from the script alone.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mlabel_exp import engine
from mlabel_exp.config import TrainerConfig

N_CLASSES = 3


def _loader(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    items = [{"image": torch.rand(4, generator=g), "target": (torch.rand(N_CLASSES, generator=g) > 0.5).float(),
              "name": f"im{i}.jpg"} for i in range(n)]

    def collate(batch):
        out = torch.utils.data.default_collate(batch)
        out["bad"] = []
        return out

    return DataLoader(items, batch_size=4, shuffle=False, collate_fn=collate)


class _Recorder:
    """A reporter that keeps a copy of the weights as each epoch ends (before its checkpoint is written)."""

    def __init__(self, net):
        self.net, self.weights = net, {}

    def log_metrics(self, metrics, step):
        self.weights[step] = {k: v.clone() for k, v in self.net.state_dict().items()}


def _trainer(tmp_path, epochs: int, patience: int):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, N_CLASSES)
    cfg = TrainerConfig(epochs=epochs, early_stopping_patience=patience, progress="none", device="cpu")
    recorder = _Recorder(net)
    t = engine.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg, device=torch.device("cpu"),
                       classes=[f"c{i}" for i in range(N_CLASSES)], reporter=recorder, checkpoint_dir=tmp_path)
    return t, recorder


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(*scores)``: the next epochs' val mAPs, one per validation, in order."""
    queue: list[float] = []

    def compute(probs, targets, thresholds=0.5, classes=None):
        return {"mAP": queue.pop(0), "f1_micro": 0.0}

    monkeypatch.setattr(engine.M, "compute", compute)

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
