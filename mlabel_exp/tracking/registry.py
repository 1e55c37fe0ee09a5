"""The model registry of the store: a run's logged model as a new version of a registered model, with an alias."""

from __future__ import annotations

import contextlib
import io
import logging

from mlabel_exp.errors import ConfigError
from mlabel_exp.tracking.client import client, resolve_uri

log = logging.getLogger(__name__)


def register_model(uri: str | None, model_uri: str, name: str, alias: str | None = None) -> int:
    """A new version of the registered model ``name`` from ``model_uri`` (runs:/<id>/model or models:/...) in the
    store at ``uri``; ``alias`` (e.g. champion) moved to it. Returns the version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints two lines of its own; ours follows
            version = int(mlflow.register_model(model_uri, name).version)
    except MlflowException as e:
        raise ConfigError(f"cannot register {model_uri} as {name!r}: {e.message} (a run logs its model with "
                          "tracking.log_model=true)") from e
    if alias:
        client(uri).set_registered_model_alias(name, alias, str(version))
    log.info("registered model %s version %d%s: models:/%s/%d", name, version,
             f", alias @{alias}" if alias else "", name, version)
    return version
