"""Sweeps as MLflow sees them: a sweep's id, what it varies (read from the multirun.yaml Hydra writes), and its parent
run: created by the first job that asks, closed by the process that launched the sweep with the winner on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlabel_exp.render.shell import module_command, override
from mlabel_exp.tracking.client import run_url, store_exists, store_lock, ui_command
from mlabel_exp.tracking.query import run_record
from mlabel_exp.tracking.runs import BEST_SCORE, KIND_TAG, Tracker


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


def _sweep_parent_query(sweep_id: str) -> str:
    """MLflow filter for the parent run of one sweep."""
    return f"tags.`{KIND_TAG}` = 'sweep' and tags.sweep_id = '{sweep_id}'"


def sweep_parent(tracker: Tracker, sweep_id: str, sweep_dir: str, name: str | None = None) -> str:
    """The parent run of a Hydra sweep in ``tracker``'s experiment, created by whichever job asks first.

    Jobs of one sweep run in other processes (joblib) or on other nodes (SLURM). On a local SQLite
    store the file lock makes creation one-at-a-time; on a server two jobs may both create one,
    so each then keeps the oldest parent and deletes its own extra.
    """
    query, store = _sweep_parent_query(sweep_id), tracker.client

    def parents():
        runs = store.search_runs([tracker.experiment_id], query, max_results=10)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    with store_lock(tracker.uri):
        found = parents()
        if found:
            return found[0].info.run_id
        name = name or f"sweep {Path(sweep_dir).name or sweep_id}"
        mine = store.create_run(tracker.experiment_id, run_name=name, tags={
            KIND_TAG: "sweep", "sweep_id": sweep_id, "sweep_dir": sweep_dir, "mlflow.runName": name})
    first = parents()[0].info.run_id
    if first != mine.info.run_id:
        store.delete_run(mine.info.run_id)
    return first


def end_sweep_parent(tracking_cfg, sweep_id: str, status: str, summary: str,
                     rank=None) -> tuple[list[dict[str, Any]], list, list[str]]:
    """Close a sweep's parent run (from the process that launched the sweep) with the winning setting on it.
    ``rank(children)``: the settings best first, each with ``name``, ``mean`` (best val mAP over seeds, repeats of a
    seed counted once), ``seeds``, ``values`` and ``runs`` (analysis.groups.rank_settings). The parent gets the winning
    setting's mean as its val mAP, its name as ``best_settings``, its best run as ``best_run_id`` (what run=<sweep>
    predicts with), and says so in its description. Returns the children, the settings, and where to look (the UI
    command for a local store, the parent's page)."""
    if not store_exists(tracking_cfg.uri):  # no job got as far as starting a run: no store to create now
        return [], [], []
    tracker = Tracker(tracking_cfg.uri, tracking_cfg.experiment, tracking_cfg.artifact_location)
    store, children, settings, parent = tracker.client, [], [], None
    for run in store.search_runs([tracker.experiment_id], _sweep_parent_query(sweep_id), max_results=10):
        parent = run.info.run_id
        found = store.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
        children = sorted((run_record(r) for r in found), key=lambda r: -r["metrics"].get(BEST_SCORE, float("-inf")))
        settings = rank(children) if rank is not None else []
        tags = {"summary": summary[:5000]}
        if settings:
            best = settings[0]
            store.log_metric(parent, BEST_SCORE, best.mean)
            tags |= _winner_tags(best, len(settings), len(children), summary, parent)
        for k, v in tags.items():
            store.set_tag(parent, k, v)
        store.set_terminated(parent, status)
    look = [] if tracker.uri.startswith(("http://", "https://")) else [f"look:  {ui_command(tracker.uri)}"]
    if parent is not None:
        look.append(f"sweep: {run_url(tracker.uri, tracker.experiment_id, parent)}")
    look.append(f"runs:  {run_url(tracker.uri, tracker.experiment_id)}")
    return children, settings, look


def _winner_tags(best, n_settings: int, n_runs: int, summary: str, parent: str) -> dict[str, str]:
    """The parent's tags naming the winning setting (not its luckiest seed), and its description."""
    top = max(best.runs, key=lambda r: r["metrics"].get(BEST_SCORE, float("-inf")))
    word = "folds" if getattr(best, "unit", "seed").startswith("fold") else "seeds"
    over = (f"mean val mAP {best.mean:.4f} over {len(best.seeds)} {word} "
            f"({', '.join(f'{v:.4f}' for v in best.values)})" if len(best.seeds) > 1
            else f"val mAP {best.mean:.4f}, one seed")
    note = (f"**Best setting of {n_settings}** ({n_runs} runs): {best.name} ({over}). Whether it is more than seed "
            f"noise: `{module_command('compare', override('sweep', parent[:8]))}`.")
    return {"best_settings": best.name, "best_setting_runs": " ".join(r["run_id"] for r in best.runs),
            "best_run_id": top["run_id"], "best_run_name": top["name"],
            "mlflow.note.content": f"{note}\n\n{summary[:2000]}"}
