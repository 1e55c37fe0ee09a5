"""Every written number agrees with every other: probabilities and thresholds written losslessly, labels decided from
exactly what is written, compare reading back what the run computed; class names that would overwrite a column and
images over the pixel limit refused early and clearly."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mlabel_exp import floats
from mlabel_exp.comparison import paired
from mlabel_exp.inference import outputs
from mlabel_exp.metrics import stats
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.images import load_image
from mlabel_exp.errors import ImageTooLarge
from mlabel_exp.errors import DataError
from tests.conftest import huge_png, peak_memory_growth, write_tree

F32 = np.float32


def ulp_neighbours(t) -> list:
    """t, one float32 ulp below and one above."""
    t = F32(t)
    return [np.nextafter(t, F32(-np.inf)), t, np.nextafter(t, F32(np.inf))]


def test_written_numbers_read_back_as_the_same_float32_and_keep_their_order():
    """Across every binade of [0, 1], parsed as float32 (exact) or float64 (ordered as the float32 are) from the CSV
    and from the JSON."""
    bits = np.random.default_rng(0).integers(0, 0x3F800001, 20000, dtype=np.uint32)
    x = np.unique(np.concatenate([bits.view(F32), *map(ulp_neighbours, (0.3, 0.5, 2.7e-38, 1e-7)),
                                  F32([0.0, 1.0, 1e-45])]))
    w = floats.written(x)
    assert np.array_equal(w.astype(F32), x) and np.all(np.diff(w) > 0)
    csv = pd.DataFrame({"p": w}).to_csv(index=False)
    back = pd.read_csv(io.StringIO(csv))["p"].to_numpy()
    assert np.array_equal(back.astype(F32), x) and np.all(np.diff(back) > 0)
    assert json.loads(json.dumps(w.tolist())) == w.tolist()
    assert [str(v) for v in floats.written(F32([0.3, 2.7e-38, 1e-5]))] == ["0.3", "2.7e-38", "1e-05"]  # shortest


def test_a_shortest_decimal_too_near_its_rounding_boundary_is_written_exactly(monkeypatch):
    """Where the shortest decimal would read back (float64) within MARGIN_ULPS of the boundary between two float32,
    the float32's exact value is written: a reader's parser off by an ulp could otherwise land on the wrong side."""
    x = F32(0.3)
    boundary = (float(x) + float(np.nextafter(x, F32(1)))) / 2
    monkeypatch.setattr(floats, "_shortest", lambda values: np.full(len(values), np.nextafter(boundary, 0)))
    assert floats.written([x]).tolist() == [float(x)]


@pytest.fixture
def near_thresholds(tmp_path):
    """Probabilities at each class's threshold and one float32 ulp either side of it, written as val.* with targets
    and as predictions.* without (predict's form), plus a submission."""
    thresholds = F32([0.3, 2.7e-38, 0.9999999, 0.5])
    classes = ["cat", "dog", "sea", "tree"]
    probs = np.stack([ulp_neighbours(t) for t in thresholds], 1)  # row 0 below, 1 at, 2 above every threshold
    files = ["below.jpg", "at.jpg", "above.jpg"]
    targets = np.array([[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    outputs.write_predictions(tmp_path, "val", files, torch.from_numpy(probs), classes, thresholds, targets=targets)
    outputs.write_predictions(tmp_path, "predictions", files, probs, classes, thresholds)
    outputs.write_submission(tmp_path / "submission.csv", files, probs, classes, thresholds)
    return tmp_path, classes, files


@pytest.mark.parametrize("stem", ["val", "predictions"])
def test_labels_are_the_written_probability_at_or_above_the_written_threshold(near_thresholds, stem):
    """Read back from the files, as float64 (CSV, JSON) and as float32: each label is exactly written probability >=
    written threshold, the thresholds are the ones given, and the CSV, JSON and submission agree on every decision."""
    folder, classes, files = near_thresholds
    payload = json.loads((folder / f"{stem}.json").read_text())
    t = np.array([payload["thresholds"][c] for c in classes])
    assert np.array_equal(t.astype(F32), F32([0.3, 2.7e-38, 0.9999999, 0.5]))
    csv = pd.read_csv(folder / f"{stem}.csv", keep_default_na=False).set_index("file")
    from_json = np.array([[payload["predictions"][f]["probabilities"][c] for c in classes] for f in files])
    assert np.array_equal(csv.loc[files, classes].to_numpy(), from_json)  # the same decimals in both
    for p in (from_json, from_json.astype(F32)):
        expected = [[c for c, on in zip(classes, row) if on] for row in p >= t.astype(p.dtype)]
        assert [payload["predictions"][f]["labels"] for f in files] == expected
        assert [json.loads(s) for s in csv.loc[files, "labels"]] == expected  # a JSON array a cell
    assert expected == [[], classes, classes]  # one ulp below: no label; at or above: every label
    submission = pd.read_csv(folder / "submission.csv").set_index("image")
    assert [[c for c in classes if submission.loc[f, c]] for f in files] == expected


def test_true_labels_are_written_beside_the_decisions(near_thresholds):
    folder, classes, files = near_thresholds
    payload = json.loads((folder / "val.json").read_text())
    assert [payload["predictions"][f]["true_labels"] for f in files] == [["cat", "sea"], ["dog", "sea", "tree"], []]
    assert "true_labels" not in pd.read_csv(folder / "predictions.csv").columns


@pytest.mark.parametrize("name", ["file", "labels", "true_labels", "unknown_labels", "error", "image"])
def test_a_class_named_like_an_output_column_is_refused_naming_its_annotation_file(tree, name):
    root = tree([1, 2], {"cat.txt": "1\n", f"{name}.txt": "2\n"})
    with pytest.raises(DataError, match=rf"annotations/{name}\.txt: class '{name}' has the name of a column .*"
                                        rf"rename the file \(e\.g\. to {name}_class\.txt\)"):
        build_index(root)
    with pytest.raises(DataError, match=f"class '{name}'"):  # a late writer refuses too, before writing a byte
        outputs.write_predictions(root, "val", ["im1.jpg"], np.zeros((1, 2), F32), ["cat", name])
    assert not (root / "val.csv").exists()


def test_compare_recomputes_the_runs_own_map_from_its_written_probabilities(tmp_path, monkeypatch):
    """Probabilities a few float32 ulps apart (an untrained model's): written at 6 decimals they tied, and compare's
    mAP was not the run's (0.2024 against 0.2438 in one audit). Read back from val.csv, stats.weighted_map equals
    metrics.compute's mAP (the run's val/mAP) up to float32 arithmetic: torchmetrics sums n float32 products, each
    rounded, so at most (n + 3) float32 ulps of 1 apart."""
    from mlabel_exp.metrics.scores import compute

    rng = np.random.default_rng(1)
    n, classes = 200, ["a", "b", "c"]
    targets = (rng.random((n, 3)) < 0.3).astype(int)
    steps = rng.integers(0, 40, (n, 3)) + 12 * targets  # positives a few ulps higher, with ties
    probs = torch.from_numpy((0.5 + steps * 2.0**-24).astype(F32))  # 2**-24: float32's ulp in [0.5, 1)
    run_map = compute(probs, torch.from_numpy(targets))["mAP"]
    files = [f"im{i}.jpg" for i in range(n)]
    outputs.write_predictions(tmp_path, "val", files, probs, classes, 0.5, targets=targets)
    monkeypatch.setattr(paired.query, "artifact_text", lambda uri, run_id, path: (tmp_path / "val.csv").read_text())
    frame = paired.run_predictions("unused", "run", "val")
    truth, (read,) = paired.shared_arrays([frame])
    order = np.argsort(files)  # compare reads the images sorted by name
    assert np.array_equal(read, probs.numpy()[order]) and np.array_equal(truth, targets[order])
    assert stats.weighted_map(read, truth)[0] == pytest.approx(run_map, abs=(n + 3) * 2**-24)
    rounded = np.round(probs.numpy().astype(np.float64), 6)  # what the 6-decimal file held: all 0.5
    assert stats.weighted_map(rounded, targets)[0] != pytest.approx(run_map, abs=1e-3)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    """A 12000 x 12000 PNG of ~20 KB (144 million pixels, over Pillow's 89 million, where Pillow itself only warns
    and decodes 432 MB of RGB): refused before decoding, from a file or from bytes, with peak memory barely moving."""
    blob = huge_png()
    (tmp_path / "huge.png").write_bytes(blob)

    def refusal(source) -> str | None:
        try:
            load_image(source)
        except ImageTooLarge as e:
            return str(e)

    for source in (blob, tmp_path / "huge.png"):
        message, grown = peak_memory_growth(lambda: refusal(source))
        assert message.startswith("12000 x 12000 pixels, over the limit of 89478485 (PIL.Image.MAX_IMAGE_PIXELS): "
                                  "refused before decoding")
        assert grown < 32 * 2**20, grown  # decoding would take 144 MB at 1 byte a pixel, 432 MB as RGB
