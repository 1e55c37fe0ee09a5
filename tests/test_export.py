"""The export command's parts that need no trained run: its settings, the error without the optional extra, the
parity check's tolerance and verdicts. The export of a trained run, its MLflow model and predict on the file are in
tests/test_predict.py (they share its trained run)."""

import json
import sys

import numpy as np
import pytest
import torch

from mlabel_exp.config import ExportConfig

from mlabel_exp.errors import ConfigError


def _one_line_error(capsys, main, argv) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_without_the_export_extra_export_and_predict_say_which_pip_install_in_one_line(tmp_path, monkeypatch, capsys):
    from mlabel_exp.cli import export, predict
    from mlabel_exp.errors import UserError
    from mlabel_exp.inference.exported import require_extra

    for missing in ("onnx", "onnxscript", "onnxruntime"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(sys.modules, missing, None)  # import raises ImportError, as where it is not installed
            with pytest.raises(UserError, match=rf"\W{missing}\W.*: pip install mlabel-exp\[export\]$"):
                require_extra()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "x.jpg").write_bytes(b"")
    uri = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    for main, argv in ((export.main, ["export", "run=latest", uri, f"hydra.run.dir={tmp_path / 'job'}"]),
                       (predict.main, ["predict", f"model={tmp_path / 'm.onnx'}", f"input={tmp_path}",
                                       f"out={tmp_path / 'o'}", f"hydra.run.dir={tmp_path / 'job'}"])):
        err = _one_line_error(capsys, main, argv)
        assert "onnxruntime" in err and err.rstrip().endswith("pip install mlabel-exp[export]")


def test_export_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="exactly one of run="):
        ExportConfig()
    with pytest.raises(ConfigError, match="format=torchscript is not offered: torch.jit .* deprecated"):
        ExportConfig(run="latest", format="torchscript")
    with pytest.raises(ConfigError, match="exporter='jit' is invalid: expected auto, dynamo or legacy"):
        ExportConfig(run="latest", exporter="jit")
    with pytest.raises(ConfigError, match="register='m' is invalid"):
        ExportConfig(checkpoint="best.pt", register="m")


EPS32 = 2.0 ** -23


def test_the_tolerance_counts_the_weight_layers_and_the_largest_fan_in():
    """SmallCNN: 4 blocks of 2 convolutions and a linear head = 9 weight layers; the widest is a 3 x 3 convolution over
    128 channels (1152 inputs). Batch norm weights (1-D) are no such layers. Through the sigmoid (slope x max(1,
    |logit|) <= 1/4), plus 2 eps for the two sigmoids themselves."""
    from mlabel_exp.inference.parity import tolerance, weight_layers
    from mlabel_exp.models.zoo import build_model

    model = build_model("smallcnn", 5)
    assert weight_layers(model) == (9, 3 * 3 * 128)
    tol, how = tolerance(model, torch.float32)
    assert tol == 9 * 1152 ** 0.5 * EPS32 / 4 + 2 * EPS32 and "9 weight layers" in how and "+ 2 eps" in how


def test_the_tolerances_sigmoid_term_covers_torchs_and_onnxruntimes_sigmoids():
    """The same float32 logits through torch.sigmoid and through onnxruntime's Sigmoid (the exported graph's last node)
    differ by at most SIGMOID_EPS eps anywhere the sigmoid is not exactly 0 or 1, and beyond."""
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from onnx import TensorProto, helper

    from mlabel_exp.inference.parity import SIGMOID_EPS

    tensor = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in ("z", "p")]
    graph = helper.make_graph([helper.make_node("Sigmoid", ["z"], ["p"])], "sigmoid", tensor[:1], tensor[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    z = np.linspace(-40, 40, 400_001, dtype=np.float32)
    exported = session.run(None, {"z": z})[0].astype(np.float64)
    assert np.abs(exported - torch.sigmoid(torch.from_numpy(z)).numpy()).max() <= SIGMOID_EPS * EPS32


def test_the_metadata_names_the_resize_the_predictor_applies(tmp_path):
    """The file's preprocessing names torchvision's antialiased resize of the uint8 image to a square (both sides, no
    crop) in the model's interpolation, and the float resize after it where the sizes differ; that call, made as the
    metadata says, gives the Predictor's pixels exactly, and so does the OnnxPredictor reading the metadata (bicubic
    too: an older file format left the interpolation out)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from mlabel_exp.inference.exported import metadata, read_metadata
    from mlabel_exp.inference.predictor import Predictor

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))  # not square: the sides are not kept
    for interpolation, decode, size in (("bilinear", 32, 32), ("bicubic", 48, 32)):
        pre = {"decode_size": decode, "input_size": size, "mean": [0.5] * 3, "std": [0.25] * 3,
               "interpolation": interpolation}
        meta = json.loads(metadata(["a"], [0.5], pre)["preprocessing"])
        assert (meta["interpolation"], meta["antialias"], meta["resize_dtype"]) == (interpolation, True, "uint8")
        assert (meta["keep_aspect_ratio"], meta["crop"]) == (False, None)
        assert (f"torchvision.transforms.v2.functional.resize(x, [{decode}, {decode}], interpolation=InterpolationMode."
                f"{interpolation.upper()}, antialias=True) on x, the uint8") in meta["resize"]
        assert (f"float32 batch (0..255, before the division) to {size} x {size}" in meta["resize"]) == (decode != size)
        x = F.resize(F.pil_to_tensor(image), [meta["decode_size"]] * 2, interpolation=InterpolationMode(
            meta["interpolation"]), antialias=meta["antialias"])
        run, file = Predictor(None, pre, ["a"]), Predictor(None, read_metadata(
            metadata(["a"], [0.5], pre), "x")["preprocessing"], ["a"])
        assert x.dtype == torch.uint8 and torch.equal(x, run.image_steps(image))
        assert torch.equal(x, file.image_steps(image))
        assert torch.equal(run.transform(x[None]), file.transform(x[None]))


class _Shifted:
    """A stand-in exported model: the reference's probabilities with ``shift`` added to one (image, class)."""

    def __init__(self, reference, row, column, shift):
        self.reference, self.row, self.column, self.shift = reference, row, column, shift

    def probabilities(self, images):
        p = self.reference.probabilities(images).clone()
        p[self.row, self.column] += self.shift
        return p


def test_parity_excuses_a_label_flipped_within_the_tolerance_of_its_threshold_and_fails_one_beyond(tree):
    """The threshold of class 0 set to image 0's own probability: a candidate lower by one float32 ulp there flips that
    label, within the tolerance (excused, passes); a candidate 0.01 higher on class 1 fails on the difference."""
    from mlabel_exp.data.images import load_image
    from mlabel_exp.inference.parity import compare
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.models.zoo import build_model

    root = tree([1, 2, 3], {}, size=32)
    paths, names = sorted((root / "images").iterdir()), ["im1.jpg", "im2.jpg", "im3.jpg"]
    torch.manual_seed(0)
    reference = Predictor(build_model("smallcnn", 2).eval(),
                          {"decode_size": 32, "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}, ["a", "b"])
    images = torch.stack([reference.image_steps(load_image(p)) for p in paths])
    p = reference.probabilities(images).numpy()
    reference.thresholds = np.float32([p[0, 0], 0.999])
    ulp = float(np.spacing(p[0, 0]))
    near = compare(reference, _Shifted(reference, 0, 0, -ulp), paths, names, batch_size=8)
    assert near.ok and near.images == 3 and near.max_difference <= near.tolerance
    assert [row[:2] for row in near.label_differences] == [("im1.jpg", "a")] == [r[:2] for r in near.near_threshold]
    far = compare(reference, _Shifted(reference, 0, 1, 0.01), paths, names, batch_size=8)
    assert not far.ok and far.max_difference == pytest.approx(0.01, abs=1e-6) and far.label_differences == []
    assert "OVER the tolerance" in far.line("x")


def test_a_difference_where_the_sigmoid_is_flat_fails_as_anywhere_else(tree):
    """Logits of about 2000 (p = 1: the sigmoid is flat there): the tolerance stays the model's own (a tolerance scaled
    by |logit| was 2000 times larger, 0.018, and let this pass), so a probability 0.01 off there fails."""
    from mlabel_exp.inference.parity import compare, tolerance
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.models.zoo import build_model

    root = tree([1, 2], {}, size=32)
    paths = sorted((root / "images").iterdir())
    torch.manual_seed(0)
    model = build_model("smallcnn", 2).eval()
    with torch.no_grad():
        model.head[-1].bias[0] = 2000.0
    reference = Predictor(model, {"decode_size": 32, "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
                          ["a", "b"])
    flat = compare(reference, _Shifted(reference, 0, 0, -0.01), paths, ["im1.jpg", "im2.jpg"], batch_size=8)
    assert flat.tolerance == tolerance(model, torch.float32)[0] < 1e-5
    assert not flat.ok and flat.max_difference == pytest.approx(0.01, abs=EPS32)
