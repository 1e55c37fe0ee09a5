"""End to end: `python -m mlabel_exp.run -m ...` in a subprocess, read back through MlflowClient."""

import subprocess
import sys

import pytest

from tests.conftest import artifact_paths, mlflow_runs, tiny_overrides


def run_sweep(tmp_path, *overrides):
    tiny = [o for o in tiny_overrides(tmp_path) if not o.startswith("model.input_size")]  # models keep their size
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *overrides, *tiny, f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return mlflow_runs(tmp_path)


@pytest.mark.slow
def test_three_architectures_side_by_side(tmp_path):
    client, runs = run_sweep(tmp_path, "model=resnet50,vgg16,inception")
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    runs = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.tags["model"] for r in runs) == ["inception", "resnet50", "vgg16"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.info.experiment_id for r in runs}) == 1
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert sorted(r.data.tags["job_num"] for r in runs) == ["0", "1", "2"]
    for r in runs:
        assert {"train/loss", "val/loss", "val/mAP", "val/f1_micro", "val/f1_macro", "val/accuracy"} <= set(r.data.metrics)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/mAP")] == [1, 2]
        files = artifact_paths(client, r.info.run_id)
        assert {"curves.png", "predictions/val.csv", "predictions/val.json", "classes.json", "split.json",
                "per_class.csv", "checkpoints/best.pt", "config.yaml", "hydra/config.yaml"} <= files
    sizes = {r.data.tags["model"]: r.data.params["model.input_size"] for r in runs}
    assert sizes == {"resnet50": "224", "vgg16": "224", "inception": "299"}


@pytest.mark.slow
def test_regularisation_sweep_gives_one_run_per_combination(tmp_path):
    client, runs = run_sweep(tmp_path, "model=resnet18", "dropout=none,heavy", "weight_decay=none,strong")
    runs = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    combos = {(r.data.params["dropout_value"], r.data.params["weight_decay_value"]) for r in runs}
    assert combos == {("0.0", "0.0"), ("0.0", "0.001"), ("0.6", "0.0"), ("0.6", "0.001")}
    assert len({r.data.tags["mlflow.runName"] for r in runs}) == 4


@pytest.mark.slow
def test_plain_values_sweep_like_presets(tmp_path):
    _, runs = run_sweep(tmp_path, "model=smallcnn", "dropout=0.25,light")
    runs = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert sorted(r.data.params["dropout_value"] for r in runs) == ["0.2", "0.25"]


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_named_at_the_end(tmp_path):
    tiny = [o for o in tiny_overrides(tmp_path) if not o.startswith("model.input_size")]
    # model.input_size=8 is below smallcnn's minimum: job 1 fails in train(), jobs 0 and 2 run
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *tiny, "model.input_size=32,8,40",
           f"hydra.sweep.dir={tmp_path / 'multirun'}", "tracking.log_model=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    logs = done.stdout + done.stderr
    assert "1 sweep job(s) failed" in logs and "job 1 (" in logs and "model.input_size=8" in logs
    _, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    assert parent.info.status == "FAILED" and "model.input_size=8" in parent.data.tags["summary"]
    runs = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert sorted(r.data.params["model.input_size"] for r in runs) == ["32", "40"]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_parallel_jobs_share_one_fresh_sqlite_database(tmp_path):
    tiny = [o for o in tiny_overrides(tmp_path) if not o.startswith("trainer.epochs")]
    procs = [subprocess.Popen([sys.executable, "-m", "mlabel_exp.run", *tiny, "trainer.epochs=4",
                               "trainer.max_steps_per_epoch=0", f"seed={seed}", "tracking.log_model=false",
                               f"trainer.output_dir={tmp_path / str(seed)}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2, 3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[-1500:] for o in outs]
    assert not any("database is locked" in o for o in outs)
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/mAP")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_under_one_parent_run(tmp_path):
    client, runs = run_sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=resnet18",
                             "dropout=none,heavy", "tracking.log_model=false", "trainer.epochs=3")
    children = [r for r in runs if "mlabel.kind" not in r.data.tags]
    parents = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    assert len(children) == 2 and len(parents) == 1
    parent = parents[0]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_id"] == children[0].data.tags["sweep_id"]
    (a, b) = sorted(children, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # the two jobs overlapped in time


@pytest.mark.slow
def test_submitit_launcher_runs_sweep_jobs_through_its_local_executor(tmp_path):
    client, runs = run_sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                             "hydra.launcher.cpus_per_task=1", "model=smallcnn", "dropout=none,heavy",
                             "tracking.log_model=false")
    children = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1
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
