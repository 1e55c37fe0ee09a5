"""The audit (python -m mlabel_exp.inspect): every problem of a data set in one pass, grouped with counts, examples
and the setting that fixes each; four figures; the audit's MLflow run. And data sets stay apart: a run's experiment
defaults to its data set's name."""

import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

from mlabel_exp.render.shell import python
from tests.conftest import compose_cfg, mlflow_runs, write_tree


def _messy(root: Path) -> Path:
    """24 images, one of them not an image; annotations with a duplicate, a malformed line, ids without an image, two
    classes differing only by case, a class without a positive, and images in no class (20-24)."""
    write_tree(root, range(1, 25), {
        "cat.txt": "\n".join(map(str, range(1, 12))) + "\n3\nabc\n99\n",   # line 12: dup, 13: bad, 14: no image
        "Cat.txt": "1\n2\n14\n",
        "dog.txt": "\n".join(map(str, range(8, 20))) + "\n100\n101\n",  # lines 13, 14: no image
        "owl.txt": "",
    })
    (root / "images" / "im5.jpg").write_bytes(b"not a jpeg")
    return root


def _inspect(monkeypatch, capsys, *args: str) -> str:
    from mlabel_exp.cli.inspect_data import main

    monkeypatch.setattr(sys, "argv", ["inspect", *args])
    main()  # no SystemExit: exit status 0, as before
    return capsys.readouterr().out


def _block(out: str, kind: str) -> list[str]:
    """The lines of one kind's group in the report: its header, then its examples."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {kind}: "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
    return lines[start:end]


def test_inspect_lists_every_problem_in_one_run_and_writes_the_figures(tmp_path, monkeypatch, capsys):
    root = _messy(tmp_path / "messy")
    out_dir, uri = tmp_path / "audit", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    out = _inspect(monkeypatch, capsys, "data=folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                   f"tracking.uri={uri}", f"out={out_dir}")
    ann = root / "annotations"
    assert _block(out, "duplicate annotation line") == [
        "  duplicate annotation line: 1  -> harmless (read once); delete the line",
        f"    - {ann / 'cat.txt'}:12: image 3 listed again (first on line 3)"]
    assert _block(out, "malformed annotation line")[1] == \
        f"    - {ann / 'cat.txt'}:13: 'abc' is not a positive image number"
    assert "data.on_bad_annotation=skip" in _block(out, "malformed annotation line")[0]
    missing = _block(out, "annotated image without a file")
    assert missing[0].startswith("  annotated image without a file: 3 ") and "data.strict=false" in missing[0]
    assert [line.split(": ")[0].strip("- ") for line in missing[1:]] == \
        [f"{ann / 'cat.txt'}:14", f"{ann / 'dog.txt'}:13", f"{ann / 'dog.txt'}:14"]
    assert _block(out, "unreadable image")[1].startswith(f"    - {root / 'images' / 'im5.jpg'}: unreadable image")
    assert _block(out, "class names differing only by case or spaces")[1] == "    - 'Cat' and 'cat'"
    assert _block(out, "class without any positive")[1] == "    - class 'owl' has no positive image"
    assert "image in no class" not in out  # 20..24 (im5 is cat's): background, counted above the problems
    assert "images with no label         5 (20.8%; background: all-negative samples, not a problem)" in out
    assert "Problems (11 in 7 kind(s)), those that hurt training first" in out
    problems = out.split("Problems (")[1].split("\n\n")[0].splitlines()[1:]
    kinds = [line.split(":")[0].strip() for line in problems if not line.startswith("    ")]
    assert kinds[:2] == ["class without any positive", "class with fewer than 10 positives in a split"]
    assert shlex.split(out.rstrip().splitlines()[-1].removeprefix("Next: ")) == \
        [*python(), "-m", "mlabel_exp.run", "data=folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    names = ["positives_per_class.png", "labels_per_image.png", "cooccurrence.png", "split_per_class.png"]
    for name in names:
        with Image.open(out_dir / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert (out_dir / "audit.txt").read_text().startswith("Data set audit")
    client, runs = mlflow_runs(tmp_path, "messy")  # the data set's experiment: its root folder's name
    assert [r.data.tags["mlabel.kind"] for r in runs] == ["audit"]
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert logged == {"audit.txt", *names}


def test_inspect_lists_first_what_the_split_leaves_a_class(tmp_path, monkeypatch, capsys):
    """A class the split leaves without a validation positive (its AP undefined: out of mAP), one without a training
    positive, classes under FEW_POSITIVES: listed first, by name, with the counts; background images are a count."""
    import json

    from mlabel_exp.data.audit import FEW_POSITIVES

    root = write_tree(tmp_path / "tiny", range(1, 13), {"a.txt": "1\n2\n3\n4\n5\n6\n10\n", "b.txt": "1\n2\n",
                                                       "c.txt": "11\n"})
    split = tmp_path / "split.json"  # images 7, 8, 9 and 12 hold no class: background
    split.write_text(json.dumps({"train": [f"im{i}.jpg" for i in range(1, 9)],
                                 "val": [f"im{i}.jpg" for i in range(9, 13)]}))
    out = _inspect(monkeypatch, capsys, "data=folder", f"data.root={root}", f"data.split_file={split}",
                   f"data.cache_dir={tmp_path / 'cache'}", "tracking.enabled=false", f"out={tmp_path / 'audit'}")
    problems = out.split("Problems (")[1].split("\n\n")[0].splitlines()
    assert problems[0] == "5 in 3 kind(s)), those that hurt training first"
    assert problems[1].startswith("  class with no training positive: 1  -> the model cannot learn it")
    assert problems[2] == "    - class 'c': 0 of its 1 positive images are in the training split (8 images)"
    assert problems[3].startswith("  class with no validation positive: 1  -> its AP is undefined, so it is left out "
                                  "of val mAP") and "data.val_fraction" in problems[3]
    assert problems[4] == "    - class 'b': 0 of its 2 positive images are in the validation split (4 images)"
    assert problems[5].startswith(f"  class with fewer than {FEW_POSITIVES} positives in a split: 3  -> ")
    assert problems[6:] == ["    - class 'a': 6 training, 1 validation positives",
                            "    - class 'b': 2 training, 0 validation positives",
                            "    - class 'c': 0 training, 1 validation positives"]
    assert "images with no label         4 (33.3%; background: all-negative samples, not a problem)" in out
    table = out.split("Images per class (positives)\n")[1].splitlines()[:4]  # with each split's positives
    assert [line.split() for line in table] == [["class", "images", "share", "train", "val"],
                                                ["a", "7", "0.5833", "6", "1"], ["b", "2", "0.1667", "2", "0"],
                                                ["c", "1", "0.0833", "0", "1"]]
    # a split the settings cannot make (a split file of other images) is a problem of the audit, not its end
    split.write_text(json.dumps({"train": ["im1.jpg", "im99.jpg"], "val": ["im2.jpg"]}))
    out = _inspect(monkeypatch, capsys, "data=folder", f"data.root={root}", f"data.split_file={split}",
                   f"data.cache_dir={tmp_path / 'cache'}", "tracking.enabled=false", f"out={tmp_path / 'audit2'}")
    assert "  split the settings cannot make: 1" in out and str(split) in out.split("split the settings cannot")[1]
    assert "images with no label         4" in out and not (tmp_path / "audit2" / "split_per_class.png").exists()


def test_class_names_differing_only_by_case_or_spaces_are_kept_apart_and_reported(tmp_path, monkeypatch, capsys):
    """'Cat' and 'cat', 'red  car' and 'red car' may be one class or two: the reader keeps what is written (the spaces
    around a separator are no part of a name), and inspect says so and what to do."""
    root = tmp_path / "tags"
    (root / "images").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(root / "images" / f"p{i}.png")
    rows = ["big dog; cat", "Cat;red  car", "red car", "big dog", "cat", "red car;cat", "Cat", "big dog;red  car"]
    (root / "labels.csv").write_text("image,labels\n" + "".join(f"p{i}.png,{r}\n" for i, r in enumerate(rows)))
    out = _inspect(monkeypatch, capsys, "data=csv", f"data.root={root}", 'data.label_separator=";"',
                   "tracking.enabled=false", f"out={tmp_path / 'audit'}")
    assert "classes                      5" in out  # Cat, big dog, cat, red  car, red car: none merged, no ' cat'
    assert _block(out, "class names differing only by case or spaces") == [
        "  class names differing only by case or spaces: 2  -> they are read as different classes; if they are one, "
        "write them alike in the annotations, else give them distinct names",
        "    - 'Cat' and 'cat'", "    - 'red  car' and 'red car'"]


def test_a_data_set_with_unknown_labels_counts_them_per_class(tree):
    import numpy as np

    from mlabel_exp.data.audit import audit
    from mlabel_exp.data.formats.folder import build_index

    index = build_index(tree([1, 2, 3], {"a.txt": "1\n2\n", "b.txt": "3\n"}))
    index.labels = np.array([[1, -1], [1, 0], [-1, 1]], dtype=np.int8)
    report = audit(index)
    assert report.per_class["images"].tolist() == [2, 1]   # positives are labels == 1, never -1 summed
    assert report.per_class["unknown"].tolist() == [1, 1]
    assert report.summary["unknown labels"] == "2 (33.3% of entries)"


def test_tracking_disabled_logs_no_audit(tmp_path, monkeypatch, capsys):
    root = write_tree(tmp_path / "clean", range(1, 13), {"a.txt": "1\n2\n3\n4\n5\n6\n", "b.txt": "5\n6\n7\n8\n9\n"})
    out = _inspect(monkeypatch, capsys, "data=folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                   f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "tracking.enabled=false",
                   f"out={tmp_path / 'audit'}")
    assert "MLflow run" not in out and not (tmp_path / "mlruns").exists()
    assert "images with no label         3 (25.0%; background" in out   # 10, 11, 12


# ------------------------------------------------------------------ data sets stay apart

def test_the_experiment_defaults_to_the_data_set_name_and_an_explicit_one_wins(tmp_path):
    from mlabel_exp.config import validate

    (tmp_path / "birds").mkdir()
    assert validate(compose_cfg("data=folder", f"data.root={tmp_path / 'birds'}")).tracking.experiment == "birds"
    assert validate(compose_cfg("data.synthetic.num_images=80")).tracking.experiment == \
        "synthetic (80 images, 128 px, seed 0)"
    assert validate(compose_cfg("data.synthetic.num_images=90")).tracking.experiment == \
        "synthetic (90 images, 128 px, seed 0)"  # another data set, another experiment
    assert validate(compose_cfg("data=folder", f"data.root={tmp_path / 'birds'}", "tracking.experiment=mine")) \
        .tracking.experiment == "mine"
    search = validate(compose_cfg("data=folder", f"data.root={tmp_path / 'birds'}", command="search"))
    assert search.tracking.experiment == "birds"


@pytest.mark.integration
def test_a_run_lands_in_its_data_sets_experiment(tmp_path, monkeypatch, capsys):
    """Through the command line, without tracking.experiment: the experiment is the data set's name (which differs
    between data sets: test_the_experiment_defaults_to_the_data_set_name_and_an_explicit_one_wins)."""
    from mlabel_exp.cli.run import main
    from tests.conftest import tiny_overrides

    args = [a for a in tiny_overrides(tmp_path) if not a.startswith("tracking.experiment=")]
    monkeypatch.setattr(sys, "argv", ["run", *args])
    main()
    _, runs = mlflow_runs(tmp_path, "synthetic (80 images, 32 px, seed 0)")
    assert len(runs) == 1
    _, runs = mlflow_runs(tmp_path)  # the old default: nothing
    assert runs == []


def test_compare_and_predict_default_to_the_experiment_of_the_newest_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from mlabel_exp.errors import ConfigError
    from mlabel_exp.tracking.run_ids import newest_experiment

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(uri)
    with pytest.raises(ConfigError, match="tracking.experiment is not set and the store .* holds no run"):
        newest_experiment(uri, None)
    for start, name in enumerate(("birds", "cars", "birds-comparisons"), start=1):  # runs started in this order
        client.create_run(client.create_experiment(name), start_time=start * 1000)
    assert newest_experiment(uri, None) == "cars"  # the newest run but for the comparison
    assert newest_experiment(uri, "birds") == "birds"
