"""Data audit (``python -m mlabel_exp.inspect [data=folder data.root=PATH] [out=DIR]``).

Class counts, background images (no label), label cardinality, grayscale images, image sizes, class co-occurrence and
every problem found in one pass, grouped, those that hurt training first (what the split leaves each class); figures
a person reads at a glance in out= (positives per class, labels per image, co-occurrence, images per split per
class); with tracking on, the report and figures as a run tagged
mlabel.kind=audit in the data set's experiment; and the next command to run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mlabel_exp.config import InspectConfig, project_root, resolve_path
from mlabel_exp.data.audit import audit, read_for_audit
from mlabel_exp.data.audit_figures import write_figures
from mlabel_exp.data.index import Problem
from mlabel_exp.data.split import split_from_config
from mlabel_exp.errors import UserError
from mlabel_exp.experiment.hydra_job import task_overrides
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.render.shell import module_command
from mlabel_exp.tracking.runs import log_audit


def next_command() -> str:
    """``python -m mlabel_exp.run`` with the data settings this audit was given, as they were typed (Hydra's syntax:
    its quotes kept), quoted for the shell: it runs as printed."""
    given = [o for o in task_overrides() if o.split("=")[0].lstrip("+~").startswith("data")]
    return module_command("run", *given)


@dataclass
class Inspected:
    """What an audit found and wrote: its report as text, the files, the audit's MLflow run (None: tracking off)."""
    text: str
    files: list[Path]
    run_id: str | None
    experiment: str | None
    next_command: str


def inspect(cfg: InspectConfig) -> Inspected:
    """Audit the data set ``cfg.data`` names: the report and figures in ``cfg.out`` (default outputs/inspect/<time>),
    and with tracking on an MLflow run tagged mlabel.kind=audit in the data set's experiment."""
    index, found = read_for_audit(cfg.data)
    try:
        split = split_from_config(index, cfg.data)  # the one a run makes of these settings: what it leaves each class
    except UserError as e:  # a stale data.split_file, a fold out of range: the audit of the data still helps
        split, found = None, [*found, Problem("split the settings cannot make", str(e), "", "the setting it names")]
    report = audit(index, decode=cfg.data.verify_images, reader_findings=found, split=split)
    out = resolve_path(cfg.out) if cfg.out else \
        project_root() / "outputs" / "inspect" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    text = report.to_text()
    files = [write_atomic(out / "audit.txt", text + "\n"), *write_figures(report, index, split, out)]
    run_id = experiment = None
    if cfg.tracking.enabled:
        experiment = cfg.tracking.experiment
        run_id = log_audit(cfg.tracking, experiment, f"audit of {index.root.name}",
                           {"root": str(index.root), "images": len(index), "classes": len(index.classes),
                            "problems": len(report.findings)}, files)
    return Inspected(text, files, run_id, experiment, next_command())
