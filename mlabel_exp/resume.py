"""``resume=<run id>|latest``: find the interrupted run, load its checkpoints and give back its own config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import Config, ConfigError, validate


def resume_point(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """For ``resume=...``: the interrupted run's own config and its checkpoints."""
    from . import tracking
    from .predictor import load_checkpoint

    tracker = tracking.open_tracker(validate(cfg).tracking)
    run_id, tags = tracker.find_resumable(cfg.resume)
    folder = Path(tags.get("output_dir", "")) / "checkpoints"
    last = folder / "last.pt"
    if not last.is_file():
        raise ConfigError(f"resume={cfg.resume!r}: run {run_id} has no checkpoint at {last} "
                          "(it stopped before finishing its first epoch, or its output folder moved)")
    state = load_checkpoint(last)
    best = folder / "best.pt"
    original = OmegaConf.merge(OmegaConf.structured(Config), state["config"])  # typed, as when it started
    original.tracking = cfg.tracking           # where to find the run: as given now
    original.trainer.output_dir = str(folder.parent)
    original.resume = None
    return original, {"run_id": run_id, "last": state,
                      "best": load_checkpoint(best) if best.is_file() else None}
