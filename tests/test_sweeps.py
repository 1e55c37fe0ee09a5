"""End to end: `python -m mlabel_exp.run -m ...` in a subprocess, read back through MlflowClient."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import artifact_paths, mlflow_runs, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes


def run_sweep(tmp_path, *overrides, with_logs: bool = False, store: bool = True):
    tiny = [o for o in tiny_overrides(tmp_path, store=store) if not o.startswith("model.input_size")]  # own sizes
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *tiny, *overrides, f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return (*mlflow_runs(tmp_path), done.stdout + done.stderr) if with_logs else mlflow_runs(tmp_path)


def test_three_architectures_offline_fail_at_once_naming_each_weights_file(tmp_path, no_network):
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *tiny_overrides(tmp_path), "model=resnet50,vgg16,inception",
           "model.input_size=299", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    for file in ("resnet50-11ad3fa6.pth", "vgg16-397923af.pth", "inception_v3_google-0cc3c7bd.pth"):
        assert f"place {file} in {no_network}" in done.stdout + done.stderr, file
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()  # failed before any data was read


@pytest.mark.slow
def test_three_architectures_side_by_side(tmp_path, imagenet_weights):
    # each model at its own input size (224, 224, 299) through the whole job, from (stand-in) ImageNet weights in the
    # hub cache; one step each, only the new heads train and no checkpoint is written (vgg16's would be 0.5 GB)
    imagenet_weights("resnet50", "vgg16", "inception")
    client, runs = run_sweep(tmp_path, "model=resnet50,vgg16,inception", "trainer.epochs=1",
                             "trainer.max_steps_per_epoch=1", "trainer.batch_size=2", "model.trainable=head",
                             "trainer.checkpoint=false")
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    runs = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.tags["model"] for r in runs) == ["inception", "resnet50", "vgg16"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.info.experiment_id for r in runs}) == 1
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert sorted(r.data.tags["job_num"] for r in runs) == ["0", "1", "2"]
    for r in runs:
        assert {"train/loss", "val/loss", "val/mAP", "val/f1_micro", "val/f1_macro", "val/more/accuracy"} <= set(r.data.metrics)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/mAP")] == [1]
        files = artifact_paths(client, r.info.run_id)
        assert {"curves.png", "predictions/val.csv", "predictions/val.json", "classes.json", "split.json",
                "per_class.csv", "config.yaml", "hydra/config.yaml"} <= files
    sizes = {r.data.tags["model"]: r.data.params["model.input_size"] for r in runs}
    assert sizes == {"resnet50": "224", "vgg16": "224", "inception": "299"}
    # the parent is named by what the sweep varies and carries the winner; children are named by their values first
    assert parent.info.run_name == "model=resnet50,vgg16,inception"
    assert sorted(r.info.run_name.split()[0] for r in runs) == ["model=inception", "model=resnet50", "model=vgg16"]
    # what was trained, not where: no device, cache folder or other path in a run's name (the overrides tag has them)
    assert all("/" not in r.info.run_name and "trainer.device" not in r.info.run_name for r in runs)
    assert all("data.cache_dir=" in r.data.tags["overrides"] for r in runs)
    top = max(r.data.metrics["val/best_mAP"] for r in runs)
    winners = {r.info.run_id for r in runs if r.data.metrics["val/best_mAP"] == top}  # untrained models may tie
    assert parent.data.metrics["val/best_mAP"] == top and parent.data.tags["best_run_id"] in winners
    # named by the setting, with what else differs between the models (their own input size and regularisation)
    models = {f"model={r.data.tags['model']}" for r in runs if r.info.run_id in winners}
    assert parent.data.tags["best_settings"].split()[0] in models
    assert "model.input_size=" in parent.data.tags["best_settings"]
    assert "Best setting of 3" in parent.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_parallel_regularisation_sweep_gives_one_run_per_combination_under_one_parent(tmp_path):
    """Presets and plain numbers sweep alike; the joblib launcher runs the two jobs at once, and its processes
    create the fresh SQLite store and the sweep's parent run concurrently without a lock error."""
    client, runs, logs = run_sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=smallcnn",
                                   "dropout=0.25,heavy", "weight_decay=strong", with_logs=True, store=False)
    children = [r for r in runs if "mlabel.kind" not in r.data.tags]
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    combos = {(r.data.params["dropout_value"], r.data.params["weight_decay_value"]) for r in children}
    assert combos == {("0.25", "0.001"), ("0.6", "0.001")}
    assert len({r.data.tags["mlflow.runName"] for r in children}) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_id"] == children[0].data.tags["sweep_id"]
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/mAP")] == [1, 2]
    assert "database is locked" not in logs
    # the console: one line per finished job, then the settings best first and where to look, each once
    lines = [line for line in logs.splitlines() if "SADeprecationWarning" not in line and "configure_mappers" not in line]
    jobs = [line for line in lines if line.startswith("job ")]
    assert len(jobs) == 2 and all("val mAP 0." in line for line in jobs), logs
    assert len(lines) == 1 + 2 + 1 + 2 + 5, logs  # start, jobs, title, settings, best / compare / look / sweep / runs
    assert sum(line.startswith("look:") for line in lines) == 1 and sum("compare sweep=" in line for line in lines) == 1
    assert sum(line.startswith("runs:") and "viewStateShareKey=" in line for line in lines) == 1  # the runs table
    assert all(len(line) <= 120 for line in lines if str(tmp_path) not in line and sys.prefix not in line), logs
    # the parent names the winning setting by what the sweep varies (one seed each here: the best run's), its mean
    best = max(children, key=lambda r: r.data.metrics["val/best_mAP"])
    typed = {w for w in best.data.tags["overrides"].split() if w.startswith("dropout=")}  # weight_decay: the same
    assert set(parent.data.tags["best_settings"].split()) == typed, parent.data.tags["best_settings"]
    assert parent.data.metrics["val/best_mAP"] == best.data.metrics["val/best_mAP"]
    assert parent.data.tags["mlflow.note.content"].startswith("**Best setting of 2** (2 runs): ")


def _open_store_and_parent(uri: str, barrier, results) -> None:
    """One sweep job's first steps: open (create) the store and ask for the sweep's parent run, all at once."""
    from mlabel_exp.tracking import runs as tracking
    from mlabel_exp.tracking.sweeps import sweep_parent

    barrier.wait(timeout=120)  # mlflow imported in every process: the store is created truly concurrently
    tracker = tracking.Tracker(uri, "mlabel-exp")
    results.put(sweep_parent(tracker, "sweep-1", "/tmp/sweep-1"))


def test_jobs_that_start_at_once_create_one_store_and_one_sweep_parent(tmp_path):
    """What the joblib and SLURM launchers do to a fresh store: several processes create it and the sweep's parent at
    the same moment (a barrier makes them, on any machine); no lock error, one experiment, one parent for all."""
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_store_and_parent, args=(uri, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    parents = {results.get(timeout=5) for _ in procs}
    client, runs = mlflow_runs(tmp_path)
    assert len(parents) == 1 and [r.info.run_id for r in runs] == list(parents)


@pytest.mark.slow
def test_submitit_sweep_goes_on_past_a_failing_job_and_names_it_at_the_end(tmp_path):
    """Jobs run through submitit's local executor (the SLURM launcher's code path, without SLURM);
    model.input_size=8 is below smallcnn's minimum: job 1 fails in train(), job 0 runs."""
    tiny = [o for o in tiny_overrides(tmp_path) if not o.startswith("model.input_size")]
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *tiny, "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", "model.input_size=32,8",
           f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    logs = done.stdout + done.stderr
    assert "1 sweep job(s) failed" in logs and "job 1 (" in logs and "model.input_size=8" in logs
    _, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    assert parent.info.status == "FAILED" and "model.input_size=8" in parent.data.tags["summary"]
    runs = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert [r.data.params["model.input_size"] for r in runs] == ["32"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert list((tmp_path / "multirun" / ".submitit").iterdir())  # submitit's own job folders


def test_slurm_preset_composes_with_the_usual_settings():
    from hydra import compose, initialize_config_dir

    from mlabel_exp.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.account=proj"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.gpus_per_node, launcher.array_parallelism) == ("gpu", "proj", 1, 16)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process in /proc")
def test_submitit_requeues_a_preempted_job_and_the_requeued_job_continues_its_run(tmp_path):
    """SIGUSR2 to a job of the submitit launcher (as SLURM sends before the time limit): the run stops cleanly, then
    submitit's own handler checkpoints and requeues the job; the requeued job continues the same MLflow run."""
    tiny = [o for o in tiny_overrides(tmp_path) if not o.startswith("trainer=")]
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *tiny, "trainer=smoke", "trainer.epochs=4",
           "trainer.max_steps_per_epoch=0", "data.synthetic.num_images=200", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=60", "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    job_lines = tmp_path / "multirun" / "0" / "run.log"  # every line of the job (its console shows errors only)
    while time.monotonic() < deadline:  # submitit's log: <sweep>/.submitit/<controller pid>/<pid>_0_log.out
        logs = list((tmp_path / "multirun" / ".submitit").glob("*/*_0_log.out"))
        if logs and job_lines.is_file() and "epoch 1/4 " in job_lines.read_text():
            (task,) = _children(int(logs[0].name.split("_")[0]))  # the controller's one task
            os.kill(task, signal.SIGUSR2)
            break
        time.sleep(0.05)
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, out[-3000:]
    job_log = logs[0].read_text() + job_lines.read_text()  # submitit's lines + the job's own
    assert "SIGUSR2 received" in job_log and "Requeued job" in job_log and "continuing run" in job_log
    client, runs = mlflow_runs(tmp_path)
    (run,) = [r for r in runs if "mlabel.kind" not in r.data.tags]  # one run: the requeued job continued it
    assert run.info.status == "FINISHED" and run.data.tags["preempted"] == "true"
    assert run.data.tags["scheduler_job"] == f"local:{logs[0].parent.name}"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mAP")] == [1, 2, 3, 4]
