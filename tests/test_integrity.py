"""Numbers a user reads stay true: no stale pixels, one grey per value, settings checked before any work,
no unscored validation, a corrupt checkpoint named."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mlabel_exp.data import cache as image_cache
from mlabel_exp.config import validate
from mlabel_exp.errors import ConfigError
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.images import to_rgb
from mlabel_exp.errors import DataError
from mlabel_exp.data.loaders import check_validation_images
from tests.conftest import compose_cfg, tiny_overrides, write_tree


def test_two_roots_with_same_names_sizes_and_times_get_their_own_pixels(tmp_path):
    """Fixed-size BMPs, red in one root and blue in a copy that keeps names, sizes and times (as cp -p, rsync -a or
    tar x leave them): each root is served its own pixels."""
    red = write_tree(tmp_path / "red", [1, 2], {"a.txt": "1\n"})
    for i in (1, 2):
        (red / "images" / f"im{i}.jpg").unlink()
        Image.new("RGB", (8, 8), (255, 0, 0)).save(red / "images" / f"im{i}.bmp")
    blue = tmp_path / "blue"
    shutil.copytree(red, blue, copy_function=shutil.copy2)
    for i in (1, 2):
        path = blue / "images" / f"im{i}.bmp"
        st = path.stat()
        Image.new("RGB", (8, 8), (0, 0, 255)).save(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    cache_dir = tmp_path / "cache"
    pixels = {}
    for name, root in (("red", red), ("blue", blue)):
        index = build_index(root, "im{id}.bmp")
        pixels[name] = image_cache.open_or_build(index, 8, cache_dir).array[:, :, 0, 0]
    assert pixels["red"].tolist() == [[255, 0, 0]] * 2 and pixels["blue"].tolist() == [[0, 0, 255]] * 2


def test_integer_images_are_scaled_by_bit_depth_not_by_their_own_maximum():
    grey = [int(np.asarray(to_rgb(Image.fromarray(np.array([[200, top]], dtype=np.int32))))[0, 0, 0]) for top in (200, 300)]
    assert grey[0] == grey[1]  # the value 200 is one grey whatever else the image holds


@pytest.mark.parametrize("override,message", [
    ("seed=-1", r"^seed=-1 is invalid"),
    ("data.split_seed=-2", r"^data.split_seed=-2 is invalid"),
    ("+trainer.epochz=3", r"trainer.epochz is not a setting \(did you mean trainer.epochs\?\)"),
    ("+foo=1", r"^foo is not a setting"),
    ("trainer.device=cuda:x", r"^trainer.device='cuda:x' is invalid: expected auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_settings_are_named_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(override))
    validate(compose_cfg("trainer.device=cuda:1"))  # a device index is a valid setting (checked when used)


def test_a_validation_set_without_readable_images_stops_before_training(tmp_path):
    root = write_tree(tmp_path / "d", [1, 2, 3], {"a.txt": "1\n2\n"})
    index = build_index(root)
    with pytest.raises(DataError, match="validation split is empty"):
        check_validation_images(index, {"train": np.arange(3), "val": np.arange(0)})
    for f in (root / "images").iterdir():
        f.write_bytes(b"not an image")
    cache = image_cache.open_or_build(build_index(root), 8, tmp_path / "cache")
    with pytest.raises(DataError, match="all 2 validation images are unreadable"):
        check_validation_images(index, {"train": np.arange(1), "val": np.arange(1, 3)}, cache)


@pytest.mark.integration
def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path):
    from mlabel_exp.experiment.train import train
    from tests.conftest import mlflow_runs

    out = tmp_path / "out"
    cfg = compose_cfg(*tiny_overrides(tmp_path, f"trainer.output_dir={out}"))
    train(cfg)
    client, (run,) = mlflow_runs(tmp_path)
    client.set_terminated(run.info.run_id, "KILLED")  # as if it had been interrupted
    (out / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match=r"last\.pt cannot be read as a checkpoint"):
        train(compose_cfg(*tiny_overrides(tmp_path, "resume=latest")))
