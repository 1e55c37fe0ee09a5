"""Data audit: ``python -m mlabel_exp.inspect [data=folder data.root=PATH] [out=DIR]``.

Class counts, unlabeled images, label cardinality, grayscale images, image sizes, class co-occurrence and every
problem found in one pass, grouped; figures a person reads at a glance in out= (positives per class, labels per image,
co-occurrence, images per split per class); with tracking on, the report and figures as a run tagged
mlabel.kind=audit in the data set's experiment; and the next command to run.
"""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import InspectConfig, project_root, resolve_path, validate
from mlabel_exp.data import audit_figures as fig
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.render.figures import save
from mlabel_exp.tracking.runs import log_audit


def figures(report, index, split: dict, out_dir) -> list:
    """The audit's four figures, saved as PNGs in ``out_dir``; returns their paths."""
    import numpy as np


    positive = (index.labels == 1)
    made = {
        "positives_per_class.png": fig.positives_per_class(index.classes, positive.sum(0), len(index)),
        "labels_per_image.png": fig.labels_per_image(positive.sum(1)),
        "cooccurrence.png": fig.cooccurrence(index.classes, report.cooccurrence.to_numpy()),
        "split_per_class.png": fig.split_per_class(
            index.classes, {f"{k} ({len(rows)} images)": positive[np.asarray(rows, dtype=int)].sum(0).tolist()
                            for k, rows in split.items() if len(rows)}),
    }
    return [save(figure, out_dir / name) for name, figure in made.items()]


def next_command() -> str:
    """``python -m mlabel_exp.run`` with the data settings this audit was given."""
    from hydra.core.hydra_config import HydraConfig

    try:
        given = [o for o in HydraConfig.get().overrides.task if o.split("=")[0].lstrip("+~").startswith("data")]
    except ValueError:  # not inside a Hydra job
        given = []
    return " ".join(["python -m mlabel_exp.run", *given])


def _main(cfg) -> None:
    import time

    from mlabel_exp.data.audit import audit, read_for_audit
    from mlabel_exp.data.split import split_from_config

    typed: InspectConfig = validate(cfg, InspectConfig)
    index, found = read_for_audit(typed.data)
    report = audit(index, decode=typed.data.verify_images, reader_findings=found)
    out = resolve_path(typed.out) if typed.out else \
        project_root() / "outputs" / "inspect" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    text = report.to_text()
    files = [write_atomic(out / "audit.txt", text + "\n"),
             *figures(report, index, split_from_config(index, typed.data), out)]
    print(text)
    print("\nFigures and report:", *(f"  {p}" for p in files), sep="\n")
    if typed.tracking.enabled:
        experiment = typed.tracking.experiment
        run_id = log_audit(typed.tracking, experiment, f"audit of {index.root.name}",
                           {"root": str(index.root), "images": len(index), "classes": len(index.classes),
                            "problems": len(report.findings)}, files)
        print(f"MLflow run: {run_id} (experiment {experiment!r}, tagged mlabel.kind=audit)")
    print(f"\nNext: {next_command()}")


def main() -> None:
    command(_main, "inspect", InspectConfig)()


if __name__ == "__main__":
    main()
