import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.errors import DataError
from tests.conftest import brute_force_labels


def test_classes_sorted_and_multi_hot_matches_brute_force(synthetic_root):
    index = build_index(synthetic_root)
    assert index.classes == sorted(p.stem for p in (synthetic_root / "annotations").glob("*.txt"))
    assert len(index.classes) == 14
    assert list(index.ids) == list(range(1, 301))
    np.testing.assert_array_equal(index.labels, brute_force_labels(synthetic_root, index.classes, index.ids))


def test_unlabeled_images_are_kept_with_zero_target(tree):
    root = tree([1, 2, 3, 4], {"cat.txt": "1\n3\n", "dog.txt": "3\n"})
    index = build_index(root)
    assert list(index.ids) == [1, 2, 3, 4]
    assert index.labels.tolist() == [[1, 0], [0, 0], [1, 1], [0, 0]]
    assert index.files == ["im1.jpg", "im2.jpg", "im3.jpg", "im4.jpg"]


def test_blank_lines_spaces_crlf_and_duplicates_accepted(tree):
    root = tree([1, 2, 3], {"cat.txt": b"\xef\xbb\xbf 1 \r\n\r\n2\r\n2\r\n  \r\n", "dog.txt": "3"})
    index = build_index(root)
    assert index.labels[:, 0].tolist() == [1, 1, 0]
    assert index.labels[:, 1].tolist() == [0, 0, 1]


@pytest.mark.parametrize("bad", ["abc", "-3", "0", "1.5", "4 5"])
def test_bad_annotation_line_names_file_and_line(tree, bad):
    root = tree([1, 2], {"cat.txt": f"1\n\n{bad}\n"})
    with pytest.raises(DataError, match=r"cat\.txt:3: .* is not a positive image number"):
        build_index(root)


def test_missing_image_files_warn_once_with_count_or_fail_when_strict(tree, caplog):
    root = tree([1, 2], {"cat.txt": "1\n7\n9\n", "dog.txt": "8\n"})
    with caplog.at_level(logging.WARNING):
        index = build_index(root)
    assert index.labels[:, 0].tolist() == [1, 0]
    warnings = [r.message for r in caplog.records if "have no file" in r.message]
    assert len(warnings) == 1 and warnings[0].startswith("3 annotated image(s)") and "im7.jpg" in warnings[0]
    with pytest.raises(DataError, match="3 annotated image.*data.strict=false"):
        build_index(root, strict=True)


def test_empty_annotation_file_keeps_class_with_warning(tree, caplog):
    root = tree([1, 2], {"cat.txt": "1\n", "emu.txt": ""})
    with caplog.at_level(logging.WARNING):
        index = build_index(root)
    assert index.classes == ["cat", "emu"]
    assert index.labels[:, 1].sum() == 0
    assert any("emu.txt: empty annotation file" in r.message for r in caplog.records)


def test_non_txt_files_in_annotations_are_ignored(tree):
    root = tree([1], {"cat.txt": "1\n", "README.md": "notes", "dog.txt.bak": "x", ".DS_Store": "junk"})
    assert build_index(root).classes == ["cat"]


@pytest.mark.parametrize("remove,expected", [("images", r"no images/"), ("annotations", r"no annotations/")])
def test_missing_layout_folder_is_named(tree, remove, expected):
    import shutil

    root = tree([1], {"cat.txt": "1\n"})
    shutil.rmtree(root / remove)
    with pytest.raises(DataError, match=expected + r".*expected the layout"):
        build_index(root)


def test_zero_usable_images_is_an_error(tree):
    root = tree([], {"cat.txt": "1\n"})
    (root / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no usable images"):
        build_index(root)


def test_image_pattern_is_configurable(tree):
    root = tree([], {"cat.txt": "5\n"})
    from PIL import Image

    Image.new("RGB", (4, 4)).save(root / "images" / "photo_5.png")
    Image.new("RGB", (4, 4)).save(root / "images" / "photo_6.png")
    index = build_index(root, image_pattern="photo_{id}.png")
    assert index.files == ["photo_5.png", "photo_6.png"] and index.labels[:, 0].tolist() == [1, 0]
    with pytest.raises(DataError, match="must contain"):
        build_index(root, image_pattern="photo.png")


def test_class_order_and_labels_stable_across_hash_seeds(synthetic_root):
    code = ("import sys,hashlib; from mlabel_exp.data.formats.folder import build_index; i=build_index(sys.argv[1]); "
            "print(i.classes, hashlib.sha1(i.labels.tobytes()).hexdigest())")
    outs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code, str(synthetic_root)], env=env,
                                capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1


def test_index_reports_what_it_leaves_out_and_reads_only_ascii_numbers(tree):
    root = tree([1, 2, 7], {"dog.txt": "1\n7\n", ".hidden.txt": "2\n", "Dog.TXT": "2\n"})
    images = root / "images"
    (images / "im007.jpg").write_bytes((images / "im7.jpg").read_bytes())   # the number 7 twice
    (images / "im61.JPG").write_bytes(b"x")                                  # not the pattern's case
    (images / "im62.jpeg").write_bytes(b"x")
    (images / ".DS_Store").write_bytes(b"x")
    index = build_index(root)
    assert index.classes == ["dog"] and index.files == ["im1.jpg", "im2.jpg", "im007.jpg"]  # first in name order
    text = " | ".join(index.problems)
    assert "2 file(s) in" in text and "do not match data.image_pattern='im{id}.jpg'" in text and "im61.JPG" in text
    assert "1 file(s) in" in text and "repeat an image number" in text and "im7.jpg (number 7, as im007.jpg)" in text
    assert "Dog.TXT" in text and ".hidden" not in text and ".DS_Store" not in text
    for bad, shown in (("²\n", "'²'"), ("٣\n", "'٣'")):
        (root / "annotations" / "dog.txt").write_text("1\n" + bad, encoding="utf-8")
        with pytest.raises(DataError, match=rf"dog\.txt:2: {shown} is not a positive image number"):
            build_index(root)
