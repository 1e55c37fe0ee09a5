"""Where the model looks: Grad-CAM maps (the grad-cam package) point at the evidence, line up with the image as
drawn, and one page per class shows its most confident true positives, false positives and false negatives with a map
of the class and of each other predicted label."""

import inspect
import logging
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from mlabel_exp.diagnostics import activation_maps as am
from mlabel_exp.inference.predictor import Predictor
from mlabel_exp.models.backbones import REGISTRY, SmallCNN
from mlabel_exp.models.zoo import build_model

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

PLAIN = {"decode_size": 32, "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}  # grey 128 -> 0 in every channel


class ColourNet(nn.Module):
    """Logit 0: the most red pixel (R - G), logit 1: the most green (G - R); grey is neither."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])[:, :, None, None])

    def forward(self, x):
        return torch.amax(self.features(x), dim=(2, 3))


def _two_squares(path, width=96, height=64):
    """Grey, a red block inside the top-left quadrant and a green one inside the bottom-right: not square, so a map
    drawn without undoing the preprocessing's squash would miss them."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[8:24, 12:36] = (255, 0, 0)
    pixels[40:56, 60:84] = (0, 255, 0)
    Image.fromarray(pixels).save(path)
    return path


def test_the_map_of_each_label_lies_on_its_own_evidence_and_has_the_drawn_image_shape(tmp_path, monkeypatch):
    monkeypatch.setitem(am.TARGET_LAYERS, "ColourNet", "features")
    predictor = Predictor(ColourNet(), PLAIN, ["red", "green"])
    maps = am.image_maps(predictor, [_two_squares(tmp_path / "two.png")], [(0, 0), (0, 1)])
    for c, quadrant in ((0, (slice(0, None), slice(0, None))), (1, (slice(1, None), slice(1, None)))):
        picture, cam = maps[0, c]
        height, width = picture.shape[:2]
        assert (height, width) == am.display_size(96, 64) and cam.shape == (height, width)
        top, left = (height // 2, width // 2)
        quarters = {(i, j): cam[i * top:(i + 1) * top, j * left:(j + 1) * left].sum() for i in (0, 1) for j in (0, 1)}
        inside = quarters[(0, 0)] if c == 0 else quarters[(1, 1)]
        assert inside / cam.sum() > 0.9, (c, quarters)


def _random_images(tmp_path, sizes):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_each_class_shows_its_most_confident_true_positives_and_errors():
    """Against the definitions, row by row: TP predicted and present (highest p first), FP predicted and known absent
    (highest first), FN present and not predicted (lowest first); unknown labels are neither; ties by row. Pages go to
    the classes with the most errors; without true labels, the most confident predicted positives."""
    probs = np.array([[0.9, 0.1], [0.6, 0.7], [0.95, 0.2], [0.2, 0.1], [0.7, 0.3], [0.1, 0.8], [0.3, 0.9]],
                     dtype=np.float32)
    targets = np.array([[1, 0], [0, 1], [1, -1], [1, 1], [0, 1], [-1, 1], [1, 0]], dtype=np.int8)
    picked = am.pick_images(probs, [0.5, 0.5], per_kind=2, targets=targets)
    assert picked == {0: {"TP": [2, 0], "FP": [4, 1], "FN": [3, 6]}, 1: {"TP": [5, 1], "FP": [6], "FN": [3, 4]}}
    predicted = probs >= 0.5
    for c, kinds in picked.items():
        p = probs[:, c]
        expected = {"TP": sorted(np.flatnonzero(predicted[:, c] & (targets[:, c] == 1)), key=lambda r: (-p[r], r)),
                    "FP": sorted(np.flatnonzero(predicted[:, c] & (targets[:, c] == 0)), key=lambda r: (-p[r], r)),
                    "FN": sorted(np.flatnonzero(~predicted[:, c] & (targets[:, c] == 1)), key=lambda r: (p[r], r))}
        assert kinds == {k: [int(r) for r in rows[:2]] for k, rows in expected.items() if len(rows)}
    errors = ((predicted & (targets == 0)) | (~predicted & (targets == 1))).sum(0)  # class 0: 4 errors, class 1: 3
    assert am.page_classes(picked, errors, 1) == [int(np.argmax(errors))] and am.page_classes(picked, errors, 0) == [0, 1]
    assert am.pick_images(probs, [0.5, 0.5], per_kind=3) == {0: {"P": [2, 0, 4]}, 1: {"P": [6, 5, 1]}}


def test_a_page_per_class_with_the_whole_file_name_and_its_labels(tmp_path, caplog):
    """The pages of the classes asked for; each image once per map it needs; the page's text holds each image's whole
    file name (wrapped at '/', never cut to "...") and its true and predicted labels."""
    paths = _random_images(tmp_path, [(40, 40), (64, 48), (48, 64), (40, 56), (50, 40)])
    long_name = "a_folder_with_a_long_name/another_folder/" + "x" * 40 + ".png"
    probs = np.array([[0.9, 0.1, 0.2], [0.6, 0.7, 0.1], [0.95, 0.2, 0.0], [0.2, 0.1, 0.3], [0.7, 0.3, 0.1]],
                     dtype=np.float32)
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 0, 0]], dtype=np.int8)
    torch.manual_seed(0)
    predictor = Predictor(build_model("smallcnn", 3).eval(), PLAIN, ["cat", "dog", "eel"])
    drawn, real = [], am.class_page
    with caplog.at_level(logging.INFO), pytest.MonkeyPatch.context() as mp:
        mp.setattr(am, "class_page", lambda *a: drawn.append(a) or real(*a))
        entries = am.write_activation_maps(tmp_path / "maps", predictor, paths, probs, [0.5] * 3, ["cat", "dog", "eel"],
                                           per_kind=2, targets=targets, pages=2, relative_to=tmp_path,
                                           names=["im0.png", "im1.png", long_name, "im3.png", "im4.png"])
    # errors: cat 2 (FP im1, FN im3), eel 1 (FN im3), dog none: the two classes with the most
    assert [e["image"] for e in entries] == ["maps/00_cat.png", "maps/02_eel.png"]
    assert "(2 TP, 1 FP, 1 FN)" in entries[0]["caption"] and "(1 FN)" in entries[1]["caption"]
    for entry in entries:
        with Image.open(tmp_path / entry["image"]) as page:
            assert page.format == "PNG" and page.width > 900
    texts = {(c, r): am._row_text(kind, c, r, names, p, classes, labels)
             for c, groups, _, _, names, p, classes, labels, _ in drawn for kind, rows in groups.items() for r in rows}
    assert sorted(texts) == [(0, 0), (0, 1), (0, 2), (0, 3), (2, 3)]
    assert texts[0, 2].splitlines() == ["TP  p(cat) = 0.950", "a_folder_with_a_long_name/", "another_folder/", "x" * 34,
                                        "xxxxxx.png", "true: cat", "predicted: cat"]  # the whole name, wrapped
    assert texts[0, 1].splitlines() == ["FP  p(cat) = 0.600", "im1.png", "true: dog", "predicted: cat, dog"]
    assert texts[2, 3].splitlines() == ["FN  p(eel) = 0.300", "im3.png", "true: cat, eel", "predicted: (none)"]
    # maps: cat's of images 2, 0, 1, 3, dog's of image 1 (predicted there), eel's of image 3
    assert "6 maps of 4 images for 2 classes" in caplog.text
    assert not predictor.model.training and all(p.requires_grad for p in predictor.model.parameters())


def test_every_model_has_a_target_layer_and_resnet_maps_have_the_image_shape(tmp_path):
    for name, b in REGISTRY.items():
        built = SmallCNN if b.arch is None else inspect.signature(
            torchvision.models.get_model_builder(b.arch)).return_annotation
        assert getattr(built, "__name__", built) in am.TARGET_LAYERS, name
    torch.manual_seed(0)
    model = build_model("resnet18", 2).train()  # left in training mode: given back as it was
    predictor = Predictor(model, {**PLAIN, "decode_size": 64, "input_size": 64}, ["a", "b"])
    (picture, cam), = am.image_maps(predictor, [_two_squares(tmp_path / "two.png")], [(0, 1)]).values()
    assert cam.shape == picture.shape[:2] and 0 <= cam.min() and cam.max() <= 1
    assert model.training
    # one forward pass per image, the backward cut at the target layer: grad-cam's own maps (one forward per pair,
    # its backward through the whole model)
    images = {i: torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for i in range(2)}
    pairs = [(0, 0), (0, 1), (1, 1)]
    ours = am.compute_maps(predictor, images, pairs)
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as plain:
        theirs = plain(input_tensor=predictor.inputs(torch.stack([images[i] for i, _ in pairs])),
                       targets=[ClassifierOutputTarget(c) for _, c in pairs])
    for pair, expected in zip(pairs, theirs):  # maps in [0, 1]; another batch size may round convolutions anew
        np.testing.assert_allclose(ours[pair], expected, rtol=0, atol=1e-5)


def test_without_the_grad_cam_package_the_run_goes_on_without_maps(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails
    with caplog.at_level(logging.WARNING):
        entries = am.write_activation_maps(tmp_path, None, [], np.zeros((0, 1)), [0.5], ["a"])
    assert entries == [] and "pip install mlabel-exp[diagnose]" in caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
