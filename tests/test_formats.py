"""The readers of data=csv, coco and voc against the folder format: one synthetic set written in every format by the
generator must read back as the same images, classes and labels; bad input names its file and the setting."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mlabel_exp.config import validate

from mlabel_exp.errors import ConfigError
from mlabel_exp.data.formats import index_from_config
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.errors import DataError
from mlabel_exp.data.synthetic import SyntheticSpec, generate, write_format
from tests.conftest import artifact_paths, compose_cfg, mlflow_runs, tiny_overrides, write_tree

FORMATS = {"csv": "csv", "onehot": "csv", "coco": "coco", "voc": "voc"}  # generator format -> data= reader


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The same 40 images in the folder format and in each other format."""
    base = tmp_path_factory.mktemp("formats")
    folder = generate(base / "folder", SyntheticSpec(num_images=40, image_size=32, seed=1))
    out = {"folder": folder}
    for fmt in FORMATS:
        shutil.copytree(folder, base / fmt)
        out[fmt] = write_format(base / fmt, fmt)
    return out


def read(*overrides):
    return index_from_config(validate(compose_cfg(*overrides)).data)


def labels_by_content(index) -> dict[bytes, set[str]]:
    """image bytes -> its positive class names: independent of file names, order and class order."""
    return {p.read_bytes(): {c for c, v in zip(index.classes, row) if v == 1}
            for p, row in zip(index.paths(), index.labels)}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_reads_as_the_folder_format(written, fmt):
    ref = build_index(written["folder"])
    index = read(f"data={FORMATS[fmt]}", f"data.root={written[fmt]}")
    assert index.labels.dtype == np.int8 and len(index) == 40 and not index.problems
    # a labels column or VOC objects cannot name a class without positives: those formats hold the classes that occur
    present = [c for c, n in zip(ref.classes, ref.labels.sum(0)) if n > 0]
    assert index.classes == (present if fmt in ("csv", "voc") else ref.classes)
    positives = dict(zip(index.classes, index.labels.sum(0).tolist()))
    assert positives == {c: int(n) for c, n in zip(ref.classes, ref.labels.sum(0)) if c in positives}
    assert labels_by_content(index) == labels_by_content(ref)
    assert set(np.unique(index.labels)) <= {0, 1}
    # and so does what `inspect` shows: the same positives per class (the folder format also lists its empty ones)
    from mlabel_exp.data.audit import audit

    seen = audit(index).per_class.set_index("class")["images"]
    assert seen.to_dict() == audit(ref).per_class.set_index("class")["images"].loc[index.classes].to_dict()


def test_coco_keeps_category_ids_and_sorts_classes_by_name(written):
    index = read("data=coco", f"data.root={written['coco']}")
    assert index.classes == sorted(index.classes)
    assert index.meta["category_ids"]["circle"] == 1 and index.meta["category_ids"]["zigzag"] == 14


def test_one_hot_minus_one_and_empty_are_unknown_and_tsv_is_detected(tmp_path):
    (tmp_path / "pics" / "a").mkdir(parents=True)
    for name in ("a/x.png", "y.bmp", "z.webp"):
        (tmp_path / "pics" / name).write_bytes(b"")
    (tmp_path / "train.tsv").write_text("filename\tcat\tdog\na/x.png\t1\t-1\ny.bmp\t0\t\nz.webp\t0\t1\n")
    index = read("data=csv", f"data.root={tmp_path}", "data.images_dir=pics")
    assert index.classes == ["cat", "dog"] and index.files == ["a/x.png", "y.bmp", "z.webp"]
    assert index.labels.tolist() == [[1, -1], [0, -1], [0, 1]]
    assert index.paths()[0] == tmp_path / "pics" / "a" / "x.png"


def test_labels_column_with_any_separator_and_names_without_extension(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("t0.jpg", "t1.jpeg", "t2.png", "t3.jpg"):
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "labels.csv").write_text('id,tags\nt0,haze primary\nt1,"haze,water"\nt2,water;primary|clear\nt3,\n')
    index = read("data=csv", f"data.root={tmp_path}")
    assert index.classes == ["clear", "haze", "primary", "water"]
    assert index.files == ["t0.jpg", "t1.jpeg", "t2.png", "t3.jpg"]
    assert index.labels.tolist() == [[0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0]]


def test_a_csv_of_neither_shape_names_its_header_and_the_setting(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("image,colour,size\nim1.jpg,red,big\n")
    with pytest.raises(DataError, match=r"header image, colour, size fits neither shape: set data.labels_column"):
        read("data=csv", f"data.root={tmp_path}")


def test_missing_images_name_the_file_and_the_setting(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("image,labels\na.jpg,cat\nb.jpg,dog\n")
    index = read("data=csv", f"data.root={tmp_path}")
    assert index.files == ["a.jpg"] and "b.jpg" in index.problems[0] and "data.strict" in index.problems[0]
    with pytest.raises(DataError, match=r"labels.csv: 1 of 2 image\(s\) have no file in .*b.jpg.*data.strict=false"):
        read("data=csv", f"data.root={tmp_path}", "data.strict=true")
    (tmp_path / "labels.csv").write_text("image_name,tags\ntrain_0,cat\n")
    with pytest.raises(DataError, match=r"train_0; tried the name as given and with .jpg.*set data.images_dir"):
        read("data=csv", f"data.root={tmp_path}")


def test_voc_difficult_only_is_unknown(tmp_path):
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / d).mkdir(parents=True)
    objects = {"a": [("cat", 1), ("dog", 0)], "b": [("cat", 1), ("cat", 0)], "c": []}
    for stem, objs in objects.items():
        (tmp_path / "JPEGImages" / f"{stem}.jpg").write_bytes(b"")
        body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objs)
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{body}"
                                                             "</annotation>")
    (tmp_path / "ImageSets/Main/trainval.txt").write_text("a\nb\nc\n")
    (tmp_path / "ImageSets/Main/val.txt").write_text("c\na\n")
    index = read("data=voc", f"data.root={tmp_path}")
    assert index.classes == ["cat", "dog"] and index.files == ["a.jpg", "b.jpg", "c.jpg"]
    assert index.labels.tolist() == [[-1, 1], [1, 0], [0, 0]]
    val = read("data=voc", f"data.root={tmp_path}", "data.voc_split=val")
    assert val.files == ["c.jpg", "a.jpg"] and val.labels.tolist() == [[0, 0], [-1, 1]]


def test_new_settings_are_checked_and_root_is_required():
    with pytest.raises(ConfigError, match=r"data.root=None is invalid: .*data=coco data.root=PATH"):
        validate(compose_cfg("data=coco"))
    with pytest.raises(ConfigError, match=r"data.csv_delimiter=';;' is invalid"):
        validate(compose_cfg("data=csv", "data.root=/x", "data.csv_delimiter=';;'"))


def test_synthetic_command_writes_a_format(tmp_path, capsys, monkeypatch):
    from mlabel_exp.cli import synthetic as synthetic_cli

    monkeypatch.setattr(sys, "argv", ["synthetic", f"out={tmp_path / 'v'}", "num_images=6", "image_size=32",
                                      "format=voc"])
    synthetic_cli.main()
    assert "data=voc" in capsys.readouterr().out
    assert len(read("data=voc", f"data.root={tmp_path / 'v'}")) == 6


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["csv", "coco", "voc"])  # onehot: trained below, with unknown entries
def test_smoke_training_on_every_format(written, tmp_path, fmt):
    from mlabel_exp.experiment.train import train

    best = train(compose_cfg(*tiny_overrides(tmp_path, f"data={FORMATS[fmt]}", f"data.root={written[fmt]}",
                                             f"trainer.output_dir={tmp_path / 'out'}"))).objective
    client, runs = mlflow_runs(tmp_path)
    assert 0.0 <= best <= 1.0 and len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["data.num_images"] == "40"
    params = runs[0].data.params  # a run records its own reader's settings, not the other formats'
    assert ("data.csv_file" in params, "data.annotations_file" in params, "data.voc_split" in params) == \
        (FORMATS[fmt] == "csv", FORMATS[fmt] == "coco", FORMATS[fmt] == "voc")
    recorded = artifact_paths(client, runs[0].info.run_id)
    assert ("data_meta.json" in recorded) == (fmt == "coco") and "unknown_labels.json" not in recorded
    if fmt == "coco":
        meta = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "data_meta.json", str(tmp_path))).read_text())
        assert meta["category_ids"]["circle"] == 1


@pytest.mark.integration
def test_a_one_hot_csv_with_unknown_entries_trains_and_the_run_counts_them(written, tmp_path):
    """-1 and empty cells of a one-hot CSV are unknown: the run trains (a loss that weighs positives), records how
    many per class and split, keeps the -1 in its validation targets and scores known entries only."""
    import csv

    import torch
    from sklearn import metrics as skm

    from mlabel_exp.experiment.train import train

    root = tmp_path / "data"
    shutil.copytree(written["onehot"], root)
    rows = list(csv.reader((root / "labels.csv").open()))
    header, body = rows[0], rows[1:]
    hidden = {"circle": 0, "star": 0}
    for i, row in enumerate(body):
        for c in hidden:
            if i % 3 == 0:  # every third image: this class unknown, as -1 or as an empty cell
                row[header.index(c)] = "-1" if i % 2 else ""
                hidden[c] += 1
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    out = tmp_path / "out"
    best = train(compose_cfg(*tiny_overrides(tmp_path, "data=csv", f"data.root={root}", f"trainer.output_dir={out}",
                                             "loss=bce_balanced"))).objective
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and np.isfinite(best)
    assert run.data.params["data.unknown_labels"] == str(sum(hidden.values()))
    counts = json.loads((out / "unknown_labels.json").read_text())
    assert {c: counts["per_class"].get(c, 0) for c in hidden} == hidden and counts["total"] == sum(hidden.values())
    assert "unknown_labels.json" in artifact_paths(client, run.info.run_id)
    index = read("data=csv", f"data.root={root}")
    rows_of = {f: r for r, f in enumerate(index.files)}
    split = json.loads((out / "split.json").read_text())
    unknown = index.labels == -1
    assert counts["per_split"]["val"] == dict(zip(index.classes, unknown[[rows_of[f] for f in split["val"]]].sum(0)
                                                  .tolist()))
    # the validation targets kept their -1, and the recorded val/mAP counts known entries only (as scikit-learn)
    val = torch.load(out / "checkpoints" / "best.pt", weights_only=True)["val"]
    probs, targets = val["probs"].numpy(), val["targets"].numpy()
    np.testing.assert_array_equal(targets, index.labels[[rows_of[f] for f in val["names"]]])
    assert (targets == -1).any()
    aps = [skm.average_precision_score(targets[k, c], probs[k, c]) for c in range(targets.shape[1])
           for k in [targets[:, c] >= 0] if (targets[k, c] == 1).any()]
    assert run.data.metrics["val/best_mAP"] == pytest.approx(np.mean(aps), abs=1e-5)
    for m in ("train/loss", "val/loss"):
        assert all(np.isfinite(h.value) for h in client.get_metric_history(run.info.run_id, m))


def _csv(root: Path, text: str, images=("a.jpg", "b.jpg", "c.jpg")) -> Path:
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / name).write_bytes(b"")
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


def test_class_names_are_stripped_at_a_separator_typed_in_hydras_quotes(tmp_path):
    _csv(tmp_path, "image,labels\na.jpg,big dog; cat\nb.jpg,cat ;big dog\nc.jpg, red car;cat \n")
    index = read("data=csv", f"data.root={tmp_path}", 'data.label_separator=";"')  # what the shell hands on
    assert index.classes == ["big dog", "cat", "red car"]  # not ' cat', 'cat ', ' red car' beside them
    assert index.labels.tolist() == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]


def test_a_repeated_one_hot_column_is_refused_naming_both_columns(tmp_path):
    path = _csv(tmp_path, "image,circle,square,circle\na.jpg,1,0,0\nb.jpg,0,1,1\n")
    with pytest.raises(DataError, match=rf"^{path}: the header names column 'circle' 2 times \(columns 2 and 4\); "
                                        "a column name must be unique: rename one"):
        read("data=csv", f"data.root={tmp_path}")


ACCEPTED = r"a column per class holds 1 \(positive\), 0 \(negative\), -1 or an empty cell \(unknown\)"


@pytest.mark.parametrize("text, where", [
    ("image,circle\na.jpg,1\nb.jpg,0\nc.jpg,2\n", r":4: column 'circle' holds '2'"),  # not the classes '0', '1', '2'
    ("image,cat,dog\na.jpg,1,0\nb.jpg,yes,1\n", r":3: column 'cat' holds 'yes'"),     # not 'fits neither shape'
])
def test_a_one_hot_cell_outside_1_0_minus_1_or_empty_names_its_line_column_and_value(tmp_path, text, where):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=rf"^{path}{where}; {ACCEPTED} \(set data.labels_column="):
        read("data=csv", f"data.root={tmp_path}")


def test_a_csv_of_neither_shape_names_its_first_bad_cell(tmp_path):
    _csv(tmp_path, "image,colour,size\na.jpg,red,big\n")
    with pytest.raises(DataError, match=r"fits neither shape: .*\(line 2: column 'colour' holds 'red'\)$"):
        read("data=csv", f"data.root={tmp_path}")


@pytest.mark.parametrize("override, text, expected", [
    (None, "image,cat,dog\n", "{path} has a header but no rows: add one line per image below the header (image, cat, "
                              "dog), or set data.csv_file to the labels file"),
    ("data.label_separator=;", "image,labels\n", """data.label_separator=;: Hydra reads ';' only quoted; write """
                                                 """'data.label_separator=";"' (the shell's quotes around Hydra's)"""),
    ("data.label_separator=", "image,labels\n", """data.label_separator='' is invalid: expected a non-empty string """
                                                """such as '|' or ';' (quoted for the shell and Hydra: """
                                                """'data.label_separator=";"'), or null (any of space , ; |)"""),
])
def test_inspect_answers_a_header_only_csv_and_an_unquoted_separator_in_one_line(tmp_path, capsys, override, text,
                                                                                 expected):
    """``data.label_separator=;`` reaches Hydra as typed inside shell quotes or after a backslash, and the shell cuts an
    unquoted one to ``data.label_separator=``: both answer with the form that works."""
    from tests.test_cli import _error

    path = _csv(tmp_path, text)
    args = ["data=csv", f"data.root={tmp_path}", "tracking.enabled=false", f"out={tmp_path / 'out'}"]
    assert _error(capsys, "inspect", *args, *([override] if override else [])) == expected.format(path=path)


@pytest.mark.parametrize("second", ["cat", " cat"])
def test_coco_categories_sharing_a_name_are_refused_naming_both_ids(tmp_path, second):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "category_id": 7}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": second}]}
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'instances.json'}: categories 3 and 7 are both named 'cat'; "
                                        "rename one if they are different classes"):
        read("data=coco", f"data.root={tmp_path}")


def test_a_voc_id_without_its_xml_is_a_missing_annotation_file(tmp_path):
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / d).mkdir(parents=True)
    for stem in ("a", "b"):  # b.jpg is there, its XML is not
        (tmp_path / "JPEGImages" / f"{stem}.jpg").write_bytes(b"")
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    (tmp_path / "ImageSets/Main/trainval.txt").write_text("a\nb\n")
    index = read("data=voc", f"data.root={tmp_path}")
    listing, xml = tmp_path / "ImageSets/Main/trainval.txt", tmp_path / "Annotations" / "b.xml"
    assert index.files == ["a.jpg"] and index.problems == [
        f"{listing}: 1 of 2 listed image id(s) have no annotation file (e.g. {xml}); skipped (set data.strict=true to "
        "stop instead)"]
    with pytest.raises(DataError, match=rf"^{listing}: 1 of 2 listed image id\(s\) have no annotation file \(e.g. "
                                        rf"{xml}\); add the XML files, remove the ids, or set data.strict=false"):
        read("data=voc", f"data.root={tmp_path}", "data.strict=true")


def test_symbolic_link_loops_are_reported_by_every_reader_and_followed_once(tmp_path):
    """A link to itself and a sub-folder linking back above it: reported, never followed forever; a link to a folder
    elsewhere is followed (its images are found)."""
    from mlabel_exp.data.audit import read_for_audit

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.jpg").write_bytes(b"")
    _csv(tmp_path / "csv", "image,labels\na.jpg,cat\nsub/c.jpg,dog\nloop.jpg,cat\n", images=("a.jpg",))
    images = tmp_path / "csv" / "images"
    (images / "loop.jpg").symlink_to("loop.jpg")
    (images / "sub").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "up").symlink_to(images)  # images/sub/up/sub/up/... is a loop
    index = read("data=csv", f"data.root={tmp_path / 'csv'}")
    assert index.files == ["a.jpg", "sub/c.jpg"]
    assert index.problems[0] == (f"2 entries under {images} cannot be read and were skipped: loop.jpg: a symbolic "
                                 f"link loop (-> loop.jpg); sub/up: a symbolic link loop (-> {images}, a folder above "
                                 "it); remove or repair them if images are missing")
    assert "loop.jpg" in index.problems[1] and "have no file" in index.problems[1]
    # the folder format, and what inspect shows of it
    root = write_tree(tmp_path / "folder", [1, 2], {"cat.txt": "1\n2\n3\n"})
    (root / "images" / "im3.jpg").symlink_to("im3.jpg")
    (root / "images" / "im4.jpg").symlink_to("gone.jpg")
    reported = (f"2 symbolic link(s) in {root / 'images'} cannot be followed and were skipped: im3.jpg: a symbolic "
                "link loop (-> im3.jpg); im4.jpg: a symbolic link to a missing target (-> gone.jpg); remove or repair "
                "them")
    assert build_index(root).problems[0] == reported
    _, found = read_for_audit(validate(compose_cfg("data=folder", f"data.root={root}")).data)
    assert reported in [p.message for p in found]
