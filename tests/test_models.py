"""Model zoo: output shapes, heads, trainable parameter groups, frozen BatchNorm and every kind of weights."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torchvision
from torch import nn

from mlabel_exp.models.backbones import REGISTRY, Backbone, min_input_size

from mlabel_exp.errors import ModelError
from mlabel_exp.models.freeze import head_parameter_names, keep_frozen_bn_in_eval, set_trainable
from mlabel_exp.models.weights import WeightsUnavailable, fetch_weights, weights_description
from mlabel_exp.models.zoo import build_model

N = 14
RESNET18_FILE = "resnet18-f37072fd.pth"  # basename of ResNet18_Weights.IMAGENET1K_V1.url


def numel(model: nn.Module, *prefixes: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in prefixes)


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return build_model("inception", N, dropout=0.4, hidden=32)


# ---------------------------------------------------------------- shapes and heads

@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "resnet50"])
def test_output_shape_train_and_eval(name):
    model = build_model(name, N, dropout=0.2)
    x = torch.randn(2, 3, 64, 64)
    assert model.train()(x).shape == (2, N)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, N)


def test_inception_with_aux_returns_main_and_aux_in_train_mode_and_a_tensor_in_eval(inception):
    assert inception.transform_input is False
    x = torch.randn(2, 3, 299, 299)
    out = inception.train()(x)
    assert isinstance(out, torchvision.models.InceptionOutputs)
    assert out.logits.shape == (2, N) and out.aux_logits.shape == (2, N)
    with torch.no_grad():
        out = inception.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, N)


def test_inception_without_aux_works_below_299():
    model = build_model("inception", N, aux_logits=False, input_size=128)
    assert model.AuxLogits is None and model.transform_input is False
    out = model.train()(torch.randn(2, 3, 128, 128))
    assert isinstance(out, torch.Tensor) and out.shape == (2, N)


def test_inception_min_input_sizes_are_exact(inception):
    assert min_input_size("inception", aux_logits=True) == 299
    assert min_input_size("inception", aux_logits=False) == 75
    inception.train()  # 299 itself works: test_inception_with_aux_returns_main_and_aux...
    with pytest.raises(RuntimeError):  # the aux head's 5x5 conv no longer fits
        inception(torch.randn(2, 3, 298, 298))
    inception.eval()
    with torch.no_grad():
        assert inception(torch.randn(1, 3, 75, 75)).shape == (1, N)
        with pytest.raises(RuntimeError):
            inception(torch.randn(1, 3, 74, 74))


def test_input_size_below_minimum_is_rejected_with_the_fix():
    with pytest.raises(ModelError) as e:
        build_model("inception", N, input_size=128)
    msg = str(e.value)
    assert "model.input_size=128" in msg and "299" in msg and "model.aux_logits=false" in msg
    with pytest.raises(ModelError, match="model.input_size=74"):
        build_model("inception", N, aux_logits=False, input_size=74)
    with pytest.raises(ModelError, match="model.input_size=16"):
        build_model("resnet18", N, input_size=16)
    assert min_input_size("resnet50") == min_input_size("smallcnn") == 32


def test_head_layout_and_head_parameter_names():
    plain = build_model("resnet18", N, dropout=0.3)
    assert [type(m) for m in plain.fc] == [nn.Dropout, nn.Linear]
    assert plain.fc[0].p == 0.3 and (plain.fc[1].in_features, plain.fc[1].out_features) == (512, N)
    assert head_parameter_names(plain, "resnet18") == {"fc.1.weight", "fc.1.bias"}

    deep = build_model("resnet50", N, dropout=0.4, hidden=32)
    assert [type(m) for m in deep.fc] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (deep.fc[1].in_features, deep.fc[1].out_features, deep.fc[4].out_features) == (2048, 32, N)
    assert head_parameter_names(deep, "resnet50") == {"fc.1.weight", "fc.1.bias", "fc.4.weight", "fc.4.bias"}


def test_inception_head_group_holds_main_and_aux_classifiers(inception):
    assert isinstance(inception.AuxLogits.fc, nn.Linear) and inception.AuxLogits.fc.out_features == N
    assert head_parameter_names(inception, "inception") == {
        "fc.1.weight", "fc.1.bias", "fc.4.weight", "fc.4.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"}


def test_unknown_model_name_lists_the_registry():
    with pytest.raises(ModelError) as e:
        build_model("resnet34", N)
    assert "model.name='resnet34'" in str(e.value)
    assert all(k in str(e.value) for k in REGISTRY)


def test_another_torchvision_backbone_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(REGISTRY, "mobilenet", Backbone("mobilenet_v3_small", "classifier.3", ("classifier.3",),
                                                         ("features.12",)))
    model = build_model("mobilenet", N, dropout=0.1)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, N)
    assert head_parameter_names(model, "mobilenet") == {"classifier.3.1.weight", "classifier.3.1.bias"}
    expected = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("classifier.3.", "features.12.")))
    assert set_trainable(model, "mobilenet", "partial") == expected


def test_smallcnn_learns_a_batch_quickly_on_cpu():
    torch.manual_seed(0)
    model = build_model("smallcnn", N).train()
    x, y = torch.randn(8, 3, 64, 64), (torch.rand(8, N) > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- trainable parameters

@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_trainable_modes_count_exactly_the_chosen_parameters(name):
    model = build_model(name, N, hidden=16)
    head, l3, l4 = numel(model, "fc"), numel(model, "layer3"), numel(model, "layer4")
    everything = sum(p.numel() for p in model.parameters())
    assert 0 < head < l3 + l4 < everything

    assert set_trainable(model, name, "head") == head
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if n.startswith("fc.")}
    assert set_trainable(model, name, "partial") == head + l3 + l4
    assert all(n.split(".")[0] in ("fc", "layer3", "layer4") for n in trainable_names(model))
    assert set_trainable(model, name, "all") == everything
    assert set_trainable(model, name, ["layer4"]) == head + l4
    assert set_trainable(model, name, ["layer4.1", "conv1"]) == (
        head + numel(model, "conv1") + sum(p.numel() for n, p in model.named_parameters() if n.startswith("layer4.1.")))


def test_trainable_errors_name_the_problem():
    model = build_model("resnet18", N)
    with pytest.raises(ModelError) as e:
        set_trainable(model, "resnet18", ["layer4", "Mixed_7*"])
    assert "'Mixed_7*'" in str(e.value) and "layer4" in str(e.value) and "conv1" in str(e.value)
    with pytest.raises(ModelError) as e:
        set_trainable(model, "resnet18", "backbone")
    assert "'backbone'" in str(e.value) and all(c in str(e.value) for c in ("head", "partial", "all"))


def test_partial_presets_of_inception_and_smallcnn(inception):
    expected = sum(p.numel() for n, p in inception.named_parameters()
                   if n.startswith(("fc.", "AuxLogits.fc.", "Mixed_6", "Mixed_7")))
    assert expected < sum(p.numel() for p in inception.parameters())
    assert set_trainable(inception, "inception", "partial") == expected
    assert set_trainable(inception, "inception", ["Mixed_7*"]) == expected - sum(
        p.numel() for n, p in inception.named_parameters() if n.startswith("Mixed_6"))

    small = build_model("smallcnn", N)
    assert set_trainable(small, "smallcnn", "partial") == numel(small, "head") + sum(
        p.numel() for n, p in small.named_parameters() if n.startswith("features.3."))


def test_frozen_batchnorm_keeps_its_running_stats_in_train_mode():
    model = build_model("resnet18", N)
    set_trainable(model, "resnet18", ["layer4"])
    model.train()
    keep_frozen_bn_in_eval(model)
    frozen_bn, live_bn = model.bn1, model.layer4[0].bn1
    assert not frozen_bn.training and live_bn.training and model.fc.training
    frozen_before, live_before = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert not torch.equal(live_bn.running_mean, live_before)
    assert all(not m.training for m in model.modules()
               if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad)


# ---------------------------------------------------------------- weights from a file

def test_imagenet_shaped_state_dict_is_loaded_before_the_head_is_replaced(tmp_path):
    original = torchvision.models.resnet18(weights=None, num_classes=1000)
    with torch.no_grad():
        original.conv1.weight.fill_(0.123)
    path = tmp_path / "imagenet_resnet18.pth"
    torch.save({"state_dict": original.state_dict()}, path)

    model = build_model("resnet18", N, weights=str(path))
    assert torch.equal(model.conv1.weight, torch.full_like(model.conv1.weight, 0.123))
    assert torch.equal(model.layer4[1].conv2.weight, original.layer4[1].conv2.weight)
    assert model.fc[-1].out_features == N


def test_own_state_dict_round_trips(tmp_path):
    trained = build_model("resnet18", N, hidden=8)
    with torch.no_grad():
        trained.fc[4].bias.fill_(0.5)
        trained.bn1.running_mean.fill_(0.25)
    path = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, path)

    model = build_model("resnet18", N, hidden=8, weights=str(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.state_dict().items())

    small = build_model("smallcnn", N)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    again = build_model("smallcnn", N, weights=str(tmp_path / "small.pth"))
    assert torch.equal(again.head[1].weight, small.head[1].weight)


def test_inception_checkpoint_with_aux_head_loads_without_it(tmp_path, inception):
    path = tmp_path / "inception.pth"
    torch.save(inception.state_dict(), path)
    model = build_model("inception", N, dropout=0.4, hidden=32, aux_logits=False, weights=str(path))
    assert model.AuxLogits is None
    assert torch.equal(model.fc[4].weight, inception.fc[4].weight)


def test_wrong_class_count_names_the_file_and_the_shapes(tmp_path):
    path = tmp_path / "ten_classes.pth"
    torch.save(build_model("resnet50", 10).state_dict(), path)
    with pytest.raises(ModelError) as e:
        build_model("resnet50", N, weights=str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert "fc.1.weight: file has [10, 2048], model has [14, 2048]" in msg


def test_wrong_architecture_names_the_file_and_the_first_mismatches(tmp_path):
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ModelError) as e:
        build_model("resnet50", N, weights=str(path))
    msg = str(e.value)
    assert str(path) in msg and "resnet50" in msg
    assert "layer1.0.conv1.weight: file has [64, 64, 3, 3], model has [64, 64, 1, 1]" in msg


def test_missing_or_unreadable_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "best.pt"
    with pytest.raises(ModelError, match="best.pt"):
        build_model("resnet18", N, weights=str(missing))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        build_model("smallcnn", N, weights=str(junk))


# ---------------------------------------------------------------- weights by name (torch hub cache, offline)

def test_weights_name_offline_says_which_file_to_place_where(no_network):
    with pytest.raises(WeightsUnavailable) as e:
        build_model("resnet18", N, weights="DEFAULT")
    msg = str(e.value)
    assert RESNET18_FILE in msg
    assert str(no_network) + os.sep in msg
    assert "model.weights=null" in msg
    assert isinstance(e.value, ModelError)


def test_weights_name_loads_from_the_hub_cache_without_network(no_network):
    # load_state_dict_from_url checks the sha256 prefix in the file name only when it downloads (check_hash=True);
    # a file already in <TORCH_HOME>/hub/checkpoints/ is used as it is, so this stand-in is loaded unverified.
    stand_in = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        stand_in.conv1.weight.fill_(0.123)
    no_network.mkdir(parents=True)
    torch.save(stand_in.state_dict(), no_network / RESNET18_FILE)

    model = build_model("resnet18", N, weights="IMAGENET1K_V1")
    assert torch.equal(model.conv1.weight, torch.full_like(model.conv1.weight, 0.123))
    assert model.fc[-1].out_features == N
    assert weights_description("resnet18", "DEFAULT") == "ResNet18_Weights.IMAGENET1K_V1"


def test_fetch_weights_offline_names_the_file_the_folder_and_the_alternative(no_network):
    with pytest.raises(WeightsUnavailable) as e:
        fetch_weights("resnet50", "DEFAULT")
    msg = str(e.value)
    assert "resnet50-11ad3fa6.pth" in msg and f"{no_network}{os.sep}" in msg  # ResNet50_Weights.IMAGENET1K_V2
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg
    assert "model.weights=null model.trainable=all" in msg
    fetch_weights("resnet50", None)  # random init needs no file
    with pytest.raises(ModelError, match="no such file"):
        fetch_weights("resnet50", str(no_network / "mine.pth"))


def test_fetch_weights_uses_a_placed_file_without_the_network(imagenet_weights, monkeypatch):
    files = imagenet_weights("resnet50")

    def no_call(*args, **kwargs):
        raise AssertionError("the network was used although the file is in the cache")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_call)
    fetch_weights("resnet50", "DEFAULT")
    model = build_model("resnet50", N, weights="DEFAULT")
    placed = torch.load(files["resnet50"], weights_only=True)
    assert torch.equal(model.layer4[2].conv3.weight, placed["layer4.2.conv3.weight"])


def test_unknown_weights_name_lists_the_valid_ones():
    with pytest.raises(ModelError) as e:
        build_model("resnet50", N, weights="IMAGENET21K")
    msg = str(e.value)
    assert "'IMAGENET21K'" in msg and "IMAGENET1K_V1" in msg and "IMAGENET1K_V2" in msg and "DEFAULT" in msg
    with pytest.raises(ModelError, match="smallcnn has no pretrained weights"):
        build_model("smallcnn", N, weights="DEFAULT")


def test_weights_description(tmp_path):
    assert weights_description("resnet50", None) == "random init"
    assert weights_description("resnet50", "DEFAULT") == "ResNet50_Weights.IMAGENET1K_V2"
    assert weights_description("inception", "IMAGENET1K_V1") == "Inception_V3_Weights.IMAGENET1K_V1"
    path = tmp_path / "w.pth"
    torch.save(build_model("smallcnn", N).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_description("smallcnn", str(path)) == f"state dict {path.resolve()} (sha256 {digest[:12]})"


# ---------------------------------------------------------------- vgg16 (138M parameters: built once)

@pytest.mark.integration
def test_vgg16_head_dropout_and_trainable_groups():
    model = build_model("vgg16", N, dropout=0.25)  # torchvision's own dropout layers have p=0.5
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, N)
    head = model.classifier[6]
    assert isinstance(head, nn.Sequential) and head[-1].out_features == N and head[-1].in_features == 4096
    assert [m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.25, 0.25]

    classifier = numel(model, "classifier")
    last_block = sum(p.numel() for n, p in model.named_parameters()
                     if n.split(".")[:2] in (["features", "24"], ["features", "26"], ["features", "28"]))
    assert head_parameter_names(model, "vgg16") == {n for n, _ in model.named_parameters()
                                                    if n.startswith("classifier.")}
    assert set_trainable(model, "vgg16", "head") == classifier
    assert set_trainable(model, "vgg16", "partial") == classifier + last_block
    assert set_trainable(model, "vgg16", "all") == sum(p.numel() for p in model.parameters())
