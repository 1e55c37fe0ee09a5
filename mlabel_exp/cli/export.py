"""``python -m mlabel_exp.export run=<run> format=onnx``: a run's model as an ONNX file, checked against the run
(experiment.export); this prints the file, the parity check and where the model was logged."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import ExportConfig, validate
from mlabel_exp.errors import ParityError
from mlabel_exp.tracking.onnx_model import NAME

EXPORTER_NAMES = {"dynamo": "torch.onnx's dynamo exporter (torch.export)",
                  "legacy": "torch.onnx's legacy TorchScript-based exporter"}


def _main(cfg) -> None:
    from mlabel_exp.experiment.export import export

    try:
        done = export(validate(cfg, ExportConfig))
    except ParityError as e:  # what was measured, then the one-line error
        _report(e.result)
        raise
    _report(done)
    if done.model_uri:
        print(f"logged under run {done.run} as {NAME} (MLflow's ONNX flavor): {done.model_uri}")
    if done.registered is not None:
        name, version = done.registered
        print(f"registered as {name} version {version}: models:/{name}/{version}")


def _report(done) -> None:
    from mlabel_exp.inference.exported import OPSET

    tta = ", flip TTA in the graph" if done.tta == "flip" else ""
    print(f"exported with {EXPORTER_NAMES[done.exporter]}, opset {OPSET}, dynamic batch size{tta}: {done.path}")
    if done.computed_in != "float32":
        print(f"note: the run computed in {done.computed_in} autocast; the exported model computes in float32, and "
              "predict on the run autocasts where this CPU has bfloat16 instructions")
    print(done.parity.line("onnxruntime (CPUExecutionProvider)"))
    print(f"  tolerance: {done.parity.how}")
    for row in done.parity.label_differences[:10]:
        print("  label differs: {} {}: run {:.9g}, exported {:.9g}, threshold {:.9g}".format(*row))


def main() -> None:
    command(_main, "export", ExportConfig, "export_schema")()


if __name__ == "__main__":
    main()
