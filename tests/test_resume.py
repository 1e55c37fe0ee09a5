"""Interrupt a real training process with SIGTERM, resume it, and compare with an uninterrupted run."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from mlabel_exp.experiment.train import train
from mlabel_exp.errors import ConfigError
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes


def _overrides(tmp_path, *extra):
    return tiny_overrides(tmp_path, "data.synthetic.num_images=120", "trainer.epochs=3", "trainer.max_steps_per_epoch=0",
                          "trainer.batch_size=8", "trainer.log_every_steps=1", "trainer.scheduler.name=cosine", *extra)


def _untimed(history):
    return [{k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))} for h in history]


def _signal_during(command: list[str], env: dict, step: str, signum: int) -> str:
    """Runs ``command``, sends ``signum`` when its log reaches ``step`` and returns the rest of its log."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if step in line:
            proc.send_signal(signum)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=300) == 128 + signum, rest[-2000:]
    assert f"{signal.Signals(signum).name} received" in rest and "Traceback" not in rest
    return rest


@pytest.mark.slow
def test_a_run_stopped_by_a_person_then_preempted_by_the_scheduler_ends_as_if_never_stopped(tmp_path):
    """Real signals to real processes. SIGTERM outside SLURM (a person): KILLED, not preempted, continued only by the
    same command line with resume=<id>. SIGUSR2 (SLURM's warning before the time limit): KILLED, preempted=true, and
    the same command line as the job's (a requeued job) continues it by itself. Bit for bit the uninterrupted run,
    which runs in this process through the same train(cfg)."""
    train(compose_cfg(*_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'full'}")))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "mlabel_exp.run", *_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'cut'}")]
    last = tmp_path / "cut" / "checkpoints" / "last.pt"

    _signal_during(command, env, "epoch 2 train step 3/", signal.SIGTERM)
    client, runs = mlflow_runs(tmp_path)
    (cut,) = [r for r in runs if r.info.status != "FINISHED"]
    run_id = cut.info.run_id
    assert cut.info.status == "KILLED" and cut.data.tags["preempted"] == "false"
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and state["hydra_choices"]["trainer"] == "smoke"

    # the same command line with resume=<id>: its overrides (trainer=smoke among them) change nothing
    _signal_during([*command, f"resume={run_id}"], env, "epoch 3 train step 3/", signal.SIGUSR2)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["preempted"] == "true"
    assert torch.load(last, weights_only=True)["epoch"] == 2

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"continuing run {run_id}, which the scheduler preempted" in again.stdout + again.stderr
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2  # the uninterrupted run and the continued one: no third
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val/mAP")] == [1, 2, 3]  # no duplicate, no gap
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert _untimed(a["history"]) == _untimed(b["history"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    full_run = next(r for r in runs if r.info.run_id != run_id)
    assert run.data.metrics["val/mAP"] == full_run.data.metrics["val/mAP"]


def test_only_the_job_that_started_a_preempted_run_continues_it_by_itself(tmp_path, monkeypatch):
    from mlabel_exp.config import validate
    from mlabel_exp.fsutil import exclusive
    from mlabel_exp.experiment.hydra_job import run_identity
    from mlabel_exp.experiment.resume import preempted_run

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

    # a run of this job killed before it could stop cleanly (still RUNNING, its process gone): continued too
    client.set_terminated(preempted, "RUNNING")
    client.set_tag(preempted, "preempted", "false")
    assert preempted_run(typed.tracking, job) == preempted
    assert preempted_run(typed.tracking, {**job, "scheduler_job": None}) is None  # outside a scheduler: not by itself

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
    from mlabel_exp.training import trainer as engine
    from mlabel_exp.data.synthetic import SyntheticSpec, generate

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
    from mlabel_exp.errors import DataError

    root, run_id = _interrupted(tmp_path, monkeypatch)
    split_file = tmp_path / "cut" / "split.json"
    before = split_file.read_text()
    for i in (61, 62, 63):
        (root / "images" / f"im{i}.jpg").write_bytes((root / "images" / "im1.jpg").read_bytes())
    with pytest.raises(DataError, match=r"3 image\(s\) were added \(im61\.jpg, im62\.jpg, im63\.jpg\)\. .*restore "
                                        r"the data root, or start a new run"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))
    for i in (61, 62, 63):
        (root / "images" / f"im{i}.jpg").unlink()
    (root / "images" / "im5.jpg").unlink()
    with pytest.raises(DataError, match=r"not what run \w+ was trained on: 1 image\(s\) were removed \(im5\.jpg\)\."):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))
    last = tmp_path / "cut" / "checkpoints" / "last.pt"  # a run started before last.pt kept its data: split.json
    state = torch.load(last, weights_only=True)
    del state["data"]
    torch.save(state, last)
    with pytest.raises(DataError, match=r"1 file\(s\) of '(train|val)' are not in the data set .* any more"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))
    assert split_file.read_text() == before  # the run's own split is never rewritten


def test_resume_refuses_other_classes_naming_the_difference(tmp_path, monkeypatch):
    from mlabel_exp.errors import DataError

    root, run_id = _interrupted(tmp_path, monkeypatch)
    (root / "annotations" / "circle.txt").rename(root / "annotations" / "disc.txt")  # same count, other names
    with pytest.raises(DataError, match=r"classes added \['disc'\]; missing \['circle'\]"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))


def test_resume_takes_only_the_settings_it_may_change_and_keeps_the_runs_tracking_settings(tmp_path, monkeypatch):
    from mlabel_exp.experiment.resume import resume_point

    root, run_id = _interrupted(tmp_path, monkeypatch)
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


def test_the_same_command_line_resumes_and_an_override_that_changes_the_run_is_refused_naming_both_values(
        tmp_path, monkeypatch):
    from mlabel_exp.experiment.resume import MAY_CHANGE, check_overrides, resume_point

    root, run_id = _interrupted(tmp_path, monkeypatch)
    started = _folder(tmp_path, root, f"trainer.output_dir={tmp_path / 'cut'}")  # as the run was started
    again = [*started, f"resume={run_id}", "trainer.epochs=3"]
    assert {"trainer=smoke", "data=folder", "model.input_size=32"} <= set(again)  # groups and values, as typed
    resumed, _ = resume_point(compose_cfg(*again), again)
    assert resumed.trainer.epochs == 3

    lr = resumed.optimizer.lr
    changed = [*again, "optimizer.lr=0.5", "model=resnet18"]
    with pytest.raises(ConfigError, match=rf"would change it: optimizer\.lr=0\.5 \(the run has {lr}\), model=resnet18 "
                                          r"\(model\.name: smallcnn -> resnet18, .*\)\. A resume may set only "
                                          r"trainer\.epochs") as refused:
        resume_point(compose_cfg(*changed), changed)
    assert "trainer=smoke" not in str(refused.value) and "data=folder" not in str(refused.value)

    # a run started from the command line recorded its group choices: a group override is compared with its choice
    folder = tmp_path / "cut"
    choices = {"model": "smallcnn", "trainer": "smoke", "data": "folder", "experiment": None}
    applied = check_overrides([*again, "model=smallcnn"], compose_cfg(*again), resumed, choices, folder)
    assert applied == [k for k in (o.split("=")[0] for o in again) if k in MAY_CHANGE and k != "resume"]
    with pytest.raises(ConfigError, match=r"model=resnet18 \(the run has model=smallcnn\), experiment=seed \(the run "
                                          r"has experiment=None\)"):
        check_overrides([*again, "model=resnet18", "experiment=seed"], compose_cfg(*again), resumed, choices, folder)


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
    from mlabel_exp.experiment.resume import resume_point

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


# ------------------------------------------------------------------ a resume that trains longer

def _schedule(name: str, epochs: int, steps: int, cut: int | None = None, longer: int | None = None):
    """(lr, momentum) of every step of a ``name`` schedule over ``epochs`` x ``steps``; with ``cut``, the run stops
    after that epoch and resumes (optimizer and scheduler states reloaded, as from last.pt) with ``longer`` epochs."""
    from mlabel_exp.training.optim import build_optimizer, build_scheduler, change_length
    from mlabel_exp.config import SchedulerConfig

    def built(n):
        opt = build_optimizer("adamw", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0, weight_decay=0)
        return opt, build_scheduler(SchedulerConfig(name=name, warmup_epochs=0), opt, n, steps)

    opt, sched = built(epochs)
    seen = []
    for step in range(max(epochs, longer or 0) * steps):
        if cut is not None and step == cut * steps:
            states = opt.state_dict(), sched.state_dict()
            opt, sched = built(longer)
            opt.load_state_dict(states[0])
            sched.load_state_dict(states[1])
            change_length(sched, name, epochs, longer, steps)
            epochs = longer
        if step == epochs * steps:
            break
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("cut", [1, 3])  # in the warm-up (peak at step 8 of 30), in the annealing
def test_onecycle_trained_longer_keeps_its_phase_and_spreads_the_rest_of_the_cycle_without_a_jump(cut):
    """6 epochs of 5 steps cut after epoch ``cut`` and resumed for 12: from step k = 5 * cut on, step k + j runs where
    step k + j * (29 - k) / (59 - k) of the 6-epoch cycle would; where that is a whole step, the LR and momentum are
    torch's own OneCycleLR's there (float64, the same operations: equal to the last bits)."""
    short, longer = _schedule("onecycle", 6, 5), _schedule("onecycle", 6, 5, cut=cut, longer=12)
    k = 5 * cut
    assert len(longer) == 60 and longer[:k + 1] == short[:k + 1]  # up to the first step after the resume: no jump
    whole = [j for j in range(60 - k) if j * (29 - k) % (59 - k) == 0]
    assert len(whole) >= 2 and whole[-1] == 59 - k  # the last step of the run is the last of the cycle
    for j in whole:
        assert longer[k + j] == pytest.approx(short[k + j * (29 - k) // (59 - k)], rel=1e-12)
    lrs = [lr for lr, _ in longer]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(1.0, rel=1e-3) and (peak > k if cut == 1 else peak < k)  # the phase is kept
    assert all(a >= b for a, b in zip(lrs[max(peak, k):], lrs[max(peak, k) + 1:]))


def test_an_ended_onecycle_trained_longer_is_stretched_over_the_whole_run_not_left_near_zero():
    """A finished run (6 epochs of 5 steps: the cycle ended, LR near 0) trained to 9: spreading the 0 steps left would
    keep the LR near 0 for 3 epochs; instead step s >= 30 runs where step s * 29 / 44 of the 6-epoch cycle would (equal
    to the last bits where that is a whole step), annealing from there to the end."""
    short, longer = _schedule("onecycle", 6, 5), _schedule("onecycle", 6, 5, cut=6, longer=9)
    assert len(longer) == 45 and longer[:30] == short
    whole = [s for s in range(30, 45) if s * 29 % 44 == 0]
    assert whole == [44]
    assert longer[44] == pytest.approx(short[29], rel=1e-12)
    lrs = [lr for lr, _ in longer[30:]]
    assert lrs[0] > 0.3 and all(a > b for a, b in zip(lrs, lrs[1:]))  # annealing from the stretched cycle's LR
    stretched = _schedule("onecycle", 9, 5)  # about where a 9-epoch cycle is (its peak at 30% too)
    assert lrs[0] == pytest.approx(stretched[30][0], rel=0.05)


@pytest.mark.parametrize("name", ["cosine", "step", "none"])
def test_a_per_step_schedule_trained_longer_continues_as_one_planned_that_long(name):
    """From the resume on, the LR is the uninterrupted 12-epoch run's (cosine: the longer curve's value; step and
    none: unchanged, they do not depend on the length)."""
    resumed, planned = _schedule(name, 6, 5, cut=2, longer=12), _schedule(name, 12, 5)
    assert len(resumed) == 60 and resumed[10:] == planned[10:]
    if name == "cosine":  # the closed form: 0.01 + 0.99 * (1 + cos(pi * step / total)) / 2
        assert resumed[10][0] == pytest.approx(0.01 + 0.99 * (1 + math.cos(math.pi * 10 / 60)) / 2, rel=1e-12)
    else:
        assert resumed == _schedule(name, 6, 5)[:10] + planned[10:]


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])  # step and none: their LRs above, in seconds
def test_resume_latest_with_more_epochs_finishes_the_longer_run_and_records_its_length(
        tmp_path, monkeypatch, caplog, scheduler):
    from mlabel_exp.experiment import hydra_job as job

    root, run_id = _interrupted(tmp_path, monkeypatch, f"trainer.scheduler.name={scheduler}")
    typed = ["resume=latest", "trainer.epochs=4"]  # as on the command line (train() reads them from Hydra)
    monkeypatch.setattr(job, "task_overrides", lambda: typed)
    caplog.set_level("INFO", logger="mlabel_exp.training.trainer")
    train(compose_cfg(*_folder(tmp_path, root, f"trainer.scheduler.name={scheduler}", *typed)))

    client, _ = mlflow_runs(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val/mAP")] == [1, 2, 3, 4]
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["trainer.epochs.from_epoch_2"] == "4"
    said = [r.getMessage() for r in caplog.records if "trainer.epochs 2 -> 4 at step 2" in r.getMessage()]
    assert len(said) == 1 and (scheduler == "onecycle") == ("without a jump" in said[0])
    last = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 4 and last["planned_epochs"] == 4 and last["config"]["trainer"]["epochs"] == 4


def test_a_finished_run_trains_longer_as_the_same_run_and_its_outputs_are_rewritten(tmp_path, monkeypatch, caplog):
    """``run trainer.epochs=2``, then ``resume=latest trainer.epochs=3``: latest is that finished run (the newest with
    a last.pt), reopened and finished again under the same id from epoch 3: each per-epoch metric once per epoch, lr
    by training step without a gap or a repeat, the 2-epoch cosine before and the 3-epoch one after (the change of
    length shows), the length recorded as for an interrupted run, patience counting afresh (said), the best checkpoint,
    thresholds, predictions, summary and report written again at the new end. The same run without more epochs is
    refused, naming the fix."""
    from mlabel_exp.data.synthetic import SyntheticSpec, generate
    from mlabel_exp.experiment import hydra_job as job

    root = generate(tmp_path / "data", SyntheticSpec(num_images=60, image_size=32, seed=1))
    out = tmp_path / "run"
    settings = _folder(tmp_path, root, f"trainer.output_dir={out}", "trainer.scheduler.name=cosine")
    first = train(compose_cfg(*settings))
    ends = ("predictions/val.json", "thresholds.json", "summary.json", "report.html", "curves.png", "per_class.csv")
    before = {name: (out / name).stat().st_mtime_ns for name in ends}
    typed = ["resume=latest", "trainer.epochs=3"]  # as on the command line (train() reads them from Hydra)
    monkeypatch.setattr(job, "task_overrides", lambda: typed)
    caplog.set_level("INFO", logger="mlabel_exp.experiment.resume")
    again = train(compose_cfg(*settings, *typed))

    client, runs = mlflow_runs(tmp_path)
    run = client.get_run(first.run_id)
    assert again.run_id == first.run_id and len(runs) == 1 and run.info.status == "FINISHED" and again.epochs == 3
    for key in ("val/mAP", "train/loss", "val/loss", "time/epoch_s"):
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [1, 2, 3], key
    lr = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "lr"))
    assert [step for step, _ in lr] == [1, 2, 3, 4, 5, 6]  # 2 steps an epoch (trainer=smoke), every one logged

    def cosine(step: int, total: int) -> float:  # build_scheduler's closed form, step counted from 0
        return float(run.data.params["optimizer.lr"]) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / total)))

    expected = [cosine(s, 4) for s in range(4)] + [cosine(s, 6) for s in (4, 5)]
    assert [v for _, v in lr] == pytest.approx(expected, rel=1e-6)  # float32 LR of a float64 formula
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["trainer.epochs.from_epoch_3"] == "3"
    said = [r.getMessage() for r in caplog.records if "had finished after epoch 2" in r.getMessage()]
    assert len(said) == 1 and "continues to epoch 3; early stopping's patience (5 epochs" in said[0] and \
        "counts afresh from epoch 3" in said[0]
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert run.data.tags["best_epoch"] == str(best["epoch"]) == str(again.best_epoch)
    assert json.loads((out / "thresholds.json").read_text())["per_class"] == best["thresholds"]["per_class"]
    assert json.loads((out / "summary.json").read_text())["val"]["epochs"] == 3
    assert all((out / name).stat().st_mtime_ns > before[name] for name in ends)
    stored = client.download_artifacts(first.run_id, "checkpoints/best.pt", str(tmp_path / "stored"))
    assert open(stored, "rb").read() == (out / "checkpoints" / "best.pt").read_bytes()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3

    typed[:] = [f"resume={first.run_id[:8]}"]
    with pytest.raises(ConfigError, match=rf"run {first.run_id} already finished epoch 3 of trainer.epochs=3; resume "
                                          r"with trainer.epochs=N above 3 to train longer"):
        train(compose_cfg(*settings, *typed))
    last = out / "checkpoints" / "last.pt"  # as if early stopping had ended it after epoch 2 of 3: epochs are left,
    torch.save({**torch.load(last, weights_only=False), "epoch": 2}, last)  # but a bare resume does not reopen it
    with pytest.raises(ConfigError, match=rf"run {first.run_id} FINISHED after epoch 2; add trainer.epochs=N \(above "
                                          r"2\) to train it longer"):
        train(compose_cfg(*settings, *typed))


def test_a_resume_adds_params_once_and_a_param_mlflow_cannot_change_becomes_a_tag(tmp_path):
    from mlabel_exp.tracking.runs import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "mlabel-exp")
    run_id = tracker.start("run", {}, {"trainer.epochs": 2})
    tracker.attach(run_id, {"trainer.epochs.from_epoch_2": 4})
    tracker.attach(run_id, {"trainer.epochs.from_epoch_2": 4})  # the same again: nothing to add
    tracker.attach(run_id, {"trainer.epochs.from_epoch_2": 6})  # that resume never finished an epoch: retried longer
    run = tracker.client.get_run(run_id)
    assert run.data.params == {"trainer.epochs": "2", "trainer.epochs.from_epoch_2": "4"}
    assert run.data.tags["trainer.epochs.from_epoch_2"] == "6"


# ------------------------------------------------------------------ the data a resume checks

def test_resume_refuses_changed_labels_naming_how_many_and_which(tmp_path, monkeypatch):
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.errors import DataError

    root, run_id = _interrupted(tmp_path, monkeypatch)
    file = root / "annotations" / "circle.txt"
    lines = file.read_text().splitlines()
    file.write_text("\n".join(lines[20:]) + "\n")  # 20 lines deleted
    gone = {int(t) for t in lines[:20]} - {int(t) for t in lines[20:]}
    n = len(gone & set(build_index(root).ids.tolist()))
    assert n > 0
    first = f"im{min(gone & set(build_index(root).ids.tolist()))}.jpg"
    with pytest.raises(DataError, match=rf"not what run {run_id} was trained on: the labels of {n} image\(s\) changed "
                                        rf"\({first}: circle 1->0; .*restore the data root, or start a new run"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))


def test_resume_refuses_changed_pixels_and_resumes_an_earlier_runs_checkpoint_with_a_warning(
        tmp_path, monkeypatch, caplog):
    from PIL import Image

    from mlabel_exp.errors import DataError

    root, run_id = _interrupted(tmp_path, monkeypatch)
    images = sorted((root / "images").iterdir())
    for i, path in enumerate(images):  # every image replaced, names, labels and classes unchanged
        Image.new("RGB", (32, 32), (i % 256, 255, 0)).save(path)
    with pytest.raises(DataError, match=rf"the content of {len(images)} file\(s\) changed \(im1\.jpg, im2\.jpg, im3\.jpg, \.\.\.\)"):
        train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))

    last = tmp_path / "cut" / "checkpoints" / "last.pt"  # as an earlier version wrote it: no record of its data
    state = torch.load(last, weights_only=True)
    del state["data"]
    torch.save(state, last)
    caplog.set_level("WARNING", logger="mlabel_exp.experiment.resume")
    train(compose_cfg(*_folder(tmp_path, root, f"resume={run_id}")))
    assert any("could not be checked" in r.getMessage() for r in caplog.records)
    client, _ = mlflow_runs(tmp_path)
    assert client.get_run(run_id).info.status == "FINISHED"
