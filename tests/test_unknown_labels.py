"""Unknown labels (-1): masked out of every loss and metric, absent for the split, recorded by a run. Each figure is
checked against a hand computation (numpy) or scikit-learn over the known entries only."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mlabel_exp.metrics.scores import compute, per_class_table
from mlabel_exp.metrics.thresholds import best_f1_threshold, cross_fitted, tune_thresholds
from mlabel_exp.models.losses import AsymmetricLoss, FocalLoss, MaskedBCE, build_loss, pos_weight
from tests.conftest import compose_cfg

#: AP in float32 sums one rounded precision x recall step per image: at most n float32 roundings of values <= 1
AP_TOL = 240 * float(np.finfo(np.float32).eps)


def with_unknowns(seed=0, n=240, c=5, share=0.25):
    """(probabilities, 0/1 truth, the truth with ``share`` of it unknown as -1), int."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.15, 0.5, c)).astype(np.int64)
    p = np.clip(y * 0.3 + rng.random((n, c)) * 0.7, 0, 1).astype(np.float32)
    yu = np.where(rng.random((n, c)) < share, -1, y)
    return p, y, yu


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def bce_by_hand(x, y, pw=None):
    pw = np.ones(x.shape[1]) if pw is None else pw
    return -(pw * y * np.log(sigmoid(x)) + (1 - y) * np.log(1 - sigmoid(x)))


def focal_by_hand(x, y, alpha, gamma):
    p = sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    return (alpha * y + (1 - alpha) * (1 - y)) * bce_by_hand(x, y) * (1 - p_t) ** gamma


def asl_by_hand(x, y, gamma_neg, gamma_pos, clip):
    p = sigmoid(x)
    p_neg = np.maximum(p - clip, 0)
    return -(y * (1 - p) ** gamma_pos * np.log(p) + (1 - y) * p_neg ** gamma_neg * np.log(1 - p_neg))


LOSSES = [
    ("bce", lambda: MaskedBCE(), lambda x, y: bce_by_hand(x, y)),
    ("bce pos_weight", lambda: MaskedBCE(torch.tensor([1.0, 2.0, 3.5, 1.0, 9.0])),
     lambda x, y: bce_by_hand(x, y, np.array([1.0, 2.0, 3.5, 1.0, 9.0]))),
    ("focal", lambda: FocalLoss(0.25, 2.0), lambda x, y: focal_by_hand(x, y, 0.25, 2.0)),
    ("asl", lambda: AsymmetricLoss(4.0, 1.0, 0.05), lambda x, y: asl_by_hand(x, y, 4.0, 1.0, 0.05)),
]


@pytest.mark.parametrize("name,make,by_hand", LOSSES, ids=[entry[0] for entry in LOSSES])
def test_each_loss_is_the_mean_over_known_entries_and_unknowns_change_nothing(name, make, by_hand):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (12, 5))
    y = (rng.random((12, 5)) < 0.4).astype(np.float64)
    known = rng.random((12, 5)) > 0.3
    targets = torch.tensor(np.where(known, y, -1.0), dtype=torch.float32)
    logits = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    loss = make()(logits, targets)
    assert float(loss.detach()) == pytest.approx(by_hand(x, y)[known].mean(), rel=1e-5)
    loss.backward()
    assert (logits.grad[~torch.tensor(known)] == 0).all() and (logits.grad[torch.tensor(known)] != 0).any()
    # an unknown entry's logit, however wrong, changes neither the loss nor anything else's gradient
    other = torch.tensor(np.where(known, x, -x * 7 + 3), dtype=torch.float32, requires_grad=True)
    again = make()(other, targets)
    again.backward()
    assert torch.equal(again, loss) and torch.equal(other.grad, logits.grad)
    # nothing known: nothing to learn
    none_known = make()(torch.tensor(x, dtype=torch.float32), torch.full((12, 5), -1.0))
    assert float(none_known) == 0.0


@pytest.mark.parametrize("group", ["bce", "bce_balanced", "focal", "asl"])
def test_without_unknowns_a_run_computes_the_loss_exactly_as_before(group):
    """build_loss(unknown=False), what a run on fully labelled data gets: the old plain mean, bit for bit, and the
    masked mean agrees with it."""
    from torchvision.ops import sigmoid_focal_loss

    from mlabel_exp.config import validate

    cfg = validate(compose_cfg(f"loss={group}")).loss
    labels = (np.random.default_rng(0).random((50, 14)) < 0.2).astype(np.uint8)
    logits, y = torch.randn(8, 14), (torch.rand(8, 14) > 0.6).float()
    plain = build_loss(cfg, labels, unknown=False)(logits, y)
    old = {"bce": lambda: torch.nn.BCEWithLogitsLoss()(logits, y),
           "bce_balanced": lambda: torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(labels, "balanced",
                                                                                    cfg.pos_weight_max))(logits, y),
           "focal": lambda: sigmoid_focal_loss(logits, y, cfg.focal_alpha, cfg.focal_gamma, reduction="mean")}
    if group in old:
        assert torch.equal(plain, old[group]())
    assert float(build_loss(cfg, labels)(logits, y)) == pytest.approx(float(plain), rel=1e-6)


def test_pos_weight_counts_known_entries_only():
    labels = np.zeros((20, 2), dtype=np.int8)
    labels[:4, 0] = 1     # 4 positives
    labels[4:10, 0] = -1  # 6 unknown: 10 negatives, not 16
    labels[:2, 1] = 1
    labels[2:, 1] = -1    # 2 positives, no known negative
    np.testing.assert_allclose(pos_weight(labels, "balanced", 10), [10 / 4, 1.0])
    np.testing.assert_allclose(pos_weight(labels, "sqrt", 10), [np.sqrt(10 / 4), 1.0], rtol=1e-6)


def test_metrics_count_known_entries_only_as_scikit_learn_does_on_them():
    p, _, yu = with_unknowns(2)
    ours = compute(torch.tensor(p), torch.tensor(yu), 0.5)
    table = per_class_table(torch.tensor(p), torch.tensor(yu), [f"c{i}" for i in range(yu.shape[1])])
    pred, known = (p >= 0.5).astype(int), yu >= 0
    ap, f1 = [], []
    for c in range(yu.shape[1]):
        k = known[:, c]
        ap.append(skm.average_precision_score(yu[k, c], p[k, c]))
        f1.append(skm.f1_score(yu[k, c], pred[k, c]))
        assert table["precision"][c] == pytest.approx(skm.precision_score(yu[k, c], pred[k, c]), abs=1e-6)
        assert table["recall"][c] == pytest.approx(skm.recall_score(yu[k, c], pred[k, c]), abs=1e-6)
    np.testing.assert_allclose(table["AP"], ap, atol=AP_TOL)
    np.testing.assert_allclose(table["F1"], f1, atol=1e-6)
    assert list(table["support"]) == list((yu == 1).sum(0))
    assert ours["mAP"] == pytest.approx(np.mean(ap), abs=AP_TOL)
    assert ours["f1_macro"] == pytest.approx(np.mean(f1), abs=1e-6)
    assert ours["f1_micro"] == pytest.approx(skm.f1_score(yu[known], pred[known]), abs=1e-6)
    assert ours["precision_micro"] == pytest.approx(skm.precision_score(yu[known], pred[known]), abs=1e-6)
    assert ours["hamming_loss"] == pytest.approx((pred != yu)[known].mean(), abs=1e-6)
    assert ours["accuracy"] == pytest.approx((pred == yu)[known].mean(), abs=1e-6)
    assert ours["subset_accuracy"] == pytest.approx(((pred == yu) | ~known).all(1).mean(), abs=1e-6)


def test_a_class_whose_positives_are_all_unknown_is_left_out_like_one_without_positives():
    p, y, _ = with_unknowns(3)
    yu = y.copy()
    yu[y[:, 1] == 1, 1] = -1  # class 1: its positives unknown, its negatives known
    ours = compute(torch.tensor(p), torch.tensor(yu))
    rest = [0, 2, 3, 4]
    assert ours["mAP"] == pytest.approx(np.mean([skm.average_precision_score(y[:, c], p[:, c]) for c in rest]),
                                        abs=AP_TOL)


def test_thresholds_are_tuned_on_known_entries_only():
    p, _, yu = with_unknowns(4, n=120)
    tuned = tune_thresholds(torch.tensor(p), torch.tensor(yu))
    known = yu >= 0
    for c in range(yu.shape[1]):
        k = known[:, c]
        t, f1 = best_f1_threshold(torch.tensor(p[k, c]), torch.tensor(yu[k, c]))
        assert tuned["per_class"][c] == t
        # the best F1 over every cut, by scikit-learn on the known entries
        assert f1 == pytest.approx(skm.f1_score(yu[k, c], p[k, c] >= t), abs=1e-6)
        assert f1 == pytest.approx(max(skm.f1_score(yu[k, c], p[k, c] >= s) for s in np.unique(p[k, c])), abs=1e-6)
    assert tuned["global"] == best_f1_threshold(torch.tensor(p[known]), torch.tensor(yu[known]))[0]


def test_what_an_unknown_entry_was_predicted_changes_no_metric():
    p, _, yu = with_unknowns(5)
    wild = np.where(yu >= 0, p, np.random.default_rng(9).random(p.shape)).astype(np.float32)
    for fn in (lambda q: compute(q, torch.tensor(yu), 0.4), lambda q: cross_fitted(q, torch.tensor(yu), seed=1),
               lambda q: tune_thresholds(q, torch.tensor(yu))):
        assert fn(torch.tensor(p)) == fn(torch.tensor(wild))


def test_the_split_counts_no_unknown_as_a_positive():
    from mlabel_exp.data.split import make_split

    _, y, yu = with_unknowns(6, n=600, c=6, share=0.3)
    positives_only = (yu == 1).astype(np.uint8)
    a, b = make_split(yu.astype(np.int8), 0.2, 0.1, seed=2), make_split(positives_only, 0.2, 0.1, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in b)
    # 0/1 labels split as they always did, uint8 or int8, and a remembered split keeps its key
    y8 = y.astype(np.uint8)
    assert all(np.array_equal(make_split(y8, 0.2, seed=1)[k], make_split(y.astype(np.int8), 0.2, seed=1)[k])
               for k in ("train", "val"))


def test_a_remembered_split_keeps_its_key_for_0_1_labels_and_changes_with_unknowns(tmp_path):
    from mlabel_exp.data.split import remembered_split

    _, y, yu = with_unknowns(7, n=200)
    remembered_split(y.astype(np.uint8), 0.2, 0.0, 0, tmp_path / "a")
    remembered_split(y.astype(np.int8), 0.2, 0.0, 0, tmp_path / "b")
    remembered_split(yu.astype(np.int8), 0.2, 0.0, 0, tmp_path / "c")
    names = [[f.name for f in (tmp_path / d).glob("*.npz")] for d in "abc"]
    assert names[0] == names[1] and names[2] != names[0]


@pytest.fixture
def partial_index(synthetic_root):
    """The synthetic set as int8 labels with a fifth of them unknown."""
    from mlabel_exp.data.formats.folder import build_index

    index = build_index(synthetic_root)
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(index.labels.shape) < 0.2, -1, index.labels).astype(np.int8)
    return dataclasses.replace(index, labels=labels)


def test_loaders_audit_and_digests_keep_unknowns_apart(partial_index, tmp_path):
    from mlabel_exp.data.audit import audit
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.images import image_steps
    from mlabel_exp.data.loaders import MultiLabelImages
    from mlabel_exp.experiment.record import dataset_digests

    index, rows = partial_index, [0, 1, 2, 3]
    items = MultiLabelImages.from_index(index, rows, image_steps(32))
    np.testing.assert_array_equal(np.stack([items[i]["target"].numpy() for i in range(4)]), index.labels[rows])
    report = audit(index)
    assert list(report.per_class["images"]) == list((index.labels == 1).sum(0))
    assert list(report.per_class["unknown"]) == list((index.labels == -1).sum(0))
    assert "unknown" not in audit(build_index(index.root)).per_class
    split, content = {"train": np.arange(0, 200), "val": np.arange(200, 300)}, np.zeros((len(index), 8), np.uint8)
    plain = build_index(index.root)
    as_int8 = dataclasses.replace(plain, labels=plain.labels.astype(np.int8))
    assert dataset_digests(plain, split, content) == dataset_digests(as_int8, split, content)
    assert dataset_digests(index, split, content) != dataset_digests(as_int8, split, content)


def test_a_resume_notices_a_label_that_became_unknown(partial_index):
    from mlabel_exp.errors import DataError
    from mlabel_exp.experiment.resume import check_data, data_record

    content = np.zeros((len(partial_index), 8), np.uint8)
    then = data_record(partial_index, content)
    check_data(data_record(partial_index, content), then, "r1", partial_index.root)
    labels = partial_index.labels.copy()
    row = int(np.flatnonzero(labels[:, 0] == 1)[0])
    labels[row, 0] = -1
    with pytest.raises(DataError, match=f"{partial_index.files[row]}: {partial_index.classes[0]} 1->-1"):
        check_data(data_record(dataclasses.replace(partial_index, labels=labels), content), then, "r1",
                   partial_index.root)


# ------------------------------------------------------------------ in the prediction files

#: Class names that a space-, comma-, semicolon- or pipe-joined cell would cut apart or merge
AWKWARD_NAMES = sorted(["big dog", "a,b", "c;d", "e|f", 'say "hi"', "[x]", "ünï", "1"])


def test_prediction_files_carry_positives_negatives_and_unknowns_whatever_the_class_names(tmp_path):
    import csv
    import json

    from mlabel_exp.inference.outputs import read_predictions, write_predictions

    p, _, yu = with_unknowns(8, n=30, c=len(AWKWARD_NAMES))
    files = [f"dir/im {i}.jpg" for i in range(30)]
    write_predictions(tmp_path, "val", files, p, AWKWARD_NAMES, 0.5, targets=yu)
    with open(tmp_path / "val.csv", newline="", encoding="utf-8") as f:  # read with nothing but csv and json
        rows = list(csv.DictReader(f))
    for row, y, hits in zip(rows, yu, p >= np.float32(0.5)):
        assert json.loads(row["true_labels"]) == [c for c, t in zip(AWKWARD_NAMES, y) if t == 1]
        assert json.loads(row["unknown_labels"]) == [c for c, t in zip(AWKWARD_NAMES, y) if t == -1]
        assert json.loads(row["labels"]) == [c for c, on in zip(AWKWARD_NAMES, hits) if on]
    for fmt in ("csv", "json"):
        back = read_predictions((tmp_path / f"val.{fmt}").read_text(encoding="utf-8"), fmt)
        assert back.classes == AWKWARD_NAMES and back.files == files and back.marks_unknowns
        np.testing.assert_array_equal(back.targets, yu)  # 1, 0 and -1: every label as the data set had it
        np.testing.assert_array_equal(back.probs.astype(np.float32), p)
        np.testing.assert_array_equal(back.labels, p >= np.float32(0.5))
    write_predictions(tmp_path, "predictions", files, p, AWKWARD_NAMES, 0.5)  # predict's: no truth
    for fmt in ("csv", "json"):
        back = read_predictions((tmp_path / f"predictions.{fmt}").read_text(encoding="utf-8"), fmt)
        assert back.targets is None and not back.marks_unknowns
        np.testing.assert_array_equal(back.labels, p >= np.float32(0.5))


def test_prediction_files_of_older_versions_still_read_and_an_ambiguous_one_is_named():
    """Before the JSON cells: names joined by spaces (a name with a space read back by matching the class names in
    order), true labels only (an unknown label reads as a negative: ``marks_unknowns`` False)."""
    import json

    from mlabel_exp.errors import DataError
    from mlabel_exp.inference.outputs import read_predictions

    old_csv = ("file,big dog,cat,dog,labels,true_labels\nim1.jpg,0.9,0.2,0.7,big dog dog,big dog\n"
               "im2.jpg,0.1,0.8,0.1,cat,cat dog\nim3.jpg,0.1,0.1,0.1,,\n")
    records = {"im1.jpg": (0.9, 0.2, 0.7, ["big dog", "dog"], ["big dog"]),
               "im2.jpg": (0.1, 0.8, 0.1, ["cat"], ["cat", "dog"]), "im3.jpg": (0.1, 0.1, 0.1, [], [])}
    old_json = json.dumps({"classes": ["big dog", "cat", "dog"], "thresholds": {"big dog": 0.5, "cat": 0.5, "dog": 0.5},
                           "predictions": {f: {"probabilities": dict(zip(["big dog", "cat", "dog"], r[:3])),
                                               "labels": r[3], "true_labels": r[4]} for f, r in records.items()}})
    for text, fmt in ((old_csv, "csv"), (old_json, "json")):
        back = read_predictions(text, fmt)
        assert back.files == ["im1.jpg", "im2.jpg", "im3.jpg"] and not back.marks_unknowns
        np.testing.assert_array_equal(back.targets, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
        np.testing.assert_array_equal(back.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    ambiguous = "file,big,big dog,dog,labels,true_labels\nim1.jpg,0.9,0.2,0.7,,big dog\n"
    with pytest.raises(DataError, match=r"old/val\.csv line 2, true_labels: 'big dog' reads as \['big', 'dog'\] or "
                                        r"\['big dog'\]"):
        read_predictions(ambiguous, "csv", "old/val.csv")
