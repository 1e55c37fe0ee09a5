"""timm backbones (model=timm model.name=<timm name>): built by timm with our class count and dropout, timm's data
config as the run's recorded preprocessing, weights from a state dict of timm's own architecture or from timm's pretrained
cache path (offline: one line naming the file and folder), freeze presets read from the model, one-line errors."""

from __future__ import annotations

import hashlib
import importlib
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mlabel_exp.config import validate

from mlabel_exp.errors import ConfigError
from mlabel_exp.models import timm_backbones
from mlabel_exp.errors import ModelError
from mlabel_exp.models.freeze import head_parameter_names, set_trainable
from mlabel_exp.models.weights import WeightsUnavailable, fetch_weights, weights_description
from mlabel_exp.models.zoo import build_model, check_input_size
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides

timm = pytest.importorskip("timm")

# test_resnet / test_efficientnet / test_convnext: timm's own tiny test architectures (0.1-0.4 M parameters)
RESNET_CACHE = "models--timm--test_resnet.r160_in1k/snapshots/main/model.safetensors"  # its DEFAULT tag's repo


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def under(names, *prefixes: str) -> set[str]:
    return {n for n in names if n.split(".")[0] in prefixes or n.startswith(tuple(p + "." for p in prefixes))}


def save_timm_state_dict(name: str, path, seed: int = 1, **kwargs) -> nn.Module:
    """A state dict of timm's own architecture (random values: pretrained weights cannot be downloaded here)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


@pytest.fixture
def hf_cache(no_network, tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (no_network refuses every connection)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


# ---------------------------------------------------------------- building, data config, input size

def test_timm_builds_the_model_with_our_class_count_and_dropout():
    torch.manual_seed(0)
    model = build_model("timm:test_convnext", 5, dropout=0.3)
    torch.manual_seed(0)
    reference = timm.create_model("test_convnext", num_classes=5, drop_rate=0.3)
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0] == [0.3]  # before the classifier
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_the_models_own_data_config_fills_only_the_settings_left_null():
    own = timm.data.resolve_model_data_config(timm.create_model("test_efficientnet"))
    cfg = timm_backbones.with_data_config(compose_cfg("model=timm", "model.name=test_efficientnet"))
    m = validate(cfg).model
    assert (m.input_size, m.mean, m.std, m.interpolation) == (own["input_size"][1], list(own["mean"]),
                                                              list(own["std"]), own["interpolation"])
    assert m.interpolation == "bicubic" and m.key == "timm:test_efficientnet"
    kept = timm_backbones.with_data_config(compose_cfg("model=timm", "model.name=test_efficientnet",
                                                       "model.input_size=48", "model.interpolation=bilinear"))
    assert (kept.model.input_size, kept.model.interpolation, list(kept.model.mean)) == (48, "bilinear",
                                                                                        list(own["mean"]))
    plain = compose_cfg("model=resnet18")
    assert timm_backbones.with_data_config(plain) is plain


def test_an_input_size_the_model_cannot_take_names_its_own():
    check_input_size("timm:test_resnet", 32)  # a CNN with global pooling takes small inputs
    with pytest.raises(ModelError, match=r"model.input_size=64 does not fit timm model vit_tiny_patch16_224 .*"
                                         r"set model.input_size=224"):
        check_input_size("timm:vit_tiny_patch16_224", 64)


# ---------------------------------------------------------------- freeze presets

def test_freeze_presets_train_the_classifier_then_the_last_two_stages():
    """head: timm's get_classifier(); partial: the last two stages of feature_info and everything after them."""
    resnet = build_model("timm:test_resnet", 4)
    names = [n for n, _ in resnet.named_parameters()]
    assert head_parameter_names(resnet, "timm:test_resnet") == {"fc.weight", "fc.bias"}
    assert set_trainable(resnet, "timm:test_resnet", "head") == 4 * resnet.fc.in_features + 4
    assert trainable_names(resnet) == {"fc.weight", "fc.bias"}
    count = set_trainable(resnet, "timm:test_resnet", "partial")
    assert trainable_names(resnet) == under(names, "layer3", "layer4", "fc")
    assert count == sum(p.numel() for n, p in resnet.named_parameters() if n in under(names, "layer3", "layer4", "fc"))

    effnet = build_model("timm:test_efficientnet", 4)  # stages blocks.0-4, then conv_head, bn2 and the classifier
    names = [n for n, _ in effnet.named_parameters()]
    set_trainable(effnet, "timm:test_efficientnet", "partial")
    assert trainable_names(effnet) == under(names, "blocks.3", "blocks.4", "conv_head", "bn2", "classifier")
    assert set_trainable(effnet, "timm:test_efficientnet", "all") == sum(p.numel() for p in effnet.parameters())


def test_random_init_with_frozen_layers_and_a_hidden_layer_are_refused():
    with pytest.raises(ConfigError, match="model.weights=null .* would freeze random layers"):
        validate(compose_cfg("model=timm", "model.name=test_resnet", "model.weights=null", "model.trainable=partial"))
    with pytest.raises(ConfigError, match="model.hidden=8 is invalid: expected 0 with model=timm"):
        validate(compose_cfg("model=timm", "model.name=test_resnet", "model.hidden=8"))


# ---------------------------------------------------------------- weights

def test_a_state_dict_of_timms_architecture_loads_without_the_classifier_that_does_not_fit(tmp_path, caplog):
    file = tmp_path / "imagenet.pth"
    reference = save_timm_state_dict("test_resnet", file)  # 1000 classes
    with caplog.at_level("INFO"):
        model = build_model("timm:test_resnet", 3, weights=str(file))
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert model.fc.out_features == 3 and "without its classifier (fc.weight, fc.bias" in caplog.text
    own = tmp_path / "own.safetensors"  # this model's own, classifier included, in timm's hub file format
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(own))
    again = build_model("timm:test_resnet", 3, weights=str(own))
    assert torch.equal(again.fc.weight, model.fc.weight)
    other = tmp_path / "effnet.pth"
    save_timm_state_dict("test_efficientnet", other)
    with pytest.raises(ModelError, match=r"model.weights='.*effnet.pth' does not fit timm test_resnet with 3 classes"):
        build_model("timm:test_resnet", 3, weights=str(other))


def test_default_weights_offline_are_one_line_naming_the_file_and_the_folder(hf_cache):
    with pytest.raises(WeightsUnavailable) as e:
        fetch_weights("timm:test_resnet", "DEFAULT")
    msg = str(e.value)
    folder = hf_cache / RESNET_CACHE.rsplit("/", 1)[0]
    assert "\n" not in msg and "place model.safetensors in " + str(folder) in msg
    assert "https://huggingface.co/timm/test_resnet.r160_in1k/resolve/main/model.safetensors" in msg
    assert "model.weights=null model.trainable=all" in msg
    with pytest.raises(ModelError, match="a timm model takes DEFAULT"):
        fetch_weights("timm:test_resnet", "IMAGENET1K_V1")


def test_default_weights_placed_in_the_cache_load_through_timm_and_train_what_is_not_frozen(hf_cache):
    file = hf_cache / RESNET_CACHE
    reference = save_timm_state_dict("test_resnet", file)
    fetch_weights("timm:test_resnet", "DEFAULT")  # found: no network needed
    model = build_model("timm:test_resnet", 3, weights="DEFAULT", dropout=0.1)
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    sha = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    assert weights_description("timm:test_resnet", "DEFAULT") == f"timm test_resnet.r160_in1k {file} (sha256 {sha})"
    # one training step with the partial preset: what is frozen stays as loaded
    set_trainable(model, "timm:test_resnet", "partial")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()(torch.rand(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable_names(model) and "conv1.weight" not in changed


# ---------------------------------------------------------------- the command: one-line errors, a run and predict

def _run_error(capsys, tmp_path, *args: str) -> str:
    main = importlib.import_module("mlabel_exp.cli.run").main
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["run", *args, f"hydra.run.dir={tmp_path / 'job'}"])
        with pytest.raises(SystemExit) as e:
            main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_an_unknown_timm_name_or_a_missing_timm_is_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    assert "did you mean resnet50" in _run_error(capsys, tmp_path, "model=timm", "model.name=resnet5O")
    monkeypatch.setitem(sys.modules, "timm", None)  # as without the extra: import timm fails
    assert "pip install mlabel-exp[timm]" in _run_error(capsys, tmp_path, "model=timm", "model.name=test_resnet")


@pytest.mark.integration
def test_a_timm_run_from_a_local_state_dict_records_its_preprocessing_and_predict_replays_it(tmp_path, hf_cache):
    from mlabel_exp.experiment.train import train
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    out = tmp_path / "out"
    overrides = tiny_overrides(tmp_path, "model=timm", "model.name=test_convnext", "model.trainable=partial",
                               "trainer.amp=false", "trainer.epochs=1", f"trainer.output_dir={out}", store=False)
    with pytest.raises(WeightsUnavailable, match="test_convnext.r160_in1k/snapshots/main"):  # DEFAULT offline
        train(compose_cfg(*overrides))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlruns").exists()  # before any data or tracking
    file = tmp_path / "convnext.pth"
    save_timm_state_dict("test_convnext", file)
    train(compose_cfg(*overrides, f"model.weights={file}"))

    own = timm.data.resolve_model_data_config(timm.create_model("test_convnext"))
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    assert ckpt["preprocessing"] == {"decode_size": 32, "input_size": 32, "mean": list(own["mean"]),
                                     "std": list(own["std"]), "interpolation": own["interpolation"]}
    assert ckpt["config"]["model"]["source"] == "timm" and own["interpolation"] == "bicubic"
    _, (run,) = mlflow_runs(tmp_path)
    sha = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    assert run.data.params["model.interpolation"] == "bicubic"
    assert run.data.params["model.weights_used"] == f"state dict {file} (sha256 {sha})"
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.preprocessing == ckpt["preprocessing"] and predictor.transform.interpolation == "bicubic"
    logged = pd.read_csv(out / "predictions" / "val.csv")
    images = sorted((tmp_path / "cache").rglob("images"))[0]
    files, probs, _ = predictor.predict_files([images / f for f in logged["file"]], batch_size=4, num_workers=0)
    assert files == list(logged["file"])
    # float32, eval mode: only the batch composition differs (a few ulps of each logit, sigmoid slope <= 1/4)
    np.testing.assert_allclose(probs, logged[predictor.classes].to_numpy(), atol=1e-5)


def test_a_timm_runs_pyfunc_model_requires_the_timm_that_trained_it():
    from importlib.metadata import version

    from mlabel_exp.tracking.pyfunc import _requirements

    assert f"timm=={version('timm')}" in _requirements(timm=True)
    assert not any(r.startswith("timm") for r in _requirements())
