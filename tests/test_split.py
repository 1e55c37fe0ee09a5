import numpy as np
import pytest

from mlabel_exp.data import split as data_split
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.errors import DataError
from mlabel_exp.data.split import load_split, make_split, remembered_split, save_split


def _labels(n=2000, seed=0):
    p = np.array([0.33, 0.17, 0.15, 0.06, 0.02, 0.01, 0.005, 0.0015])
    return (np.random.default_rng(seed).random((n, len(p))) < p).astype(np.uint8)


def test_same_seed_same_split_other_seed_other_split():
    y = _labels()
    a, b, c = make_split(y, 0.2, seed=1), make_split(y, 0.2, seed=1), make_split(y, 0.2, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])


def test_split_is_a_partition_with_requested_sizes():
    y = _labels()
    s = make_split(y, 0.2, 0.1, seed=0)
    rows = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(rows.tolist()) == list(range(len(y)))
    assert abs(len(s["val"]) - 400) <= 5 and abs(len(s["test"]) - 200) <= 5


def test_every_class_with_two_positives_is_on_both_sides():
    y = _labels()
    s = make_split(y, 0.2, seed=0)
    for c in range(y.shape[1]):
        if y[:, c].sum() >= 2:
            assert y[s["train"], c].sum() >= 1 and y[s["val"], c].sum() >= 1, c
    # stratified: the val share of a frequent class is close to the requested fraction
    assert abs(y[s["val"], 0].sum() / y[:, 0].sum() - 0.2) < 0.02


def test_split_round_trips_through_a_file(synthetic_root, tmp_path):
    index = build_index(synthetic_root)
    s = make_split(index.labels, 0.25, seed=4)
    save_split(tmp_path / "split.json", index, s, seed=4)
    back = load_split(tmp_path / "split.json", index)
    assert set(back) == {"train", "val"} and all(np.array_equal(s[k], back[k]) for k in s)


def test_split_naming_unknown_files_fails_clearly(synthetic_root, tmp_path):
    (tmp_path / "split.json").write_text('{"train": ["im1.jpg"], "val": ["im99999.jpg"]}')
    with pytest.raises(DataError, match="not in the data set"):
        load_split(tmp_path / "split.json", build_index(synthetic_root))


def test_a_remembered_split_is_the_computed_one_and_changes_with_any_input(tmp_path, monkeypatch):
    """Runs on the same data reuse the split from the cache (no iterstrat import, no computation); any change of the
    labels, fractions or seed gives another key, so a remembered split is never one of other inputs."""
    y, folder = _labels(), tmp_path / "splits"
    first = remembered_split(y, 0.2, 0.1, 3, folder)
    expected = make_split(y, 0.2, 0.1, seed=3)
    assert all(np.array_equal(first[k], expected[k]) for k in expected) and len(list(folder.glob("*.npz"))) == 1

    calls = []
    monkeypatch.setattr(data_split, "make_split", lambda *a, **k: calls.append(a) or make_split(*a, **k))
    again = remembered_split(y, 0.2, 0.1, 3, folder)
    assert calls == [] and all(np.array_equal(again[k], expected[k]) for k in expected)
    changed = y.copy()
    changed[0, 0] ^= 1
    for args in ((changed, 0.2, 0.1, 3), (y, 0.25, 0.1, 3), (y, 0.2, 0.0, 3), (y, 0.2, 0.1, 4)):
        remembered_split(*args, folder)
    assert len(calls) == 4 and len(list(folder.glob("*.npz"))) == 5

    (file,) = [f for f in folder.glob("*.npz") if np.array_equal(np.load(f)["val"], expected["val"])]
    file.write_bytes(b"truncated")  # a damaged file is computed again
    assert np.array_equal(remembered_split(y, 0.2, 0.1, 3, folder)["val"], expected["val"]) and len(calls) == 5
