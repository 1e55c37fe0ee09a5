"""What a run saves where, once: ``<folder>/last.pt`` (everything a resume needs: the raw weights, trainer.ema's
average, the optimizer) and ``<folder>/best.pt`` (what predicting reads: the kept weights), written atomically; and
reading either back without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlabel_exp.errors import ConfigError
from mlabel_exp.fsutil import save_atomic


class Checkpoints:
    """A run's checkpoint files in ``folder`` (None: none are written). ``metadata`` (classes, config, preprocessing,
    the data record, ...) goes into each as given, except that best.pt leaves out the data record."""

    def __init__(self, folder: Path | None, metadata: dict[str, Any]):
        self.folder, self.metadata = folder, metadata
        self.paths: dict[str, Path] = {}  # "best" / "last" -> its file, once written (or found by ``find_existing``)

    def find_existing(self) -> None:
        """Record the files a resumed run's folder already holds."""
        for name in ("best", "last"):
            path = self.folder / f"{name}.pt" if self.folder else None
            if path is not None and path.exists():
                self.paths[name] = path

    def save_last(self, state: dict[str, Any]) -> Path | None:
        """last.pt: the trainer's whole state (Trainer.state_dict) and the metadata."""
        return self._save("last", {**state, **self.metadata})

    def save_best(self, model: dict, epoch: int, score: float, val: dict, thresholds: dict | None,
                  weights: str = "raw") -> Path | None:
        """best.pt: the best epoch's kept weights (``weights``: raw, or ema: trainer.ema's average), score, validation
        outputs (``val``: probs, targets, names) and thresholds. No optimizer state (twice the weights with Adam), which
        nothing reads from it; not the data record (every file name, label and content hash: for a resume, which reads
        last.pt), which would otherwise travel in the served and registered model."""
        metadata = {k: v for k, v in self.metadata.items() if k != "data"}
        return self._save("best", {"model": model, "weights": weights, "epoch": epoch, "best_score": score,
                                   **metadata, "val": val, "thresholds": thresholds})

    def best_weights(self, device: torch.device) -> dict | None:
        """The model state in best.pt, on ``device``; None when there is no best.pt."""
        best = self.paths.get("best")
        return None if best is None else torch.load(best, map_location=device, weights_only=True)["model"]

    def _save(self, name: str, state: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        self.paths[name] = save_atomic(state, self.folder / f"{name}.pt")
        return self.paths[name]


def load_checkpoint(path: Path) -> dict:
    """A mlabel-exp checkpoint, loaded without unpickling code; a missing, corrupt or foreign file is named."""
    if not path.is_file():
        raise ConfigError(f"checkpoint={str(path)!r}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:200]}); it may be "
                          "truncated or corrupt: use another checkpoint (best.pt or last.pt of the run)") from e
    for key in ("model", "classes", "config"):
        if key not in ckpt:
            raise ConfigError(f"{path} is not a mlabel-exp checkpoint: it has no {key!r} entry")
    return ckpt


def planned_epochs(state: dict[str, Any]) -> int | None:
    """The trainer.epochs a last.pt ``state``'s schedule was built for (older checkpoints: their config's)."""
    return state.get("planned_epochs", state.get("config", {}).get("trainer", {}).get("epochs"))
