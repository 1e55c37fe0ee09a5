"""The main job through train(cfg) and the compose API, read back through MlflowClient."""

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlabel_exp
from mlabel_exp.training import trainer as engine
from mlabel_exp.config import project_root, validate
from mlabel_exp.errors import ConfigError
from mlabel_exp.errors import ModelError
from mlabel_exp.experiment.train import train
from mlabel_exp.tracking.client import default_uri, resolve_uri
from mlabel_exp.runtime.precision import cpu_computes_bf16
from tests.conftest import artifact_paths, assert_labels_are_the_written_decisions, compose_cfg, mlflow_runs, tiny_overrides

EPOCH_METRICS = {"train/loss", "val/loss", "val/mAP", "val/f1_micro", "val/f1_macro", "val/more/accuracy", "lr",
                 "time/epoch_s", "throughput/img_s", "trainable_params"}


@pytest.mark.precision
@pytest.mark.integration
def test_train_logs_a_complete_run(tmp_path, caplog):
    caplog.set_level("INFO", logger="mlabel_exp")
    best = train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'out'}"))).objective
    # trainer=smoke validates 8 of the 16 images: the classes that cut misses are said once, not warned as missing
    said = [r for r in caplog.records if "validation cut to 8 images (trainer.max_steps_per_epoch=2)" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"]
    assert not [r for r in caplog.records if "no positive validation image" in r.getMessage()]
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert 0.0 <= best <= 1.0 and run.data.metrics["val/best_mAP"] == pytest.approx(best)
    assert EPOCH_METRICS <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mAP")] == [1, 2]
    assert run.data.params["model.name"] == "smallcnn" and run.data.params["dropout_value"] == "0.0"
    assert run.data.params["model.weights_used"] == "random init"
    # the settings in effect, once each: no second or third dropout, nothing that does not apply to this run
    for absent in ("dropout", "model.dropout", "weight_decay", "model.weight_decay", "loss.focal_gamma", "loss.asl_clip",
                   "model.aux_logits", "trainer.scheduler.gamma", "optimizer.momentum", "trainer.amp_dtype", "presets.dropout.heavy"):
        assert absent not in run.data.params, absent
    # what it computed in: float32, or bfloat16 autocast on a CPU with bfloat16 instructions (trainer.amp=true)
    assert run.data.params["trainer.amp"] == "True"
    assert run.data.params["precision"] == ("bfloat16 autocast" if cpu_computes_bf16() else "float32")
    assert run.data.tags["model"] == "smallcnn"
    # provenance: the commit of the checkout the package's files are tracked in (asked of git here), none for a copy
    # that is not one (an sdist, a wheel); the installed version always
    head = checkout_head(Path(mlabel_exp.__file__).parent)
    assert run.data.tags.get("mlflow.source.git.commit") == head and (head is None or len(head) == 40)
    assert run.data.tags["mlabel.version"] == version("mlabel-exp")
    files = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "classes.json", "split.json", "curves.png", "per_class.csv", "per_class_ap.png", "pr_curves.png", "thresholds.json",
            "predictions/val.csv", "predictions/val.json", "checkpoints/best.pt"} <= files
    preds = pd.read_csv(tmp_path / "out" / "predictions" / "val.csv")
    import json

    classes = json.loads(open(client.download_artifacts(run.info.run_id, "classes.json", str(tmp_path))).read())
    assert list(preds.columns) == ["file", *classes, "labels", "true_labels", "unknown_labels"]
    assert len(preds) == 8 and preds["file"].str.fullmatch(r"im\d+\.jpg").all()
    assert ((preds[classes] >= 0) & (preds[classes] <= 1)).all().all()
    # every number written agrees: the labels are the written decisions at thresholds.json's numbers, which
    # per_class.csv and summary.json repeat
    tuned = json.loads((tmp_path / "out" / "thresholds.json").read_text())
    assert_labels_are_the_written_decisions(tmp_path / "out" / "predictions" / "val.csv",
                                            tmp_path / "out" / "predictions" / "val.json", classes, tuned["per_class"])
    assert pd.read_csv(tmp_path / "out" / "per_class.csv")["threshold"].tolist() == tuned["per_class"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tuned"]["global_threshold"] == tuned["global"]
    # lineage: the data set, one MLflow dataset input per split, each with the digest of its images and labels
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation"}
    assert {d.name for d in inputs.values()} == {"synthetic (80 images, 32 px, seed 0)"}
    assert inputs["train"].digest != inputs["validation"].digest
    assert json.loads(inputs["train"].source)["uri"].endswith("n80_px32_seed0_u0.4_g0.03_m4_v1")


def checkout_head(folder: Path) -> str | None:
    """``git rev-parse HEAD`` of the checkout whose index lists ``folder``'s __init__.py; None when there is none."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True).stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    tracked = top and (folder / "__init__.py").resolve().relative_to(Path(top).resolve()).as_posix() in git(
        "ls-files", "--full-name").split()
    return git("rev-parse", "HEAD") if tracked else None


def test_dataset_digests_follow_the_images_labels_content_and_split(synthetic_root, tmp_path):
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.cache import content_hashes
    from mlabel_exp.experiment.record import dataset_digests

    index = build_index(synthetic_root)
    content = content_hashes(index, tmp_path / "cache")
    split = {"train": np.arange(0, 200), "val": np.arange(200, 300)}
    first = dataset_digests(index, split, content)
    assert first == dataset_digests(build_index(synthetic_root), split, content) and set(first) == {"train", "validation"}
    assert dataset_digests(index, {"train": np.arange(1, 201), "val": split["val"]}, content)["train"] != first["train"]
    other = content.copy()
    other[7, 0] ^= 1  # one file's bytes changed, ids and labels the same
    assert dataset_digests(index, split, other)["train"] != first["train"]
    index.labels[0, 0] ^= 1  # one label changed
    assert dataset_digests(index, split, content)["train"] != first["train"]
    assert dataset_digests(index, split, content)["validation"] == first["validation"]


@pytest.mark.integration
def test_checkpoint_holds_what_is_needed_to_reuse_the_model(tmp_path):
    from mlabel_exp.models.zoo import build_model

    train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'out'}")))
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["classes"]) == 14 and ckpt["classes"] == sorted(ckpt["classes"])
    assert ckpt["config"]["model"]["name"] == "smallcnn" and ckpt["epoch"] in (1, 2)
    model = build_model("smallcnn", 14)
    model.load_state_dict(ckpt["model"])
    assert (tmp_path / "out" / "checkpoints" / "last.pt").exists()


@pytest.mark.integration
def test_best_pt_holds_no_optimizer_state_and_each_checkpoint_sits_on_disk_once(tmp_path):
    """tracking.log_checkpoints=all without a model: checkpoints/best.pt and last.pt in the run, each the same file
    (a hard link) as the output folder's; only last.pt, which a resume reads, carries the optimizer's state."""
    train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'out'}",
                                      "tracking.log_checkpoints=all")))
    client, (run,) = mlflow_runs(tmp_path)
    assert {"checkpoints/best.pt", "checkpoints/last.pt"} <= artifact_paths(client, run.info.run_id)
    stored = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    for name in ("best.pt", "last.pt"):
        assert os.path.samefile(stored / name, tmp_path / "out" / "checkpoints" / name), name
    best = torch.load(stored / "best.pt", weights_only=True)
    last = torch.load(stored / "last.pt", weights_only=True)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best) and "optimizer" in last
    assert best["thresholds"] and len(best["val"]["probs"]) == 8


@pytest.mark.integration
def test_no_checkpoint_in_the_store_unless_a_model_needs_the_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"^tracking\.log_checkpoints='none' is invalid: expected best or all "
                                          r"while tracking\.log_model=true .* or none with tracking\.log_model=false"):
        validate(compose_cfg("tracking.log_checkpoints=none"))
    train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'out'}",
                                      "tracking.log_checkpoints=none")))
    client, (run,) = mlflow_runs(tmp_path)
    assert not any(f.startswith("checkpoints/") for f in artifact_paths(client, run.info.run_id))
    assert os.stat(tmp_path / "out" / "checkpoints" / "best.pt").st_nlink == 1  # the one copy, in the output folder


@pytest.mark.integration
def test_a_new_run_never_overwrites_another_runs_checkpoints(tmp_path):
    out = f"trainer.output_dir={tmp_path / 'out'}"
    train(compose_cfg(*tiny_overrides(tmp_path, out)))
    before = (tmp_path / "out" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"holds the checkpoints of an earlier run .* resume=<its run id>"):
        train(compose_cfg(*tiny_overrides(tmp_path, out, "seed=1")))
    assert (tmp_path / "out" / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.precision
@pytest.mark.integration
def test_same_config_and_seed_give_the_same_metrics_and_weights(tmp_path):
    results = []
    for name in ("a", "b"):
        train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / name}")))
        results.append(torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True))
    untimed = [[{k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))} for h in r["history"]]
               for r in results]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2
    for k, v in results[0]["model"].items():
        assert torch.equal(v, results[1]["model"][k]), k


@pytest.mark.integration
def test_unfreeze_schedule_trains_the_head_first(tmp_path, imagenet_weights):
    imagenet_weights("resnet18")
    train(compose_cfg(*tiny_overrides(tmp_path, "model=resnet18", "model.weights=DEFAULT", "model.input_size=32",
                                      "trainer.epochs=3", "trainer.unfreeze_at_epoch=1", "model.trainable=all")))
    client, (run,) = mlflow_runs(tmp_path)
    counts = [m.value for m in client.get_metric_history(run.info.run_id, "trainable_params")]
    assert counts[0] == 512 * 14 + 14  # only resnet18's new fc
    assert counts[1] == counts[2] > 11_000_000


@pytest.mark.integration
def test_transfer_models_default_to_imagenet_weights_and_the_run_records_them(tmp_path, imagenet_weights):
    files = imagenet_weights("resnet50")
    cfg = compose_cfg(*tiny_overrides(tmp_path, "model=resnet50", "model.input_size=32",
                                      f"trainer.output_dir={tmp_path / 'out'}"))
    assert cfg.model.weights == "DEFAULT" and cfg.model.trainable == "partial"
    train(cfg)
    _, (run,) = mlflow_runs(tmp_path)
    assert run.data.params["model.weights_used"] == "ResNet50_Weights.IMAGENET1K_V2"
    placed = torch.load(files["resnet50"], weights_only=True)
    trained = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(trained["conv1.weight"], placed["conv1.weight"])  # frozen by trainable=partial: as loaded
    assert not torch.equal(trained["layer4.0.conv1.weight"], placed["layer4.0.conv1.weight"])  # trained


def test_offline_a_transfer_model_fails_before_any_data_is_read_naming_the_file(tmp_path, no_network):
    cfg = compose_cfg(*tiny_overrides(tmp_path, "model=inception", "model.input_size=299", store=False))
    with pytest.raises(ModelError) as e:
        train(cfg)
    assert "inception_v3_google-0cc3c7bd.pth" in str(e.value) and str(no_network) in str(e.value)
    assert "model.weights=null model.trainable=all" in str(e.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlruns").exists()  # no data read, no run started


@pytest.mark.parametrize("overrides,named", [
    (["model=resnet50", "model.weights=null"], "model.trainable=partial"),
    (["model.weights=null", "trainer.unfreeze_at_epoch=2"], "trainer.unfreeze_at_epoch=2"),
])
def test_random_weights_with_frozen_layers_are_refused_naming_both_settings(overrides, named):
    with pytest.raises(ConfigError, match=rf"model.weights=null .*{named}.* model.trainable=all"):
        validate(compose_cfg(*overrides))
    assert validate(compose_cfg("model=resnet50", "model.weights=null", "model.trainable=all")).model.weights is None


@pytest.mark.integration
def test_a_registry_that_refuses_costs_the_run_its_registration_not_its_results(tmp_path, monkeypatch):
    from mlabel_exp.tracking import registry

    def refuse(*args, **kwargs):
        raise ConfigError("cannot register runs:/x/model as 'mine': no registry here")

    monkeypatch.setattr(registry, "register_model", refuse)
    train(compose_cfg(*tiny_overrides(tmp_path, "tracking.log_model=true", "tracking.register=mine")))
    _, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and "val/best_mAP" in run.data.metrics
    assert "no registry here" in run.data.tags["registration_error"]


@pytest.mark.integration
def test_exception_marks_the_run_failed_with_its_traceback(tmp_path, monkeypatch):
    def boom(self, loader, epoch):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine.Trainer, "train_epoch", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(compose_cfg(*tiny_overrides(tmp_path)))
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert "error/traceback.txt" in artifact_paths(client, run.info.run_id)


@pytest.mark.integration
def test_stop_request_marks_the_run_killed_and_exits_non_zero(tmp_path, monkeypatch):
    real = engine.Trainer.train_epoch

    def stop_in_epoch_2(self, loader, epoch):
        if epoch == 2:
            self.callbacks.stop.set()  # as SIGINT would
        return real(self, loader, epoch)

    monkeypatch.setattr(engine.Trainer, "train_epoch", stop_in_epoch_2)
    with pytest.raises(SystemExit) as exit_info:
        train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'out'}")))
    assert exit_info.value.code != 0
    _, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED"
    assert torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("override,setting", [
    ("dropout=1.0", "dropout"), ("dropout=bogus", "dropout"), ("weight_decay=-1", "weight_decay"),
    ("optimizer.lr=-1", "optimizer.lr"), ("trainer.batch_size=0", "trainer.batch_size"),
    ("model.trainable=bogus", "model.trainable"), ("trainer.epochs=0", "trainer.epochs"),
    ("tracking.register=best", "tracking.register"),  # tiny_overrides turn tracking.log_model off
    ("tracking.log_checkpoints=last", "tracking.log_checkpoints"),
])
def test_bad_settings_fail_before_any_data_is_read(tmp_path, override, setting):
    cfg = compose_cfg(*tiny_overrides(tmp_path, "data=folder", f"data.root={tmp_path / 'nowhere'}", override))
    with pytest.raises(ConfigError, match=rf"^{setting}="):
        train(cfg)


def test_unknown_model_lists_the_choices_before_any_data_is_read(tmp_path):
    cfg = compose_cfg(*tiny_overrides(tmp_path, "data=folder", f"data.root={tmp_path / 'nowhere'}", "model.name=resnet5"))
    with pytest.raises(ModelError, match="resnet50"):
        train(cfg)


def test_regularisation_presets_values_and_per_model_defaults():
    assert validate(compose_cfg("dropout=heavy")).dropout == 0.6
    assert validate(compose_cfg("dropout=0.3", "weight_decay=strong")).weight_decay == 1e-3
    assert validate(compose_cfg("dropout=0.3")).dropout == 0.3
    assert validate(compose_cfg("model=vgg16")).dropout == 0.0
    assert validate(compose_cfg("model=resnet50")).dropout == 0.4
    assert validate(compose_cfg("model=resnet50", "dropout=none")).dropout == 0.0


def test_tracking_uri_resolves_against_the_project_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert default_uri() == f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"
    assert resolve_uri("sqlite:///other/db.sqlite") == f"sqlite:///{project_root() / 'other' / 'db.sqlite'}"
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_unwritable_tracking_location_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="tracking.uri"):
        train(compose_cfg(*tiny_overrides(tmp_path), f"tracking.uri=sqlite:///{blocker}/sub/mlflow.db"))


@pytest.mark.integration
def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="trainer.output_dir"):
        train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={blocker / 'out'}")))
    assert mlflow_runs(tmp_path)[1] == []  # no run was started


@pytest.mark.integration
def test_run_figures_are_real_images(tmp_path):
    from PIL import Image

    train(compose_cfg(*tiny_overrides(tmp_path)))
    client, (run,) = mlflow_runs(tmp_path)
    for name in ("curves.png", "per_class_ap.png", "pr_curves.png"):
        with Image.open(client.download_artifacts(run.info.run_id, name, str(tmp_path))) as im:
            assert im.width >= 400 and im.height >= 300 and len(im.convert("RGB").getcolors(1 << 16) or []) > 2


@pytest.mark.integration
def test_cfg_job_prints_the_seed_experiment_without_importing_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "mlabel_exp.run", "experiment=seed", "--cfg", "job"],
                         capture_output=True, text=True, check=True)
    job = out.stdout
    for expected in ("name: resnet50", "input_size: 299", "lr: 1.0e-05", "batch_size: 16", "epochs: 6",
                     "trainable: partial", "val_fraction: 0.2", "weights: DEFAULT"):
        assert expected in job, expected
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "mlflow" not in imported


@pytest.mark.integration
def test_run_finishes_on_corrupt_images_and_annotation_lines_and_reports_them(tmp_path):
    import json

    from mlabel_exp.data.synthetic import SyntheticSpec, generate

    root = generate(tmp_path / "data", SyntheticSpec(num_images=80, image_size=32, seed=1))
    images = root / "images"
    (images / "im3.jpg").write_bytes((images / "im3.jpg").read_bytes()[:100])   # truncated
    (images / "im4.jpg").write_bytes(b"")                                       # zero bytes
    (images / "im5.jpg").write_text("not an image at all")                      # text named .jpg
    with open(root / "annotations" / "circle.txt", "a") as f:
        f.write("twelve\n-4\n")
    cfg = compose_cfg(*tiny_overrides(tmp_path, "data=folder", f"data.root={root}", "data.on_bad_annotation=skip",
                                      "trainer.max_steps_per_epoch=0", "trainer.batch_size=16",
                                      f"trainer.output_dir={tmp_path / 'out'}"))
    train(cfg)
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    report = json.loads((tmp_path / "out" / "data_problems.json").read_text())
    assert run.data.tags["data.skipped_images"] == "3"
    assert run.data.tags["data.index_problems"] == str(len(report["index_problems"])) != "0"
    assert set(report["skipped_images"]) == {"im3.jpg", "im4.jpg", "im5.jpg"}
    assert any("circle.txt" in p and "'twelve'" in p for p in report["index_problems"])
    assert "data_problems.json" in artifact_paths(client, run.info.run_id)


@pytest.mark.precision
@pytest.mark.integration
def test_a_test_split_is_scored_once_with_the_best_weights_at_the_validation_thresholds(tmp_path, monkeypatch):
    import json

    import numpy as np

    from mlabel_exp.comparison.compare import compare
    from mlabel_exp.metrics.scores import compute

    out = tmp_path / "out"
    train(compose_cfg(*tiny_overrides(tmp_path, "data.test_fraction=0.25", "trainer.max_steps_per_epoch=0",
                                      f"trainer.output_dir={out}", *DIAGNOSTICS)))
    client, (run,) = mlflow_runs(tmp_path)
    split = json.loads((out / "split.json").read_text())
    test = pd.read_csv(out / "predictions" / "test.csv")
    assert sorted(test["file"]) == sorted(split["test"]) and not set(split["test"]) & set(split["train"] + split["val"])
    # the reference: best.pt's own predictions of the test images (not the CSV's), at thresholds.json
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    tuned = json.loads((out / "thresholds.json").read_text())
    classes, thresholds = tuned["classes"], torch.tensor(tuned["per_class"])
    images = sorted((tmp_path / "cache").rglob("images"))[0]
    files, probs, _ = Predictor.from_checkpoint(load_checkpoint(out / "checkpoints" / "best.pt")).predict_files(
        [images / f for f in test["file"]], batch_size=16, num_workers=0)
    truth = torch.tensor(np.stack([[c in json.loads(t) for c in classes] for t in test["true_labels"]]).astype(int))
    expected = compute(torch.tensor(probs), truth, thresholds, classes)
    assert_labels_are_the_written_decisions(out / "predictions" / "test.csv", out / "predictions" / "test.json",
                                            classes, tuned["per_class"])
    for key in ("mAP", "f1_micro", "f1_macro"):
        assert run.data.metrics[f"test/{key}"] == pytest.approx(expected[key], abs=1e-6), key
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert client.get_metric_history(run.info.run_id, "test/mAP")[0].step == best["epoch"]
    table = compare("mlabel-exp", tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                    out_dir=tmp_path / "cmp", log_to_mlflow=False).table
    assert table.loc[0, "test_mAP"] == pytest.approx(run.data.metrics["test/mAP"])
    # what a run records is named as before the package was laid out in sub-packages (tests/data: written then)
    recorded = {"params": sorted(run.data.params), "metrics": sorted(run.data.metrics),
                "tags": sorted(t for t in run.data.tags if t != "mlflow.source.git.commit"),
                # gallery and map pages are named by classes the model itself picks (most errors, predicted
                # somewhere), which differ with the CPU's rounding: named by their pattern
                "artifacts": sorted({re.sub(r"^(diagnostics/activation_maps/|diagnostics/gallery_[a-z]+_).*", r"\1*", p)
                                     for p in artifact_paths(client, run.info.run_id)}),
                "inputs": sorted(i.tags[0].value for i in run.inputs.dataset_inputs)}
    golden = Path(__file__).parent / "data" / "run_record_names.json"
    if os.environ.get("MLABEL_EXP_WRITE_GOLDEN") == "1":  # after a deliberate change of what a run records: review the diff
        golden.write_text(json.dumps(recorded, indent=1) + "\n")
    assert recorded == json.loads(golden.read_text())
    _diagnostics_agree_and_diagnose_writes_them_again(tmp_path, out, client, run, monkeypatch)


DIAGNOSTICS = ("diagnostics.enabled=true", "diagnostics.gallery_classes=1", "diagnostics.resamples=200",
               "diagnostics.activation_maps=1", "diagnostics.activation_map_classes=1")


def _diagnostics_agree_and_diagnose_writes_them_again(tmp_path, out, client, run, monkeypatch):
    """The run's diagnostics agree with its other files and metrics; ``diagnose run=<prefix>`` on the finished run
    writes the same files without training (the figures themselves are drawn by the run above: here only named)."""
    import json

    import matplotlib.pyplot as plt

    from mlabel_exp.diagnostics import writer as diagnostics_pass
    from mlabel_exp.diagnostics.rerun import diagnose
    from mlabel_exp.config import DiagnoseConfig, DiagnosticsConfig, TrackingConfig

    folder = out / "diagnostics"
    per_class = pd.read_csv(out / "per_class.csv")
    again = pd.read_csv(folder / "per_class_ap_val.csv")  # the same AP, interval and prevalence in both files
    for column in ("support", "prevalence", "AP", "AP low", "AP high"):
        assert per_class[column].equals(again[column]), column
    for split in ("val", "test"):
        pooled = pd.read_csv(folder / f"calibration_{split}.csv").iloc[-1]
        assert run.data.metrics[f"{split}/ece"] == pytest.approx(pooled["ECE"], rel=1e-6)  # the CSV: float32
        assert run.data.metrics[f"{split}/brier"] == pytest.approx(pooled["Brier"], rel=1e-6)
    index = json.loads((folder / "index.json").read_text())
    assert {e.get("image") or e.get("table") for e in index} <= {p.relative_to(folder).as_posix()
                                                                for p in folder.rglob("*")}
    assert any(e["image"].startswith("activation_maps/") for e in index if "image" in e)  # Grad-CAM pages listed
    drawn = []
    monkeypatch.setattr(diagnostics_pass, "save", lambda fig, path, **kw: drawn.append(path.name) or plt.close(fig))
    monkeypatch.setattr("mlabel_exp.training.trainer.Trainer.fit", None)  # no training: it would fail
    cfg = DiagnoseConfig(run=run.info.run_id[:6], out=str(tmp_path / "again"), diagnostics=DiagnosticsConfig(
        gallery_classes=1, resamples=200, activation_maps=1, activation_map_classes=1), tracking=TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                                                                   experiment="mlabel-exp"))
    done = diagnose(cfg)
    written = done.folder
    assert sorted(drawn) == sorted(p.name for p in folder.glob("*.png"))
    for name in [p.name for p in folder.iterdir() if p.suffix in (".csv", ".json")]:
        assert (written / name).read_text() == (folder / name).read_text(), name
    assert len(client.get_metric_history(run.info.run_id, "test/ece")) == 2  # logged into the run once more
    _diagnose_says_where_it_fails_and_rewrites_the_report(out, done, client, run)


def _read_labels(csv: Path):
    """(classes, probabilities, true labels with unknowns -1, predicted labels) of a predictions CSV, read plainly."""
    import json

    frame = pd.read_csv(csv)
    classes = list(frame.columns[1:frame.columns.get_loc("labels")])
    def hot(column):
        return np.array([[c in json.loads(v) for c in classes] for v in frame[column]])
    targets = np.where(hot("unknown_labels"), -1, hot("true_labels").astype(int))
    return classes, frame[classes].to_numpy(), targets, hot("labels")


def _diagnose_says_where_it_fails_and_rewrites_the_report(out, done, client, run):
    """diagnose's findings against a plain reference (scikit-learn's AP over the known labels; the confusion counted
    image by image), the run's page as a person opens it (contents first, galleries folded, a few hundred KB at most
    per page of photographs), and report.html rewritten beside the new diagnostics and logged into the run."""
    from sklearn.metrics import average_precision_score

    from mlabel_exp.cli.diagnose import findings
    from mlabel_exp.diagnostics.report import THUMBNAIL_PX
    from tests.test_report import assert_self_contained

    classes, probs, targets, predicted = _read_labels(out / "predictions" / "val.csv")
    ap = {c: average_precision_score(targets[targets[:, k] >= 0, k], probs[targets[:, k] >= 0, k])
          for k, c in enumerate(classes) if (targets[:, k] == 1).any()}
    worst = sorted(ap, key=ap.get)[:3]
    assert [c for c, _, _ in done.worst["val"]] == worst
    assert [a for _, a, _ in done.worst["val"]] == pytest.approx([ap[c] for c in worst], abs=1e-5)  # float32 files
    assert [n for _, _, n in done.worst["val"]] == [int((targets[:, classes.index(c)] == 1).sum()) for c in worst]
    for i, j, share, n in done.confusions["val"]:
        among = (targets[:, classes.index(i)] == 1) & (targets[:, classes.index(j)] == 0)
        assert n == among.sum() and share == pytest.approx(predicted[among, classes.index(j)].mean())
    printed = "\n".join(findings(done))
    assert f"weakest classes (val AP, positives): {worst[0]} {ap[worst[0]]:.3f}" in printed
    assert all(f"{i} -> {j}: {share:.2f} of {n} images" in printed for i, j, share, n in done.confusions["val"])
    page = (out / "report.html").read_text()  # the training run's, from its own diagnostics
    assert_self_contained(page, out)
    assert page.index('<nav class="toc">') < page.index("<h2") and "<details><summary>Errors of " in page
    photos = [p for p in (out / "diagnostics").rglob("*.png") if p.name.startswith("gallery_") or
              p.parent.name == "activation_maps"]
    charts = [p for p in [*out.glob("*.png"), *(out / "diagnostics").glob("*.png")] if p not in photos]
    bound = 4 / 3 * (sum(p.stat().st_size for p in charts) + len(photos) * THUMBNAIL_PX ** 2) + 100_000
    assert len(page.encode()) < bound  # a thumbnail: at most 1 byte a pixel, and never taller than wide
    rewritten = done.report.read_text()
    assert done.report == done.folder.parent / "report.html" and done.report.parent != out
    assert "Weakest classes (val AP, positives): " + ", ".join(f"{c} {a:.3f} ({n})" for c, a, n in done.worst["val"]) \
        in rewritten and f"Best val mAP {run.data.metrics['val/best_mAP']:.4f}" in rewritten  # the run's own files
    stored = client.download_artifacts(run.info.run_id, "report.html", str(done.folder.parent / "stored"))
    assert Path(stored).read_text() == rewritten


@pytest.mark.parametrize("args,message", [
    (["optimizer.lr=-1"], "error: optimizer.lr=-1.0 is invalid: expected a number > 0"),
    (["trainer.epoch=3"], "error: trainer.epoch is not a setting (did you mean trainer.epochs?)"),
])
def test_a_settings_error_is_one_line_and_exit_status_2(args, message, tmp_path, monkeypatch, capsys):
    from mlabel_exp.cli.run import main

    monkeypatch.setenv("MLABEL_EXP_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["mlabel_exp.run", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines() == [message] and "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()  # nothing was opened or written


@pytest.mark.integration
def test_a_data_error_of_the_real_command_is_one_line_and_exit_status_2(tmp_path):
    """The same, from the shell: the exit status a script or a scheduler sees, and no traceback from Hydra's job."""
    done = subprocess.run([sys.executable, "-m", "mlabel_exp.run", "data=folder", "data.root=/no/such/folder"],
                          capture_output=True, text=True, env={**os.environ, "MLABEL_EXP_ROOT": str(tmp_path)},
                          timeout=120)
    message = "error: data.root='/no/such/folder': /no/such/folder does not exist"
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr
    assert not (tmp_path / "mlruns").exists()  # nothing was opened or written


@pytest.mark.integration
def test_a_smoke_run_logs_no_third_party_warning_and_ends_by_saying_where_to_look(tmp_path):
    """The real command, as a person runs it: a pyfunc model is logged, the log holds no warning from a library,
    and the last lines name the best figure, the output folder, the UI command, the run's page and the runs table."""
    done = subprocess.run([sys.executable, "-m", "mlabel_exp.run", *tiny_overrides(tmp_path, "tracking.log_model=true",
                                                                                   f"trainer.output_dir={tmp_path / 'out'}")],
                          capture_output=True, text=True, env={**os.environ, "MLABEL_EXP_ROOT": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = done.stdout + done.stderr
    assert "Warning" not in logs and "site-packages" not in logs and "Downloading artifacts" not in logs, logs[-3000:]
    assert "8 of 64 train / 8 of 16 val images an epoch (trainer.max_steps_per_epoch=2)" in logs
    client, (run,) = mlflow_runs(tmp_path)
    lines = done.stdout.strip().splitlines()
    tail = lines[len(lines) - 1 - lines[::-1].index(lines[-1], 1):]  # the closing block, between its two rules
    assert tail[1].startswith(f"best val mAP {run.data.metrics['val/best_mAP']:.4f} at epoch")
    assert f"outputs:  {tmp_path / 'out'}" in tail and "--workers 1" in " ".join(tail)
    assert tail[-3] == (f"run:      http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                        "?workflowType=machine_learning")
    assert tail[-2] == (f"runs:     http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?viewStateShareKey="
                        "mlabel-best-first&workflowType=machine_learning")  # the runs table, best val mAP first
