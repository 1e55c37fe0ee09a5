"""A run's model as an MLflow pyfunc model at runs:/<id>/model: MLflow's "models from code", whose code is
pyfunc_model.py (a batch of images as bytes -> per-class probabilities, the labels at the run's thresholds, a per-row
error), with the run's best.pt as its one artifact."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from mlabel_exp.config import PACKAGE_DIR
from mlabel_exp.tracking.client import quiet_downloads


def log_model(client, uri: str, run_id: str, checkpoint: Path, classes: list[str],
              timm: bool = False) -> tuple[str, str]:
    """Log the pyfunc model of ``checkpoint`` into run ``run_id`` of the store at ``uri`` (``client``: its client;
    ``timm``: the model is a timm model). Returns the model's URI and where the store keeps its files."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with (mlflow.start_run(run_id=run_id), quiet_downloads(), _no_requirements_scan(), warnings.catch_warnings()):
        # The signature is given explicitly (bytes in, one probability per class out), so MLflow's advice to add
        # type hints or an input example (to infer one) does not apply: that is noise, and only that is silenced.
        for noise in ("Add type hints to the `predict` method", "input example was not provided"):
            warnings.filterwarnings("ignore", message=f".*{noise}.*")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"checkpoint": str(checkpoint)}, signature=_signature(classes), code_paths=[str(PACKAGE_DIR)],
            pip_requirements=_requirements(timm))
    return info.model_uri, client.get_logged_model(info.model_id).artifact_location


def _signature(classes: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                          outputs=Schema([*(ColSpec("double", c) for c in classes), ColSpec("string", "labels"),
                                          ColSpec("string", "error")]))


def _requirements(timm: bool = False) -> list[str]:
    """Given, so that MLflow infers none: torch and torchvision (and timm for a timm model) pinned at the versions
    that trained the model."""
    import torch
    import torchvision

    pinned = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    if timm:
        from importlib.metadata import version

        pinned.append(f"timm=={version('timm')}")
    return [*pinned, "pillow", "numpy", "pandas", "omegaconf"]


def _no_requirements_scan():
    """MLflow checks a model's pip requirements against this environment by indexing the files of every installed
    distribution (importlib_metadata.packages_distributions: ~1 s, most of log_model). Ours are read from this very
    environment (torch and torchvision at their installed versions, the rest unpinned dependencies of this package),
    so that check cannot find a mismatch: it is skipped for our call.

    MLflow (3.17) offers no public way to skip it: giving ``pip_requirements`` (as we do) only skips the inference,
    ``conda_env`` runs the same check, and MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK governs another check (pip's dry run).
    So the internal function is replaced for our call only; should MLflow move it, nothing breaks (the check runs
    again), and the test that guards this speed fails."""
    from unittest import mock

    from mlflow.utils import environment

    check = "warn_dependency_requirement_mismatches"
    if not hasattr(environment, check):
        return contextlib.nullcontext()
    return mock.patch.object(environment, check, lambda requirements: None)
