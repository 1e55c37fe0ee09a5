"""``python -m mlabel_exp.predict run=<run> input=<folder or glob>``: predictions on new images (experiment.predict),
with the labels of the first images printed, then where the files are."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import PredictConfig, validate

SHOWN = 20  # images whose labels predict prints


def _main(cfg) -> None:
    from mlabel_exp.experiment.predict import predict_job
    from mlabel_exp.floats import decide
    from mlabel_exp.inference.outputs import label_names

    done = predict_job(validate(cfg, PredictConfig))
    for name, hits in zip(done.files, decide(done.probs[:SHOWN], done.thresholds)):  # the labels at a glance
        print(f"  {name}: {', '.join(label_names(hits, done.classes)) or '(no label)'}")
    if len(done.files) > SHOWN:
        print(f"  ... {len(done.files) - SHOWN} more in predictions.csv")
    print(f"predicted {len(done.files)} image(s), skipped {len(done.skipped)} unreadable file(s); outputs in "
          f"{done.out_dir}")
    if done.logged_to:
        print(f"outputs logged to run {done.run} under {done.logged_to}/")


def main() -> None:
    command(_main, "predict", PredictConfig, "predict_schema")()


if __name__ == "__main__":
    main()
