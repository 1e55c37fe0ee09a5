"""A run's exported ONNX model, logged under the run through MLflow's ONNX flavor (``onnx_model``), so that it can be
registered and served like the run's pyfunc model: float32 NCHW images in, one probability per class out, the class
names, thresholds and preprocessing in the MLmodel's metadata as in the file's own."""

from __future__ import annotations

from mlabel_exp.tracking.client import client, quiet_downloads, resolve_uri
from mlabel_exp.tracking.pyfunc import _no_requirements_scan

NAME = "onnx_model"


def log_onnx_model(uri: str | None, run_id: str, proto, meta: dict[str, str]) -> str:
    """Log ``proto`` (an onnx ModelProto carrying its metadata) into the finished run ``run_id``; returns the model's
    URI. The run keeps its status and end time (logging into it reopens it for the call)."""
    import mlflow
    import onnx
    import onnxruntime

    uri = resolve_uri(uri)
    store = client(uri)
    before = store.get_run(run_id).info
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id), quiet_downloads(), _no_requirements_scan():
            info = mlflow.onnx.log_model(
                proto, name=NAME, signature=_signature(proto), save_as_external_data=False, metadata=meta,
                onnx_execution_providers=["CPUExecutionProvider"],  # what the parity check ran
                pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}", "numpy"])
    finally:
        if before.status != "RUNNING":
            store.set_terminated(run_id, before.status, before.end_time)
    return info.model_uri


def _signature(proto):
    """float32 (batch, 3, size, size) named as the graph's input; float32 (batch, classes) as its output."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def shape(value) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)

    (inp,), (out,) = proto.graph.input, proto.graph.output
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape(inp), inp.name)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), shape(out), out.name)]))
