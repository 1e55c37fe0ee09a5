"""Data-parallel training: 2 gloo processes on CPU make one MLflow run over every validation image once."""

import pytest
import torch

from mlabel_exp.models.zoo import build_model
from mlabel_exp.experiment.train import train
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes


def test_two_process_run_counts_each_validation_image_once(tmp_path, monkeypatch):
    # the model's memory layout (channels_last) must be DDP's gradient buckets' layout: a mismatch costs a copy of every
    # gradient each step and warns; the spawned ranks turn that warning into an error (they inherit the environment)
    monkeypatch.setenv("PYTHONWARNINGS", "error:Grad strides do not match bucket view strides")
    best = train(compose_cfg(*tiny_overrides(tmp_path, "trainer.devices=2", "data.synthetic.num_images=90",
                                             "trainer.max_steps_per_epoch=0",
                                             "trainer.batch_size=8", f"trainer.output_dir={tmp_path / 'out'}"))).objective
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1  # rank 0 alone records
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert run.data.metrics["val/best_mAP"] == pytest.approx(best)
    import pandas as pd

    val = pd.read_csv(tmp_path / "out" / "predictions" / "val.csv")
    n_val = int(run.data.params["data.num_val"])
    assert len(val) == n_val == val["file"].nunique() == 18  # 90 images, 20% val: all of them, once
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "best.pt", weights_only=True)
    model = build_model("smallcnn", 14)
    model.load_state_dict(ckpt["model"])  # no "module." prefix: loads in a single process
