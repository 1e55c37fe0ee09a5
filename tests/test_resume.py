"""Interrupt a real training process with SIGTERM, resume it, and compare with an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from mlabel_exp.run import train
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
