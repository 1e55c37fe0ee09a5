"""An earlier run's diagnostics, without retraining: ``python -m mlabel_exp.diagnose run=<run>``; a run is named by its
id, any unique prefix of it, ``latest``, ``best`` or a sweep parent's id (its winning run). The work is
diagnostics.rerun's; this prints where the files are, the summary metrics, the weakest classes, the top confusions
and the rewritten report.html."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import DiagnoseConfig, validate


def findings(done) -> list[str]:
    """Per split: its weakest classes by AP (with their positives) and its top confusions."""
    lines = []
    for split in done.splits:
        if done.worst.get(split):
            lines.append(f"  weakest classes ({split} AP, positives): " + ", ".join(
                f"{c} {ap:.3f} ({n})" for c, ap, n in done.worst[split]))
        if done.confusions.get(split):
            lines.append(f"  top confusions ({split}, confusion_{split}.csv: class present -> class predicted although "
                         "absent, share of such images):")
            lines += [f"    {i} -> {j}: {share:.2f} of {n} images" for i, j, share, n in done.confusions[split]]
    return lines


def _main(cfg) -> None:
    from mlabel_exp.diagnostics.rerun import diagnose

    done = diagnose(validate(cfg, DiagnoseConfig))
    print(f"diagnostics of run {done.run_id} ({', '.join(done.splits)}): {done.folder}")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in done.metrics.items()))
    print("\n".join(findings(done)))
    if done.report is not None:
        print(f"report: {done.report} (rewritten)")
    if done.logged:
        print(f"  logged to run {done.run_id}: {done.folder.name}/ and report.html")


def main() -> None:
    command(_main, "diagnose", DiagnoseConfig, "diagnose_schema")()


if __name__ == "__main__":
    main()
