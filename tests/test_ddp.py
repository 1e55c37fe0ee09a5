"""Data-parallel training: 2 gloo processes on CPU make one MLflow run over every validation image once."""

import pytest
import torch

from mlabel_exp.models.zoo import build_model
from mlabel_exp.experiment.train import train
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes


@pytest.mark.slow
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


@pytest.mark.slow
def test_two_processes_with_averaging_and_repeat_factor_sampling_score_every_split_with_the_kept_weights(tmp_path):
    """Every rank validates its share of the images with the average (and rank 0's BatchNorm statistics) and scores the
    test split with rank 0's best.pt (the other ranks write no checkpoint): best.pt, run again in one process, gives
    the validation and test probabilities the run wrote."""
    import numpy as np
    import pandas as pd

    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    out = tmp_path / "out"
    train(compose_cfg(*tiny_overrides(tmp_path, "trainer.devices=2", "data.synthetic.num_images=90",
                                      "trainer.max_steps_per_epoch=0", "trainer.batch_size=8", "trainer.ema=1epochs",
                                      "data.sampler=repeat_factor", "data.test_fraction=0.2",
                                      f"trainer.output_dir={out}")))
    _, (run,) = mlflow_runs(tmp_path)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert run.data.tags["best_weights"] == best["weights"] and "val_ema/mAP" in run.data.metrics
    predictor, images = Predictor.from_checkpoint(best), sorted((tmp_path / "cache").rglob("images"))[0]
    for part in ("val", "test"):
        written = pd.read_csv(out / "predictions" / f"{part}.csv", keep_default_na=False)
        _, probs, _ = predictor.predict_files([images / f for f in written["file"]], batch_size=16, num_workers=0)
        np.testing.assert_allclose(probs, written[best["classes"]].to_numpy(), rtol=0, atol=1e-5, err_msg=part)
