"""Sweeps as MLflow sees them: a sweep's id, and what it varies (read from the multirun.yaml Hydra writes)."""

from __future__ import annotations

from pathlib import Path

def sweep_id_of(folder: str | Path) -> str:
    """A sweep's id: its output folder, which Hydra makes unique per `-m` invocation."""
    return str(Path(folder).resolve()).replace("/", "_").strip("_")


def swept(folder: Path | None) -> list[str]:
    """The overrides a ``-m`` sweep varies, as typed (``model=resnet50,vgg16,inception``), from the multirun.yaml
    Hydra writes into the sweep folder; [] outside a sweep (``folder`` None)."""
    from omegaconf import OmegaConf

    path = Path(folder) / "multirun.yaml" if folder else None
    if path is None or not path.is_file():
        return []
    overrides = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=[])
    return [o for o in overrides if "," in o or "(" in o.split("=", 1)[-1]]
