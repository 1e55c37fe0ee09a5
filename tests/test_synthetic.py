import hashlib
import re
import sys

from PIL import Image

from mlabel_exp.data import synthetic
from mlabel_exp.cli import synthetic as synthetic_cli
from mlabel_exp.data.synthetic import PREVALENCE, SyntheticSpec, ensure_generated, generate


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_parameters_give_byte_identical_files(tmp_path):
    spec = SyntheticSpec(num_images=40, image_size=48, seed=7)
    assert _digest(generate(tmp_path / "a", spec)) == _digest(generate(tmp_path / "b", spec))
    assert _digest(generate(tmp_path / "c", SyntheticSpec(40, 48, seed=8))) != _digest(tmp_path / "a")


def test_real_on_disk_format(synthetic_root):
    images = sorted(p.name for p in (synthetic_root / "images").iterdir())
    assert images == sorted(f"im{i}.jpg" for i in range(1, 301))
    ann = sorted(p.name for p in (synthetic_root / "annotations").iterdir())
    assert ann == sorted(f"{c}.txt" for c in PREVALENCE) and len(ann) == 14
    for p in (synthetic_root / "annotations").iterdir():
        for line in p.read_text().splitlines():
            assert re.fullmatch(r"[1-9][0-9]*", line) and 1 <= int(line) <= 300
    with Image.open(synthetic_root / "images" / "im1.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_label_distribution_is_imbalanced_with_unlabeled_and_grayscale(tmp_path):
    from mlabel_exp.data.formats.folder import build_index

    root = generate(tmp_path / "d", SyntheticSpec(num_images=1500, image_size=32, seed=0))
    index = build_index(root)
    share = index.labels.mean(0)
    assert share.max() > 0.25 and share.min() < 0.02 and share.min() > 0
    assert 0.3 < (index.labels.sum(1) == 0).mean() < 0.6
    modes = [Image.open(p).mode for p in index.paths()]
    assert 0 < modes.count("L") < 0.1 * len(modes)
    assert index.labels.sum(1).max() <= SyntheticSpec().max_objects


def test_cache_generates_once_and_is_keyed_by_parameters(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda root, spec: calls.append(spec) or real(root, spec))
    a = ensure_generated(tmp_path, SyntheticSpec(num_images=5, image_size=32))
    assert ensure_generated(tmp_path, SyntheticSpec(num_images=5, image_size=32)) == a
    b = ensure_generated(tmp_path, SyntheticSpec(num_images=6, image_size=32))
    assert a != b and len(calls) == 2
    assert not [p for p in a.parent.iterdir() if ".tmp-" in p.name]


def test_cli_writes_the_layout_and_refuses_an_existing_data_set(tmp_path, capsys):
    import pytest

    def command(*args):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["synthetic", *args])
            synthetic_cli.main()

    command(f"out={tmp_path / 's'}", "num_images=12", "image_size=32")
    assert len(list((tmp_path / "s" / "images").iterdir())) == 12
    assert "wrote 12 images and 14 annotation files" in capsys.readouterr().out
    for args, expected in (([f"out={tmp_path / 's'}", "num_images=3"], "already holds images/ or annotations/"),
                           ([f"out={tmp_path / 't'}", "image_size=8"], "image_size=8 is invalid: expected an integer >= 16"),
                           (["num_images=3"], "out is required: give out=..."),
                           ([f"out={tmp_path / 't'}", "--num-images", "3"], "here num_images=3")):
        with pytest.raises(SystemExit) as e:
            command(*args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1, err
