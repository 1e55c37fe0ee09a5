"""Interrupt a real training process with SIGTERM, resume it, and compare with an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from mlabel_exp.run import train
from mlabel_exp.config import ConfigError
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides


def _overrides(tmp_path, *extra):
    return tiny_overrides(tmp_path, "data.synthetic.num_images=120", "trainer.epochs=3", "trainer.max_steps_per_epoch=0",
                          "trainer.batch_size=8", "trainer.log_every_steps=1", "trainer.scheduler.name=cosine", *extra)


def _untimed(history):
    return [{k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))} for h in history]


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Only the interrupted run needs a process of its own (a real SIGTERM); the uninterrupted run and the resume
    run in this one, through the same train(cfg)."""
    train(compose_cfg(*_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'full'}")))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cut = [sys.executable, "-m", "mlabel_exp.run", *_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'cut'}")]
    proc = subprocess.Popen(cut, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if "epoch 2 train step 3/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, rest[-2000:]
    assert "SIGTERM received" in rest

    client, runs = mlflow_runs(tmp_path)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == 1
    run_id = killed[0].info.run_id
    assert killed[0].data.tags["preempted"] == "false"  # a person's stop outside SLURM: resume= continues it, not the command
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1

    train(compose_cfg(*_overrides(tmp_path, "resume=latest")))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val/mAP")]
    assert steps == [1, 2, 3]  # no duplicate, no gap

    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert _untimed(a["history"]) == _untimed(b["history"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    full_run = next(r for r in runs if r.info.status == "FINISHED")
    assert run.data.metrics["val/mAP"] == full_run.data.metrics["val/mAP"]


@pytest.mark.slow
def test_sigusr2_preempts_the_run_and_the_same_command_continues_it_as_if_never_stopped(tmp_path):
    """What SLURM's warning signal (the preset's SIGUSR2, 120 s before the time limit) does to a real run, and what
    running the same command again (a requeued job) does with it."""
    train(compose_cfg(*_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'full'}")))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "mlabel_exp.run", *_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'cut'}")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if "epoch 2 train step 3/" in line:
            proc.send_signal(signal.SIGUSR2)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=300) == 128 + signal.SIGUSR2, rest[-2000:]
    assert "SIGUSR2 received" in rest and "Traceback" not in rest

    client, runs = mlflow_runs(tmp_path)
    (cut,) = [r for r in runs if r.info.status != "FINISHED"]
    assert cut.info.status == "KILLED" and cut.data.tags["preempted"] == "true"
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"continuing run {cut.info.run_id}, which the scheduler preempted" in again.stdout + again.stderr
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2  # the uninterrupted run and the continued one: no third
    run = client.get_run(cut.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mAP")] == [1, 2, 3]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert _untimed(a["history"]) == _untimed(b["history"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    full_run = next(r for r in runs if r.info.run_id != run.info.run_id)
    assert run.data.metrics["val/mAP"] == full_run.data.metrics["val/mAP"]


def test_only_the_job_that_started_a_preempted_run_continues_it_by_itself(tmp_path, monkeypatch):
    from mlabel_exp.config import validate
    from mlabel_exp.fsutil import exclusive
    from mlabel_exp.job import run_identity
    from mlabel_exp.resume import preempted_run

    root, stopped = _interrupted(tmp_path, monkeypatch, out="stopped")  # Ctrl-C: a person's stop
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    _, preempted = _interrupted(tmp_path, monkeypatch, out="preempted", preempted=True)
    monkeypatch.setenv("SLURM_JOB_ID", "41")  # _interrupted undid every patch
    client, _ = mlflow_runs(tmp_path)
    assert client.get_run(stopped).data.tags["preempted"] == "false"
    assert client.get_run(preempted).data.tags["preempted"] == "true"

    typed = validate(compose_cfg(*_folder(tmp_path, root)))
    job = run_identity(typed)[1]  # as SLURM job 41, requeued, sees itself
    assert job["scheduler_job"] == "slurm:41"
    assert preempted_run(typed.tracking, job) == preempted
    assert preempted_run(typed.tracking, {**job, "scheduler_job": "slurm:42"}) is None  # another SLURM job
    assert preempted_run(typed.tracking, {**job, "overrides": "seed=1"}) is None  # another command line
    assert preempted_run(typed.tracking, {**job, "sweep_id": "s", "job_num": "0"}) is None  # a sweep's job
    with exclusive(tmp_path / "preempted" / ".run.lock"):  # its process still alive
        assert preempted_run(typed.tracking, job) is None

    train(compose_cfg(*_folder(tmp_path, root)))  # the same command: continues the preempted run, not the stopped one
    assert client.get_run(preempted).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(preempted, "val/mAP")] == [1, 2]
    assert client.get_run(stopped).info.status == "KILLED"
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2


# ------------------------------------------------------------------ a resume continues the same experiment or refuses

def _interrupted(tmp_path, monkeypatch, *extra, out="cut", preempted=False):
    """A run stopped during epoch 2 (as by SIGINT, or by the scheduler's SIGUSR2 with ``preempted``): KILLED, last.pt
    after epoch 1. Returns its data root and run id."""
    from mlabel_exp import engine
    from mlabel_exp.synthetic import SyntheticSpec, generate

    root = tmp_path / "data"
    if not root.exists():
        generate(root, SyntheticSpec(num_images=60, image_size=32, seed=1))
    real = engine.Trainer.train_epoch

    def stop_in_epoch_2(self, loader, epoch):
        if epoch == 2:
            self.callbacks.stop.set(signal.SIGUSR2, preempted=True) if preempted else self.callbacks.stop.set()
        return real(self, loader, epoch)

    monkeypatch.setattr(engine.Trainer, "train_epoch", stop_in_epoch_2)
    with pytest.raises(SystemExit):
        train(compose_cfg(*_folder(tmp_path, root, f"trainer.output_dir={tmp_path / out}", *extra)))
    monkeypatch.undo()
    client, runs = mlflow_runs(tmp_path)
    return root, max(runs, key=lambda r: r.info.start_time).info.run_id


def _folder(tmp_path, root, *extra):
    return tiny_overrides(tmp_path, "data=folder", f"data.root={root}", *extra)


def test_resume_refuses_when_images_were_added_or_removed_and_keeps_the_runs_split(tmp_path, monkeypatch):
    from mlabel_exp.data import DataError

    root, run_id = _interrupted(tmp_path, monkeypatch)
    split_file = tmp_path / "cut" / "split.json"
    before = split_file.read_text()
    for i in (61, 62, 63):
        (root / "images" / f"im{i}.jpg").write_bytes((root / "images" / "im1.jpg").read_bytes())
    with pytest.raises(DataError, match=r"3 image\(s\) were added .*restore the data root, or start a new run"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))
    for i in (61, 62, 63):
        (root / "images" / f"im{i}.jpg").unlink()
    (root / "images" / "im5.jpg").unlink()
    with pytest.raises(DataError, match=r"1 file\(s\) of '(train|val)' are not in the data set .* any more"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))
    assert split_file.read_text() == before  # the run's own split is never rewritten


def test_resume_refuses_other_classes_naming_the_difference(tmp_path, monkeypatch):
    root, run_id = _interrupted(tmp_path, monkeypatch)
    (root / "annotations" / "circle.txt").rename(root / "annotations" / "disc.txt")  # same count, other names
    with pytest.raises(ConfigError, match=r"added \['disc'\]; missing \['circle'\]"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))


def test_resume_takes_only_the_settings_it_may_change_and_keeps_the_runs_tracking_settings(tmp_path, monkeypatch):
    from mlabel_exp.resume import check_overrides, resume_point

    root, run_id = _interrupted(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=r"would change it: optimizer\.lr=0\.5, model=resnet18\. A resume may set "
                                          r"only trainer\.epochs"):
        check_overrides([f"resume={run_id}", "trainer.epochs=3", "optimizer.lr=0.5", "model=resnet18"])
    cfg = compose_cfg(*_folder(tmp_path, root, f"resume={run_id}", "trainer.epochs=4", "tracking.log_model=true"))
    resumed, state = resume_point(cfg, [f"resume={run_id}", "trainer.epochs=4", "hydra.run.dir=x"])
    assert resumed.trainer.epochs == 4 and state["last"]["epoch"] == 1
    assert resumed.tracking.log_model is False  # the run's own (tiny runs log no model), not the new command's
    assert resumed.optimizer.lr == cfg.optimizer.lr and resumed.trainer.output_dir == str(tmp_path / "cut")
    # a run of an earlier version, whose config says tracking.log_checkpoint (true/false), still resumes
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["config"]["tracking"]["log_checkpoint"] = state["config"]["tracking"].pop("log_checkpoints") == "best"
    assert state["config"]["tracking"]["log_checkpoint"] is True
    torch.save(state, last)
    assert resume_point(cfg, [f"resume={run_id}"])[0].tracking.log_checkpoints == "best"


def test_a_run_whose_own_settings_this_version_refuses_is_not_resumed_and_the_error_says_start_a_new_run(
        tmp_path, monkeypatch):
    """Runs started before random-init models refused frozen layers (weights null, trainable partial): a resume cannot
    take the fix (it keeps the run's settings), so the error says to start a new run and leaves the checkpoint."""
    root, run_id = _interrupted(tmp_path, monkeypatch)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["config"]["model"]["trainable"] = "partial"  # as the old resnet50/vgg16/inception defaults wrote it
    torch.save(state, last)
    before = last.read_bytes()
    with pytest.raises(ConfigError, match=rf"run {run_id} was started with settings this version refuses: "
                                          r"model\.weights=null .* model\.trainable=all .* cannot continue: start a "
                                          r"new run"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}", "trainer.epochs=4")))
    assert last.read_bytes() == before


def test_resume_latest_passes_over_pruned_trials_and_live_runs_and_an_explicit_live_run_is_refused(tmp_path, monkeypatch):
    from mlabel_exp.fsutil import exclusive
    from mlabel_exp.resume import resume_point

    root, older = _interrupted(tmp_path, monkeypatch, out="older")
    _, pruned = _interrupted(tmp_path, monkeypatch, out="pruned")
    _, live = _interrupted(tmp_path, monkeypatch, out="live")
    client, _ = mlflow_runs(tmp_path)
    client.set_tag(pruned, "pruned", "true")
    cfg = compose_cfg(*_folder(tmp_path, root, "resume=latest"))
    with exclusive(tmp_path / "live" / ".run.lock"):  # as the live process holds it
        assert resume_point(cfg)[1]["run_id"] == older
        with pytest.raises(ConfigError, match=r"still running \(a live process holds .*live/\.run\.lock\)"):
            resume_point(compose_cfg(*_folder(tmp_path, root, f"resume={live}")))
    assert resume_point(cfg)[1]["run_id"] == live  # its process is gone: the newest unfinished run again
