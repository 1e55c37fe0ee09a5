"""The recipe features (issue 36): weight averaging (trainer.ema), augmentation policies and cutout, repeat-factor
sampling, flip test-time augmentation (the run's final evaluation, predict, the exported graph)."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

from mlabel_exp.config import AUGMENT_POLICIES, DataConfig, validate
from mlabel_exp.errors import ConfigError
from mlabel_exp.experiment.train import train
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides

EPS32 = torch.finfo(torch.float32).eps


# ------------------------------------------------------------------ weight averaging

def test_the_average_equals_a_hand_computation_over_three_steps():
    """torch's EMA behind WeightAverage: the first update copies the weights, each later one is d x average + (1 - d)
    x weights, BatchNorm's running statistics included (use_buffers). Reference: the recursion in float64 on the same
    float32 values. Each of the two averaging steps rounds at most three times (the difference, the product, the sum),
    each by at most eps x the largest magnitude seen: 6 eps x max |w|."""
    from mlabel_exp.training.ema import WeightAverage

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay = 0.75
    average, seen = WeightAverage(net, decay), []
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
            net.train()(torch.randn(8, 4))  # moves BatchNorm's running mean and variance
        seen.append({k: v.double().clone() for k, v in net.state_dict().items() if v.is_floating_point()})
        average.update()
    expected = seen[0]
    for weights in seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    got = average.module.state_dict()
    assert set(expected) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    for k, v in expected.items():
        bound = 6 * EPS32 * max(float(w[k].abs().max()) for w in seen)
        torch.testing.assert_close(got[k].double(), v, rtol=0, atol=bound)
        assert not torch.equal(got[k].double(), seen[-1][k]), k  # an average, not the last weights
    assert int(average.state_dict()["n_averaged"]) == 3


@pytest.mark.parametrize("setting,steps_per_epoch,decay", [
    (None, 10, None), (0, 10, None), (0.9997, 10, 0.9997), ("3000steps", 10, 1 - 1 / 3000),
    ("2epochs", 50, 1 - 1 / 100), ("0.5 epoch", 50, 1 - 1 / 25), ("1steps", 50, 0.0)])
def test_trainer_ema_is_a_decay_or_a_window_in_steps_or_epochs(setting, steps_per_epoch, decay):
    from mlabel_exp.training.ema import ema_decay

    assert ema_decay(setting, steps_per_epoch) == decay


def test_an_epoch_keeps_the_better_weights_in_best_pt_and_last_pt_holds_both(tmp_path):
    """best.pt holds the weights an epoch kept (the average's when it scored higher, then the raw ones when they did),
    and says which; last.pt holds the raw weights and the average (what a resume needs)."""
    from mlabel_exp.config import TrainerConfig
    from mlabel_exp.models.zoo import build_model
    from mlabel_exp.training.ema import WeightAverage
    from mlabel_exp.training.trainer import Trainer

    torch.manual_seed(0)
    net = build_model("smallcnn", 3)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), TrainerConfig(device="cpu", ema=0.5),
                      device=torch.device("cpu"), classes=["a", "b", "c"], checkpoint_dir=tmp_path,
                      metadata={"config": {}})
    trainer.average = WeightAverage(trainer.net, 0.5)
    trainer.average.update()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # the raw weights move away from their average
    outputs = (torch.rand(4, 3), torch.ones(4, 3), 0.1, ["w.jpg", "x.jpg", "y.jpg", "z.jpg"])
    row = {"train/loss": 1.0, "val/loss": 1.0, "val/mAP": 0.5, "val/f1_micro": 0.0, "time/epoch_s": 0.0,
           "val_ema/mAP": 0.7}

    def saved(name):
        return torch.load(tmp_path / f"{name}.pt", weights_only=True)

    trainer._end_epoch(1, row, outputs, "ema")
    best, last = saved("best"), saved("last")
    assert (best["weights"], best["best_score"], trainer.result.best_weights) == ("ema", 0.7, "ema")
    for k, v in trainer.average.module.state_dict().items():
        assert torch.equal(best["model"][k], v), k
    for k, v in net.state_dict().items():
        assert torch.equal(last["model"][k], v) and torch.equal(last["ema"][f"module.{k}"],
                                                                 trainer.average.module.state_dict()[k]), k
    trainer._end_epoch(2, {**row, "val/mAP": 0.9, "val_ema/mAP": 0.8}, outputs, "raw")
    best = saved("best")
    assert (best["weights"], best["epoch"], trainer.result.best_score, saved("last")["best_weights"]) == (
        "raw", 2, 0.9, "raw")
    for k, v in net.state_dict().items():
        assert torch.equal(best["model"][k], v), k


def _untimed(history):
    return [{k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))} for h in history]


@pytest.mark.integration
def test_a_resumed_run_with_averaging_sampling_and_augmentation_is_bit_equal_to_an_uninterrupted_one(
        tmp_path, monkeypatch):
    """Stopped during epoch 2 and resumed: the weights, the average (its step count too), the history and the kept
    best weights are those of the run that was never stopped. The average is in last.pt (yolov5 #409 restarted it
    on resume); repeat-factor sampling, RandAugment and cutout draw from (seed, epoch) and the RNG state last.pt keeps."""
    from mlabel_exp.training import trainer as engine

    recipe = ("trainer.ema=1epochs", "data.augment=randaugment", "data.cutout=0.3", "data.sampler=repeat_factor",
              "data.repeat_threshold=0.3", "trainer.epochs=3", "trainer.max_steps_per_epoch=0", "trainer.batch_size=8")
    train(compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'full'}", *recipe)))
    real = engine.Trainer.train_epoch

    def stop_in_epoch_2(self, loader, epoch):
        if epoch == 2:
            self.callbacks.stop.set()
        return real(self, loader, epoch)

    cut = tiny_overrides(tmp_path, f"trainer.output_dir={tmp_path / 'cut'}", *recipe)
    monkeypatch.setattr(engine.Trainer, "train_epoch", stop_in_epoch_2)
    with pytest.raises(SystemExit):
        train(compose_cfg(*cut))
    monkeypatch.undo()
    _, runs = mlflow_runs(tmp_path)
    (stopped,) = [r for r in runs if r.info.status == "KILLED"]
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    train(compose_cfg(*cut, f"resume={stopped.info.run_id}"))

    full, resumed = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True) for d in ("full", "cut"))
    assert full["epoch"] == resumed["epoch"] == 3 and int(full["ema"]["n_averaged"]) > 3 * 5
    assert _untimed(full["history"]) == _untimed(resumed["history"])
    assert full["best_weights"] == resumed["best_weights"]
    for part in ("model", "ema"):
        assert full[part].keys() == resumed[part].keys()
        for k in full[part]:
            assert torch.equal(full[part][k], resumed[part][k]), (part, k)
    best = [torch.load(tmp_path / d / "checkpoints" / "best.pt", weights_only=True)["model"] for d in ("full", "cut")]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


# ------------------------------------------------------------------ repeat-factor sampling

def test_repeat_factors_follow_the_lvis_formula():
    """r_c = max(1, sqrt(t / f_c)), f_c the share of images holding class c (an unknown label holds nothing); an image
    takes the largest r_c of its classes, 1 without any. The reference: the formula, image by image."""
    from mlabel_exp.data.loaders import repeat_factors

    labels = np.zeros((100, 4), np.int8)
    labels[:50, 0] = 1                  # f = 0.5
    labels[50:55, 1] = 1                # f = 0.05
    labels[55:57, 2] = 1                # f = 0.02 (0.03 if the unknown below counted)
    labels[0, 2] = labels[51, 2] = 1    # two classes each: the larger factor
    labels[60, 2] = -1                  # unknown
    t = 0.1
    share = [(labels[:, c] == 1).mean() for c in range(4)]
    expected = [max([max(1.0, math.sqrt(t / share[c])) for c in range(4) if labels[i, c] == 1], default=1.0)
                for i in range(100)]
    got = repeat_factors(labels, t)
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert got[0] == got[55] == pytest.approx(math.sqrt(t / 0.04)) and got[60] == got[99] == 1.0


def test_repeat_factor_sampling_draws_each_image_r_times_an_epoch_on_average():
    """Over 2,000 epochs (seed fixed) each image appears floor(r) + Bernoulli(r - floor(r)) times an epoch, the epoch
    then cut or extended to its fixed length L = round(sum r) at random: on average r x L / sum r. For each group of
    500 images sharing r, the mean count must lie within 5 standard errors: the Bernoulli's variance p(1 - p), plus
    the cut's (at most r x E|L - M| / M, M the drawn copies, sd sqrt(sum p(1 - p))), over 500 x 2,000 counts."""
    from mlabel_exp.data.loaders import RepeatFactorSampler

    factors = np.repeat([1.0, 1.3, 2.5, 3.7], 500)
    sampler, epochs = RepeatFactorSampler(factors, seed=7), 2000
    counts = np.zeros(len(factors))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = sampler.epoch_order().numpy()
        assert len(order) == len(sampler) == sampler.images == round(factors.sum())
        counts += np.bincount(order, minlength=len(factors))
    fraction = factors - np.floor(factors)
    drawn_sd = math.sqrt(float((fraction * (1 - fraction)).sum()))
    for r in np.unique(factors):
        group, p = factors == r, r - math.floor(r)
        spread = math.sqrt((p * (1 - p) + r * drawn_sd / factors.sum()) / (group.sum() * epochs))
        mean = counts[group].mean() / epochs
        assert abs(mean - r * sampler.images / factors.sum()) <= 5 * spread, (r, mean, spread)


def test_an_epochs_draw_depends_only_on_seed_and_epoch_and_ranks_share_it():
    """A fresh sampler (a resumed run's) draws the same epoch; under DDP, rank k takes every world-th image from k of
    that same epoch, padded by its own first images to a multiple of the world size."""
    from mlabel_exp.data.loaders import RepeatFactorSampler

    factors = np.array([1.0, 2.5, 1.2, 3.0, 1.0, 1.7, 2.2])
    one, again = RepeatFactorSampler(factors, seed=3), RepeatFactorSampler(factors, seed=3)
    for s, epoch in ((one, 4), (again, 9)):
        s.set_epoch(epoch)
    assert list(one) != list(again)
    again.set_epoch(4)
    assert list(one) == list(again) and len(list(one)) == one.images == 13
    ranks = [RepeatFactorSampler(factors, seed=3, rank=k, world=3) for k in range(3)]
    for s in ranks:
        s.set_epoch(4)
    shares = [list(s) for s in ranks]
    assert [len(s) for s in shares] == [len(s) for s in ranks] == [5, 5, 5]
    interleaved = [i for step in zip(*shares) for i in step]
    assert interleaved[:13] == list(one) and interleaved[13:] == list(one)[:2]


# ------------------------------------------------------------------ augmentation

@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_each_augmentation_policy_keeps_uint8_and_the_shape(synthetic_root, policy, crop):
    """Decoding every epoch (image_steps in the workers) and from the decoded cache (worker_augmentation on its uint8
    images): uint8 at the model's input size; the policies of their own change pixels, none and flip draw nothing
    per image (their flips are per batch)."""
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.images import image_steps, load_image, worker_augmentation

    image = load_image(build_index(synthetic_root).paths([3])[0])  # 64 px
    torch.manual_seed(0)
    decoded = image_steps(48, train=True, random_resized_crop=crop, policy=policy)(image)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 48, 48)
    cached = image_steps(40)(image)
    drawn = worker_augmentation(DataConfig(augment=policy, random_resized_crop=crop), 40)
    assert (drawn is None) == (policy in ("none", "flip") and not crop)
    if drawn is not None:
        outs = [drawn(cached) for _ in range(8)]
        assert all(o.dtype == torch.uint8 and o.shape == (3, 40, 40) for o in outs)
        assert any(not torch.equal(o, cached) for o in outs)


def test_cutout_fills_one_rectangle_of_the_given_share_with_one_colour_per_image():
    from mlabel_exp.data.images import BatchTransform, cutout

    x = torch.full((64, 3, 20, 20), 7, dtype=torch.uint8)
    out = cutout(x, 0.5, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    sizes = set()
    for im in out:
        changed = (im != 7).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert int(changed.sum()) == len(rows) * len(cols) > 0  # one filled rectangle
        assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert im[:, changed].unique(dim=1).shape[1] == 1  # one colour
        sizes.add((len(rows), len(cols)))
    assert max(sizes) == (10, 10) and all(h <= 10 and w <= 10 for h, w in sizes)  # clipped at the borders
    t = BatchTransform(20, (0.0,) * 3, (1.0,) * 3, cutout=0.5, seed=1)
    t.set_epoch(2)
    first = t(x, train=True)
    t.set_epoch(2)
    plain = BatchTransform(20, (0.0,) * 3, (1.0,) * 3)
    assert torch.equal(first, t(x, train=True)) and torch.equal(t(x), plain(x))  # by epoch; none outside training


# ------------------------------------------------------------------ flip test-time augmentation

def test_flip_tta_is_the_mean_of_the_probabilities_of_the_image_and_its_mirror_image():
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("smallcnn", 5).eval()
    preprocessing = {"decode_size": 32, "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    plain = Predictor(model, preprocessing, list("abcde"))
    mirrored = (plain.probabilities(images) + plain.probabilities(images.flip(-1))) / 2
    assert torch.equal(Predictor(model, preprocessing, list("abcde"), tta="flip").probabilities(images), mirrored)
    assert not torch.equal(mirrored, plain.probabilities(images))


# ------------------------------------------------------------------ settings

def test_old_augment_keys_and_bad_recipe_values_are_one_line_naming_the_replacement(tmp_path, monkeypatch, capsys):
    from mlabel_exp.cli import run
    from mlabel_exp.config import upgraded

    for argv, said in ((["run", "data.augment.hflip=false"], "error: data.augment.hflip is not a setting any more: it "
                        "is now data.augment=flip (true) or data.augment=none (false)"),
                       (["run", "trainer.ema=3000", f"hydra.run.dir={tmp_path}"], "error: trainer.ema=3000 is invalid: "
                        "expected null or 0 (off), a decay per step in (0, 1) such as 0.9997, or an averaging window "
                        "such as 3000steps or 2epochs")):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            run.main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err == said + "\n", err
    with pytest.raises(ConfigError, match=r"^data\.augment=\{'hflip': False\} is invalid: data\.augment is now one "
                                          r"policy, none, flip, randaugment or trivialaugment; data\.augment\.hflip "
                                          r"is now data\.augment=flip"):
        validate(compose_cfg("data.augment={hflip:false}"))
    old = {"data": {"augment": {"hflip": False, "random_resized_crop": True, "crop_scale_min": 0.5}}}
    assert upgraded(old)["data"] == {"augment": "none", "random_resized_crop": True, "crop_scale_min": 0.5}
    assert validate(compose_cfg("trainer.ema=2epochs")).trainer.ema == "2epochs"


# ------------------------------------------------------------------ a run with averaging and TTA

@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    train(compose_cfg(*tiny_overrides(tmp, f"trainer.output_dir={tmp / 'out'}", "trainer.ema=0.6", "trainer.tta=flip",
                                      "data.test_fraction=0.25", "trainer.max_steps_per_epoch=0")))
    client, (run,) = mlflow_runs(tmp)
    return tmp, client, run


def _val_images(tmp, folder):
    """The run's validation images, copied into ``folder``, and their true labels (predictions/val.csv)."""
    import pandas as pd

    val = pd.read_csv(tmp / "out" / "predictions" / "val.csv", keep_default_na=False)
    images = sorted((tmp / "cache").rglob("images"))[0]
    folder.mkdir()
    for name in val["file"]:
        shutil.copy(images / name, folder / name)
    return val


@pytest.mark.integration
def test_a_run_records_both_curves_keeps_the_better_weights_and_scores_them_with_tta(recipe_run, tmp_path):
    """val/* and val_ema/* every epoch; val/best_mAP is the better of the two at the best epoch, best.pt and the tag
    best_weights name which, and best.pt's weights give its validation outputs again. val_tta/mAP is scikit-learn's
    mean AP of the kept weights' flip-TTA probabilities of the validation images (classes with a positive)."""
    from sklearn.metrics import average_precision_score

    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    tmp, client, run = recipe_run
    params, metrics, kept = run.data.params, run.data.metrics, run.data.tags["best_weights"]
    assert (params["trainer.ema"], params["trainer.tta"], params["trainer.ema_decay_used"]) == ("0.6", "flip", "0.6")
    for name in ("val/mAP", "val_ema/mAP", "val_ema/loss", "val_ema/f1_micro", "val_ema/f1_macro"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2], name
    last = torch.load(tmp / "out" / "checkpoints" / "last.pt", weights_only=True)
    best = load_checkpoint(tmp / "out" / "checkpoints" / "best.pt")
    row = last["history"][best["epoch"] - 1]
    assert kept == best["weights"] == last["best_weights"] and kept in ("raw", "ema")
    assert metrics["val/best_mAP"] == row["val_ema/mAP" if kept == "ema" else "val/mAP"] == max(
        max(h["val/mAP"], h["val_ema/mAP"]) for h in last["history"])
    assert json.loads((tmp / "out" / "summary.json").read_text())["val"]["weights"] == kept

    val = _val_images(tmp, tmp_path / "val")
    predictor = Predictor.from_checkpoint(best)
    paths = [tmp_path / "val" / f for f in best["val"]["names"]]
    names, probs, _ = predictor.predict_files(paths, batch_size=16, num_workers=0)
    np.testing.assert_allclose(probs, best["val"]["probs"].numpy(), rtol=0, atol=1e-5)
    predictor.tta = "flip"
    names, probs, _ = predictor.predict_files([tmp_path / "val" / f for f in val["file"]], 16, 0)
    truth = np.array([[c in json.loads(t) for c in predictor.classes] for t in val["true_labels"]])
    held = truth.any(0)
    reference = np.mean([average_precision_score(truth[:, c], probs[:, c]) for c in np.flatnonzero(held)])
    assert metrics["val_tta/mAP"] == pytest.approx(reference, abs=1e-5)
    assert {"test_tta/mAP", "test_tta/f1_micro", "val/mAP", "test/mAP"} <= set(metrics)


@pytest.mark.integration
def test_export_with_tta_matches_predict_with_tta(recipe_run, tmp_path):
    """The exported graph averages each image with its mirror image (its metadata says so, its parity check compared it
    with the Predictor's TTA): predict on the file gives predict's tta=flip probabilities within the parity tolerance,
    and both differ from the plain ones by more than it (the check could fail)."""
    import onnx

    from mlabel_exp.experiment.export import export
    from mlabel_exp.experiment.predict import predict
    from mlabel_exp.config import ExportConfig, PredictConfig

    tmp, _, _ = recipe_run
    best = str(tmp / "out" / "checkpoints" / "best.pt")
    result = export(ExportConfig(checkpoint=best, tta="flip", out=str(tmp_path / "export")))
    meta = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert meta["tta"] == "flip" and result.parity.ok
    _val_images(tmp, tmp_path / "images")
    images = str(tmp_path / "images")
    on_file = predict(PredictConfig(model_file=str(result.path), input=images), tmp_path / "onnx")
    on_run = predict(PredictConfig(checkpoint=best, input=images, tta="flip", device="cpu"), tmp_path / "run")
    plain = predict(PredictConfig(checkpoint=best, input=images, device="cpu"), tmp_path / "plain")
    tol = result.parity.tolerance
    assert on_file.files == on_run.files == plain.files
    np.testing.assert_allclose(on_file.probs, on_run.probs, rtol=0, atol=tol)
    assert np.abs(on_run.probs - plain.probs).max() > 10 * tol
    assert [json.loads((tmp_path / d / "summary.json").read_text())["tta"] for d in ("onnx", "run", "plain")] == [
        "flip", "flip", "none"]
