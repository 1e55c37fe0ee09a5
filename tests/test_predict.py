"""Predictions on new images from a trained run, and the run's MLflow pyfunc model."""

import copy
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from mlabel_exp.errors import ConfigError
from mlabel_exp.experiment.predict import predict
from mlabel_exp.config import PredictConfig
from mlabel_exp.experiment.train import train
from tests.conftest import artifact_paths, compose_cfg, huge_png, mlflow_runs, peak_memory_growth, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    train(compose_cfg(*tiny_overrides(tmp, f"trainer.output_dir={tmp / 'out'}", "tracking.log_model=true",
                                      "tracking.register=tiny-run")))
    client, (run,) = mlflow_runs(tmp)
    images = sorted((tmp / "cache").rglob("images"))[0]
    return tmp, client, run.info.run_id, images


def test_the_best_weights_sit_on_disk_once_inside_the_model_and_predict_run_reads_them_there(trained, new_images,
                                                                                             tmp_path):
    """By default (tracking.log_checkpoints=best, a model, registered) the run's store holds no checkpoints/best.pt: the
    model carries the best weights, and the output folder's best.pt is that same file. Every file of the output
    folder and the store (registry included) at least as large as the best weights is best.pt or last.pt (or an
    exported model.onnx, the weights in another format, which a test below asks for)."""
    tmp, client, run_id, _ = trained
    assert not any(f.startswith("checkpoints/") for f in artifact_paths(client, run_id))
    local = tmp / "out" / "checkpoints"
    big = {os.stat(f).st_ino for root in (tmp / "out", tmp / "mlruns") for f in root.rglob("*")
           if f.is_file() and f.suffix != ".onnx" and f.stat().st_size >= (local / "best.pt").stat().st_size}
    assert big == {os.stat(local / "best.pt").st_ino, os.stat(local / "last.pt").st_ino}
    assert os.stat(local / "best.pt").st_nlink == 2  # the output folder's and the model's
    result = predict(_cfg(tmp, run=run_id, input=str(new_images), log_to_run=False), tmp_path / "o")
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["checkpoint"] == f"runs:/{run_id}/model/artifacts/best.pt" and len(result.files) == 4


@pytest.fixture
def new_images(trained, tmp_path):
    _, _, _, images = trained
    folder = tmp_path / "new"
    folder.mkdir()
    for i in (3, 10, 2, 7):
        (folder / f"im{i}.jpg").write_bytes((images / f"im{i}.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes((images / "im1.jpg").read_bytes()[:200])  # truncated JPEG
    (folder / "notes.jpg").write_text("not an image")
    return folder


def _cfg(tmp, **kw):
    from mlabel_exp.config import TrackingConfig

    return PredictConfig(tracking=TrackingConfig(uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"), **kw)


@pytest.mark.precision
def test_predict_from_a_run_writes_three_outputs_and_skips_unreadable_files(trained, new_images, tmp_path):
    """Also an image over the pixel limit and a symbolic link loop, each refused with its reason. Read back from the
    files, every label is exactly written probability >= written threshold, in float64 and in float32, in the CSV,
    the JSON and the submission."""
    tmp, client, run_id, _ = trained
    (new_images / "huge.png").write_bytes(huge_png())
    (new_images / "loop.jpg").symlink_to("loop.jpg")
    out = tmp_path / "out"
    result = predict(_cfg(tmp, run=run_id, input=str(new_images)), out)
    assert result.files == ["im2.jpg", "im3.jpg", "im7.jpg", "im10.jpg"]  # natural order
    assert set(result.skipped) == {"broken.jpg", "notes.jpg", "huge.png", "loop.jpg"}
    assert result.skipped["huge.png"].startswith("ImageTooLarge: 12000 x 12000 pixels, over the limit")
    assert result.skipped["loop.jpg"] == "a symbolic link loop (-> loop.jpg)"
    csv = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(csv["file"]) == result.files and list(csv.columns[1:15]) == result.classes
    payload = json.loads((out / "predictions.json").read_text())
    assert list(payload["predictions"]) == result.files
    thresholds = json.loads((tmp / "out" / "thresholds.json").read_text())["per_class"]
    assert list(payload["thresholds"].values()) == thresholds  # the run's tuned thresholds, the same numbers
    probs = np.array([[rec["probabilities"][c] for c in result.classes] for rec in payload["predictions"].values()])
    assert np.array_equal(csv[result.classes].to_numpy(), probs)  # the same numbers in the CSV and the JSON
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["image", *sorted(result.classes)] and list(sub["image"]) == result.files
    for p, t in ((probs, np.array(thresholds)), (probs.astype(np.float32), np.array(thresholds, dtype=np.float32))):
        expected = [[c for c, on in zip(result.classes, row) if on] for row in p >= t]
        assert [rec["labels"] for rec in payload["predictions"].values()] == expected
        assert [json.loads(s) for s in csv["labels"]] == expected  # a JSON array a cell: any class name whole
        assert [[c for c in sorted(result.classes) if row[c]] for _, row in sub.iterrows()] == \
            [sorted(e) for e in expected]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 4 and summary["skipped_files"] == result.skipped
    logged = artifact_paths(client, run_id)
    assert {"predictions/new/predictions.csv", "predictions/new/submission.csv"} <= logged


@pytest.mark.precision
def test_predict_from_a_checkpoint_with_a_glob_and_a_fixed_threshold(trained, new_images, tmp_path):
    tmp, _, _, _ = trained
    (new_images / "im11.jpg").symlink_to("moved.jpg")  # a link whose target is gone: skipped, and said so
    result = predict(_cfg(tmp, checkpoint=str(tmp / "out" / "checkpoints" / "best.pt"),
                          input=str(new_images / "im*.jpg"), threshold=0.5), tmp_path / "o")
    assert result.files == ["im2.jpg", "im3.jpg", "im7.jpg", "im10.jpg"]
    assert result.skipped == {"im11.jpg": "a symbolic link to a missing target (-> moved.jpg)"}
    labels = pd.read_csv(tmp_path / "o" / "predictions.csv")["labels"]
    expected = [[c for c, p in zip(result.classes, row) if p >= 0.5] for row in result.probs]
    assert [json.loads(s) for s in labels] == expected


def _predict_the_validation_images(out, images, tmp_path, device):
    """(logged validation probabilities, predict's probabilities for the same files) of the run in ``out``."""
    logged = pd.read_csv(out / "predictions" / "val.csv")
    folder = tmp_path / "val"
    folder.mkdir(parents=True)
    for name in logged["file"]:
        (folder / name).write_bytes((images / name).read_bytes())
    result = predict(_cfg(out.parent, checkpoint=str(out / "checkpoints" / "best.pt"), input=str(folder),
                          device=device), tmp_path / "o")
    got = pd.DataFrame(result.probs, columns=result.classes, index=result.files).loc[list(logged["file"])]
    assert len(got) == len(logged) >= 4
    return logged[result.classes].to_numpy(), got.to_numpy()


#: How far predict may move a bfloat16 run's probability when it replays the run's dtype with other batch sizes (other
#: kernels, whose float32 accumulations round differently before the cast to bfloat16): a logit by at most a couple
#: of bfloat16 ulps (2 * 2**-8 relative, logits here |z| < 8), through the sigmoid's slope of at most 1/4.
BF16_REPLAY_ATOL = 0.25 * 8 * 2 * 2**-8


def _run_dtype(out) -> str:
    return torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["amp_dtype"]


@pytest.mark.precision
def test_predict_reproduces_the_runs_validation_probabilities(trained, tmp_path):
    """Predicting the validation images with best.pt gives what training logged for them (same pipeline, same dtype).
    In float32 only the batch composition differs, which changes no arithmetic of an eval-mode model; a run that
    validated in bfloat16 (a CPU with bfloat16 instructions) is replayed in bfloat16, within BF16_REPLAY_ATOL."""
    tmp, _, _, images = trained
    logged, got = _predict_the_validation_images(tmp / "out", images, tmp_path, "cpu")
    np.testing.assert_allclose(got, logged, atol=1e-5 if _run_dtype(tmp / "out") == "float32" else BF16_REPLAY_ATOL)


def test_a_bfloat16_cpu_run_is_replayed_in_bfloat16_where_the_cpu_has_it_else_in_float32(tmp_path, monkeypatch):
    """trainer.amp (on by default) trains and validates in bfloat16 on a CPU with bfloat16 instructions; predict on
    such a CPU replays bfloat16 (the thresholds were tuned on those probabilities), and on a CPU without them (where
    bfloat16 is emulated, slower than float32) predicts in float32. Both CPUs are simulated: the arithmetic is the
    same, only slower where emulated. float32 against bfloat16 tolerance from the arithmetic: bfloat16 rounds each
    of the 9 layers' inputs and weights to 2**-9 relative, so a logit moves by at most 9 * 2 * 2**-9 of its size,
    the sigmoid's slope is at most 1/4."""
    from mlabel_exp.inference import predictor
    from mlabel_exp.runtime import precision
    from mlabel_exp.training.checkpoints import load_checkpoint

    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: True)
    out = tmp_path / "out"
    train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={out}")))
    _, (run,) = mlflow_runs(tmp_path)
    assert run.data.params["precision"] == "bfloat16 autocast" and _run_dtype(out) == "bfloat16"
    images = sorted((tmp_path / "cache").rglob("images"))[0]
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    assert predictor.Predictor.from_checkpoint(ckpt).amp_dtype == torch.bfloat16
    logged, native = _predict_the_validation_images(out, images, tmp_path / "native", "cpu")
    np.testing.assert_allclose(native, logged, atol=BF16_REPLAY_ATOL)

    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: False)
    assert predictor.Predictor.from_checkpoint(ckpt).amp_dtype == torch.float32
    _, emulated = _predict_the_validation_images(out, images, tmp_path / "float32", "cpu")
    assert not np.array_equal(emulated, native)  # another dtype did compute them
    max_logit = np.max(np.abs(np.log(logged) - np.log1p(-logged)))
    np.testing.assert_allclose(emulated, logged, atol=0.25 * max_logit * 9 * 2 * 2**-9)


@cuda_only
def test_predict_on_cuda_reproduces_a_cuda_runs_validation_probabilities(tmp_path):
    """A run trained on CUDA validated under bf16 autocast; predict replays that dtype (the thresholds were tuned on
    those probabilities), within BF16_REPLAY_ATOL."""
    train(compose_cfg(*tiny_overrides(tmp_path, "trainer.device=cuda", f"trainer.output_dir={tmp_path / 'out'}")))
    images = sorted((tmp_path / "cache").rglob("images"))[0]
    logged, got = _predict_the_validation_images(tmp_path / "out", images, tmp_path, "cuda")
    np.testing.assert_allclose(got, logged, atol=BF16_REPLAY_ATOL)


def labels_at_thresholds(result) -> list[str]:
    return [" ".join(c for c, p, t in zip(result.classes, row, result.thresholds) if p >= t) for row in result.probs]


@pytest.mark.precision
def test_pyfunc_model_gives_the_same_probabilities(trained, new_images, tmp_path):
    """The same probabilities and labels as predict; an unreadable row and one over the pixel limit get their error
    (the latter refused from its header: peak memory barely moves, where decoding it took 720 MB), the others are
    answered; every label is exactly the answered probability >= the run's written threshold."""
    import mlflow

    tmp, _, run_id, _ = trained
    result = predict(_cfg(tmp, run=run_id, input=str(new_images), log_to_run=False, device="cpu"), tmp_path / "o")
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    blobs = [(new_images / f).read_bytes() for f in result.files]
    request = pd.DataFrame({"image": [*blobs[:2], b"not an image", huge_png(), *blobs[2:]]})
    model.predict(request.iloc[:1])  # the first call's one-off allocations (kernels, caches) out of the measure
    frame, grown = peak_memory_growth(lambda: model.predict(request))
    assert grown < 100 * 2**20, grown  # decoding the 12000 x 12000 image: 144 MB at 1 byte a pixel, 432 MB as RGB
    assert list(frame.columns) == [*result.classes, "labels", "error"]
    good = frame.drop(index=[2, 3])
    np.testing.assert_allclose(good[result.classes].to_numpy(dtype=float), result.probs, atol=1e-5)
    assert list(good["labels"]) == labels_at_thresholds(result) and (good["error"] == "").all()
    assert frame.loc[2, "error"] == "row 2: not a readable image (UnidentifiedImageError)"
    assert frame.loc[3, "error"].startswith("row 3: 12000 x 12000 pixels, over the limit of 89478485 "
                                            "(PIL.Image.MAX_IMAGE_PIXELS): refused before decoding")
    assert frame.loc[[2, 3], result.classes].isna().all().all() and (frame.loc[[2, 3], "labels"] == "").all()
    thresholds = json.loads((tmp / "out" / "thresholds.json").read_text())["per_class"]
    answered = good[result.classes].to_numpy(dtype=float)
    assert [s.split() for s in good["labels"]] == \
        [[c for c, on in zip(result.classes, row) if on] for row in answered >= np.array(thresholds)]


def test_logging_the_model_scans_no_installed_distribution_and_pins_this_torch(tmp_path, monkeypatch):
    """MLflow's requirements check indexes the files of every installed distribution (~1 s of each run's end); ours come
    from this environment, so log_model skips it. The model's requirements still pin the torch that trained it."""
    import importlib_metadata
    import mlflow.utils.requirements_utils as requirements_utils
    import torchvision
    from mlflow.artifacts import download_artifacts

    from mlabel_exp.tracking.runs import Tracker

    scans = []
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # MLflow's cache of the scan: empty
    monkeypatch.setattr(importlib_metadata, "packages_distributions", lambda: scans.append("scan") or {})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "models")
    tracker.start("model only", {}, {})
    torch.save({}, tmp_path / "best.pt")
    tracker.log_model(tmp_path / "best.pt", ["bird", "tree"], 64)
    tracker.end()
    assert scans == []
    path = download_artifacts(f"runs:/{tracker.run_id}/model/requirements.txt", tracking_uri=uri)
    requirements = open(path).read().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert f"torchvision=={torchvision.__version__.split('+')[0]}" in requirements


def test_tracking_register_makes_a_version_of_the_runs_model(trained):
    from mlflow.tracking import MlflowClient

    tmp, _, run_id, _ = trained
    (version,) = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}").search_model_versions("name='tiny-run'")
    assert version.run_id == run_id and int(version.version) == 1


@pytest.mark.slow
def test_the_champion_is_served_over_http_with_a_per_row_error_for_a_corrupt_image(trained, new_images, tmp_path):
    """compare register_best=, then the real `mlflow models serve` on 127.0.0.1, called as the README's curl does."""
    import base64
    import os
    import subprocess
    import time
    import urllib.request

    from mlabel_exp.comparison.compare import compare
    from mlabel_exp.runtime.distributed import free_port

    tmp, _, run_id, _ = trained
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    result = compare(tracking_uri=uri, out_dir=tmp_path / "cmp", log_to_mlflow=False, register_best_as="tiny")
    assert result.registered == (run_id, 1)
    expected = predict(_cfg(tmp, run=run_id, input=str(new_images), log_to_run=False, device="cpu"), tmp_path / "o")
    port, bin_dir = free_port(), os.path.dirname(sys.executable)
    server = subprocess.Popen([os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", "models:/tiny@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):  # bounded wait: the server imports torch and loads the model
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                time.sleep(0.5)
        rows = [[base64.b64encode((new_images / f).read_bytes()).decode()] for f in expected.files]
        rows.insert(1, [base64.b64encode(b"corrupt").decode()])
        rows.insert(2, [base64.b64encode(huge_png()).decode()])  # over the pixel limit: refused, not decoded
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        assert server.poll() is None  # still serving
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(answer) == len(expected.files) + 2
    bad, huge = answer.pop(1), answer.pop(1)
    assert bad["error"].startswith("row 1: not a readable image") and bad[expected.classes[0]] is None
    assert huge["error"].startswith("row 2: 12000 x 12000 pixels, over the limit") and huge[expected.classes[0]] is None
    got = np.array([[row[c] for c in expected.classes] for row in answer])
    np.testing.assert_allclose(got, expected.probs, atol=1e-5)
    assert [row["labels"] for row in answer] == labels_at_thresholds(expected)


def test_bad_predict_settings_are_named(trained, tmp_path):
    tmp, _, run_id, images = trained
    with pytest.raises(ConfigError, match="exactly one of run="):
        _cfg(tmp, input="x")
    with pytest.raises(ConfigError, match="threshold"):
        _cfg(tmp, run=run_id, input="x", threshold="high")
    with pytest.raises(ConfigError, match="no files found"):
        predict(_cfg(tmp, run=run_id, input=str(tmp_path / "empty*")), tmp_path / "o")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "loop.jpg").symlink_to("loop.jpg")
    with pytest.raises(ConfigError, match=r"no files found \(loop.jpg: a symbolic link loop \(-> loop.jpg\)\)"):
        predict(_cfg(tmp, run=run_id, input=str(tmp_path / "links")), tmp_path / "o")
    with pytest.raises(ConfigError, match="run=0123456789abcdef: no run of experiment 'mlabel-exp' at sqlite:///.* "
                                          "has an id starting with '0123456789abcdef'"):
        predict(_cfg(tmp, run="0123456789abcdef", input=str(images)), tmp_path / "o")
    with pytest.raises(ConfigError, match=f"run={'0' * 32}: no such run at sqlite:///"):
        predict(_cfg(tmp, run="0" * 32, input=str(images)), tmp_path / "o")


def test_a_run_is_named_by_a_prefix_latest_best_or_its_sweep_parent(trained, new_images, tmp_path):
    """Each names the trained run (the only one): a sweep parent's id stands for its winning run, whose outputs
    these are (the parent has no checkpoint)."""
    from mlabel_exp.tracking.runs import KIND_TAG

    tmp, client, run_id, _ = trained
    parent = client.create_run(client.get_run(run_id).info.experiment_id, run_name="sweep x",
                               tags={KIND_TAG: "sweep", "sweep_id": "x", "best_run_id": run_id}).info.run_id
    try:
        for ref in (run_id[:6], "latest", "best", parent[:8]):
            predict(_cfg(tmp, run=ref, input=str(new_images), log_to_run=False), tmp_path / ref)
            assert json.loads((tmp_path / ref / "summary.json").read_text())["run"] == run_id, ref
    finally:
        client.delete_run(parent)


def test_predict_command(trained, new_images, tmp_path, monkeypatch, capsys, caplog):
    """The command line through Hydra, in this process (a subprocess would prove nothing more here); run=latest is
    the newest finished run."""
    from mlabel_exp.cli.predict import main

    tmp, _, run_id, _ = trained
    monkeypatch.setattr(sys, "argv", ["predict", "run=latest", f"input={new_images}",
                                      f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", f"out={tmp_path / 'cli'}",
                                      f"hydra.run.dir={tmp_path / 'job'}"])
    main()
    out = capsys.readouterr()
    assert "predicted 4 image(s), skipped 2 unreadable file(s)" in out.out
    assert out.out.count("  im") == 4 and f"outputs logged to run {run_id} under predictions/" in out.out
    logs = out.out + out.err + caplog.text
    assert "skipped broken.jpg" in logs and "skipped notes.jpg" in logs
    assert len(pd.read_csv(tmp_path / "cli" / "predictions.csv")) == 4


@pytest.mark.precision
def test_predictor_from_a_saved_checkpoint_replays_the_runs_preprocessing_and_thresholds(trained):
    """The checkpoint alone is enough: its recorded preprocessing, its tuned thresholds, and the same probabilities
    whether images come one batch in memory (the pyfunc model) or through DataLoader workers (predict)."""
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    tmp, _, _, images = trained
    ckpt = load_checkpoint(tmp / "out" / "checkpoints" / "best.pt")
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.preprocessing == {"decode_size": 32, "input_size": 32, "mean": ckpt["config"]["model"]["mean"],
                                       "std": ckpt["config"]["model"]["std"], "interpolation": "bilinear"}
    saved = json.loads((tmp / "out" / "thresholds.json").read_text())
    assert np.array_equal(predictor.thresholds, np.float32(saved["per_class"])) and predictor.classes == saved["classes"]
    paths = [images / f"im{i}.jpg" for i in (1, 2, 3)]
    files, probs, skipped = predictor.predict_files(paths, batch_size=2, num_workers=0)
    in_memory, errors = predictor.predict_encoded([p.read_bytes() for p in paths])
    assert errors == ["", "", ""]
    assert files == ["im1.jpg", "im2.jpg", "im3.jpg"] and not skipped
    # other batch compositions may take other CPU kernels: float32 rounding of a few ulps of each logit, scaled by
    # the sigmoid's slope (<= 1/4), far below 1e-5; the same bound as the validation reproduction above
    np.testing.assert_allclose(in_memory, probs, atol=1e-5)


def test_a_checkpoint_with_a_class_named_like_an_output_column_is_refused_before_predicting(trained):
    """A run trained before such names were refused: its class would overwrite a column of every output."""
    from mlabel_exp.errors import DataError
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    tmp, _, _, _ = trained
    ckpt = load_checkpoint(tmp / "out" / "checkpoints" / "best.pt")
    ckpt["classes"] = ["labels", *ckpt["classes"][1:]]
    with pytest.raises(DataError, match="the checkpoint: class 'labels' has the name of a column .*train again"):
        Predictor.from_checkpoint(ckpt)


def test_a_corrupt_checkpoint_is_named(tmp_path):
    from mlabel_exp.training.checkpoints import load_checkpoint

    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ConfigError, match=r"best\.pt cannot be read as a checkpoint.*corrupt"):
        load_checkpoint(bad)


def test_predict_names_files_by_their_path_below_the_input(trained, tmp_path):
    tmp, _, _, images = trained
    for sub, i in (("a", 3), ("b", 4)):  # two different images, both called x.jpg
        (tmp_path / "g" / sub).mkdir(parents=True)
        (tmp_path / "g" / sub / "x.jpg").write_bytes((images / f"im{i}.jpg").read_bytes())
    result = predict(_cfg(tmp, checkpoint=str(tmp / "out" / "checkpoints" / "best.pt"),
                          input=str(tmp_path / "g" / "*" / "x.jpg"), device="cpu"), tmp_path / "o")
    assert result.files == ["a/x.jpg", "b/x.jpg"]
    assert set(json.loads((tmp_path / "o" / "predictions.json").read_text())["predictions"]) == {"a/x.jpg", "b/x.jpg"}
    assert not np.allclose(result.probs[0], result.probs[1])


@pytest.mark.precision
def test_predict_replays_a_smaller_decoded_cache_size(tmp_path):
    """Trained from a decoded cache kept at 16 px and resized to 32 on the device: predict resizes the same twice."""
    train(compose_cfg(*tiny_overrides(tmp_path, "data.decoded_cache=on", "data.decoded_cache_size=16",
                                      f"trainer.output_dir={tmp_path / 'out'}")))
    images = sorted((tmp_path / "cache").rglob("images"))[0]
    logged, got = _predict_the_validation_images(tmp_path / "out", images, tmp_path, "cpu")
    np.testing.assert_allclose(got, logged, atol=1e-5)


# ------------------------------------------------------------------ the exported ONNX model (python -m mlabel_exp.export)

@pytest.fixture(scope="module")
def exported(trained):
    """The run exported once, by its id's prefix, into its output folder (the default), and logged under it."""
    from mlabel_exp.experiment.export import export
    from mlabel_exp.config import ExportConfig, TrackingConfig

    tmp, client, run_id, _ = trained
    before = client.get_run(run_id).info
    result = export(ExportConfig(run=run_id[:8], tracking=TrackingConfig(uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")))
    return result, before


def _metadata_preprocessed(path, meta):
    """A consumer's own preprocessing, from the file's metadata alone: decode to RGB, the resize it names (on uint8, to
    decode_size), divide by 255, normalise; an NCHW float32 batch of one."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    pre = json.loads(meta["preprocessing"])
    assert pre["decode_size"] == pre["input_size"] and (pre["layout"], pre["channels"]) == ("NCHW", "RGB")
    assert pre["resize_dtype"] == "uint8" and pre["crop"] is None and not pre["keep_aspect_ratio"]
    x = F.resize(F.pil_to_tensor(Image.open(path).convert("RGB")), [pre["decode_size"]] * 2,
                 interpolation=InterpolationMode(pre["interpolation"]), antialias=pre["antialias"])
    x = x.float() / 255
    return ((x - torch.tensor(pre["mean"])[:, None, None]) / torch.tensor(pre["std"])[:, None, None])[None].numpy()


def test_export_writes_an_onnx_model_that_a_consumer_runs_from_its_metadata_alone(trained, exported):
    """The file in the run's output folder: the run's classes and (lossless) tuned thresholds in its metadata; fed
    images preprocessed by its metadata alone, onnxruntime gives the probabilities training logged for the validation
    images, within the parity tolerance, at any batch size. Its parity check passed on every validation image."""
    import onnx
    import onnxruntime

    tmp, _, run_id, images = trained
    result, _ = exported
    assert result.path == tmp / "out" / "export" / "model.onnx" and result.run == run_id
    model = onnx.load(result.path)
    meta = {p.key: p.value for p in model.metadata_props}
    saved = json.loads((tmp / "out" / "thresholds.json").read_text())
    assert json.loads(meta["classes"]) == saved["classes"] and json.loads(meta["thresholds"]) == saved["per_class"]
    assert meta["exporter"] == result.exporter in ("dynamo", "legacy") and meta["run_id"] == run_id
    (inp,) = model.graph.input
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 32, 32]
    logged = pd.read_csv(tmp / "out" / "predictions" / "val.csv")
    batch = np.concatenate([_metadata_preprocessed(images / f, meta) for f in logged["file"]])
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    whole = session.run(None, {"image": batch})[0]
    one_by_one = np.concatenate([session.run(None, {"image": x[None]})[0] for x in batch])
    parity = result.parity
    assert parity.ok and parity.images == len(logged) and parity.max_difference <= parity.tolerance
    np.testing.assert_allclose(whole, logged[saved["classes"]].to_numpy(), rtol=0, atol=parity.tolerance)
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=parity.tolerance)
    assert json.loads((result.path.parent / "export.json").read_text())["parity"]["max_difference"] == \
        parity.max_difference


def test_the_exported_model_is_logged_under_the_run_with_the_onnx_flavor(trained, exported):
    """Loadable by MLflow as a pyfunc model (what serving and the registry use), answering the file's probabilities;
    the run keeps its status and end time."""
    import mlflow

    tmp, client, run_id, images = trained
    result, before = exported
    info = mlflow.models.get_model_info(result.model_uri)
    assert "onnx" in info.flavors and info.run_id == run_id
    assert json.loads(info.metadata["classes"]) == json.loads((tmp / "out" / "thresholds.json").read_text())["classes"]
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time)
    assert "export/export.json" in artifact_paths(client, run_id)
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    served = mlflow.pyfunc.load_model(result.model_uri).predict(x)["probabilities"]
    import onnxruntime

    direct = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    np.testing.assert_allclose(served, direct[0], rtol=0, atol=result.parity.tolerance)


def test_predict_with_the_onnx_file_gives_the_runs_labels_and_probabilities(trained, exported, new_images, tmp_path):
    """The same files, skipped files and columns; probabilities within the parity tolerance and labels equal except
    where a probability lies within it of its threshold (none here: asserted)."""
    tmp, _, run_id, _ = trained
    result, _ = exported
    on_run = predict(_cfg(tmp, run=run_id, input=str(new_images), log_to_run=False, device="cpu"), tmp_path / "run")
    on_file = predict(_cfg(tmp, model_file=str(result.path), input=str(new_images)), tmp_path / "onnx")
    assert on_file.files == on_run.files and on_file.skipped.keys() == on_run.skipped.keys()
    assert on_file.classes == on_run.classes and np.array_equal(on_file.thresholds, on_run.thresholds)
    tol = result.parity.tolerance
    np.testing.assert_allclose(on_file.probs, on_run.probs, rtol=0, atol=tol)
    assert not (np.abs(on_run.probs - on_run.thresholds) <= tol).any()  # so every label must agree
    for name in ("predictions.csv", "submission.csv"):
        run_csv, file_csv = (pd.read_csv(tmp_path / d / name, keep_default_na=False) for d in ("run", "onnx"))
        assert list(file_csv.columns) == list(run_csv.columns)
        label_columns = ["labels"] if name == "predictions.csv" else on_run.classes
        assert file_csv[label_columns].equals(run_csv[label_columns])
    assert json.loads((tmp_path / "onnx" / "summary.json").read_text())["model"] == str(result.path)


def test_export_fails_in_one_line_and_logs_nothing_when_the_exported_model_differs(trained, exported, tmp_path,
                                                                                     monkeypatch, capsys):
    """A weight perturbed on its way into the exporter (a head bias moved by 0.1: probabilities by up to 0.025): the
    parity check fails the command (exit status 2, one line) and no model is logged. It fails on the probabilities,
    by what the perturbation moves them: max |sigmoid(z + 0.1) - sigmoid(z)| over the run's validation images (z from
    the logged probabilities, which predict reproduces within 1e-5), far over the tolerance. The legacy exporter, for
    speed."""
    from mlabel_exp.cli.export import main
    from mlabel_exp.inference import exported as exporting

    tmp, client, run_id, _ = trained
    models = client.search_logged_models([client.get_run(run_id).info.experiment_id])
    original = exporting.to_onnx

    def perturbed(model, *args, **kwargs):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.head[-1].bias += 0.1
        return original(model, *args, **kwargs)

    monkeypatch.setattr(exporting, "to_onnx", perturbed)
    monkeypatch.setattr(sys, "argv", ["export", f"run={run_id}", "exporter=legacy", f"out={tmp_path / 'x'}",
                                      f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
                                      f"hydra.run.dir={tmp_path / 'job'}"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    assert e.value.code == 2 and out.err.startswith("error: parity check failed") and out.err.count("\n") == 1
    assert "exported with torch.onnx's legacy TorchScript-based exporter" in out.out and "OVER the tolerance" in out.out
    parity = json.loads((tmp_path / "x" / "export.json").read_text())["parity"]
    classes = json.loads((tmp / "out" / "thresholds.json").read_text())["classes"]
    p = pd.read_csv(tmp / "out" / "predictions" / "val.csv")[classes].to_numpy(np.float64)
    moved = np.abs(1 / (1 + np.exp(-(np.log(p) - np.log1p(-p) + 0.1))) - p).max()
    assert not parity["ok"] and parity["max_difference"] > 100 * parity["tolerance"]
    assert parity["max_difference"] == pytest.approx(moved, abs=1e-5 + parity["tolerance"])
    assert len(client.search_logged_models([client.get_run(run_id).info.experiment_id])) == len(models)


def test_predict_warns_when_every_image_gets_the_same_labels(trained, tmp_path, caplog):
    """Ten copies of one image get one label set: one warning line naming it (a model fed images unlike its training
    images does that silently otherwise). Fewer than ten images, or two label sets, say nothing."""
    from mlabel_exp.experiment.predict import SAME_LABELS_MIN, same_labels_warning

    tmp, _, run_id, images = trained
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(SAME_LABELS_MIN):
        (folder / f"copy{i}.jpg").write_bytes((images / "im3.jpg").read_bytes())
    result = predict(_cfg(tmp, run=run_id, input=str(folder), log_to_run=False, device="cpu"), tmp_path / "o")
    labels = pd.read_csv(tmp_path / "o" / "predictions.csv", keep_default_na=False)["labels"]
    shown = ", ".join(json.loads(labels[0])) or "no label"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "same labels" in r.getMessage()]
    assert warned == [f"every one of the {SAME_LABELS_MIN} images got the same labels ({shown}): check that the images "
                      "are like the run's training images and the model is the one meant (run=, model=), and look at "
                      "the probabilities in predictions.csv"]
    hits = result.probs >= result.thresholds
    assert same_labels_warning(hits[:-1], result.classes) is None
    hits[0] = ~hits[0]
    assert same_labels_warning(hits, result.classes) is None
