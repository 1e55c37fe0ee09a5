"""The decoded-image cache and the split pipeline (uint8 in workers, BatchTransform on the device)."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from mlabel_exp.data import cache as image_cache
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.images import BatchTransform, build_transform, image_steps, load_image
from mlabel_exp.errors import DataError
from mlabel_exp.data.loaders import CachedImages, EpochShuffle, MultiLabelImages, collate, make_loader
from tests.conftest import compose_cfg, tiny_overrides


@pytest.fixture
def data_copy(synthetic_root, tmp_path):
    """A private copy of the shared synthetic set (tests here change files)."""
    return shutil.copytree(synthetic_root, tmp_path / "data")


def test_cache_holds_exactly_what_the_per_epoch_pipeline_makes(data_copy, tmp_path):
    index = build_index(data_copy)
    cache = image_cache.open_or_build(index, 40, tmp_path / "cache")
    assert cache.array.shape == (len(index), 3, 40, 40) and cache.array.dtype == np.uint8
    steps = image_steps(40)
    for r in (0, 7, len(index) - 1):
        assert np.array_equal(cache.array[r], steps(load_image(index.paths([r])[0])).numpy())


def test_batch_transform_matches_torchvisions_own_transforms(synthetic_root):
    """An independent reference: torchvision's resize, scale-to-float and normalise, one image at a time."""
    from torchvision.transforms import v2

    index = build_index(synthetic_root)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    images = [load_image(p) for p in index.paths(range(6))]
    reference = v2.Compose([v2.PILToTensor(), v2.Resize((48, 48), antialias=True), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(mean), list(std))])
    expected = torch.stack([reference(im) for im in images])
    assert torch.allclose(torch.stack([build_transform(48, mean, std)(im) for im in images]), expected, atol=1e-6)
    uint8 = torch.stack([image_steps(48)(im) for im in images])
    got = BatchTransform(48, mean, std, hflip=True)(uint8, train=False)  # no flips outside training
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
    # a batch kept at another size (data.decoded_cache_size) is resized to the model's input on the device
    small = torch.stack([image_steps(24)(im) for im in images])
    assert BatchTransform(48, mean, std)(small).shape == (6, 3, 48, 48)


def test_flips_are_a_function_of_seed_and_epoch():
    x = torch.arange(2 * 64 * 3 * 4 * 5, dtype=torch.float32).reshape(128, 3, 4, 5).to(torch.uint8)
    t = BatchTransform(5, (0.0,) * 3, (1.0,) * 3, hflip=True, seed=1)
    t.set_epoch(3)
    a = t(x, train=True)
    t.set_epoch(3)
    assert torch.equal(t(x, train=True), a)  # a resumed epoch flips the same images
    t.set_epoch(4)
    assert not torch.equal(t(x, train=True), a)
    plain = t(x, train=False)
    flipped = [i for i in range(len(x)) if not torch.equal(a[i], plain[i])]
    assert all(torch.equal(a[i], plain[i].flip(-1)) for i in flipped)
    assert 32 < len(flipped) < 96  # about half of 128
    t.set_epoch(5)
    masks = [[not torch.equal(o, p) for o, p in zip(t(x[:64], train=True), plain[:64])] for _ in range(2)]
    assert masks[0] != masks[1]  # the next batch of the epoch draws new flips


def test_cache_is_reused_and_rebuilt_when_an_image_changes(data_copy, tmp_path, monkeypatch):
    index = build_index(data_copy)
    stale = tmp_path / "cache" / "decoded" / f".{image_cache.fingerprint(index, 32)}.tmp-99999.npy"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed build")
    first = image_cache.open_or_build(index, 32, tmp_path / "cache")
    left = {p.name for p in first.path.parent.iterdir() if not p.name.endswith(".lock")}
    assert not stale.exists() and left == {first.path.name, first.path.with_suffix(".json").name}
    monkeypatch.setattr(image_cache, "_build", lambda *a: pytest.fail("rebuilt an unchanged cache"))
    assert image_cache.open_or_build(index, 32, tmp_path / "cache").path == first.path
    monkeypatch.undo()

    victim = index.paths([5])[0]
    with open(victim, "wb") as f:  # new content: a white image
        from PIL import Image

        Image.new("RGB", (64, 64), "white").save(f, "JPEG")
    os.utime(victim, ns=(1, 1))
    index = build_index(data_copy)
    second = image_cache.open_or_build(index, 32, tmp_path / "cache")
    assert second.path != first.path
    assert second.array[5].min() >= 250 and np.array_equal(second.array[4], first.array[4])
    assert image_cache.open_or_build(index, 24, tmp_path / "cache").path not in (first.path, second.path)  # size in key


def test_content_hashes_are_read_once_and_follow_every_changed_file(data_copy, tmp_path, monkeypatch):
    import hashlib

    index = build_index(data_copy)
    first = image_cache.content_hashes(index, tmp_path / "cache")
    assert [row.tobytes() for row in first] == [hashlib.blake2b(p.read_bytes(), digest_size=16).digest()
                                                for p in index.paths()]
    monkeypatch.setattr(hashlib, "blake2b", lambda *a, **k: pytest.fail("hashed an unchanged file again"))
    assert np.array_equal(image_cache.content_hashes(index, tmp_path / "cache"), first)
    monkeypatch.undo()

    victim = index.paths([5])[0]  # one byte flipped: the same size, and the same modification time put back
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = image_cache.content_hashes(index, tmp_path / "cache")
    assert [r for r in range(len(index)) if not np.array_equal(first[r], second[r])] == [5]
    assert second[5].tobytes() == hashlib.blake2b(bytes(data), digest_size=16).digest()


def test_unreadable_image_is_skipped_and_reported_or_an_error(data_copy, tmp_path):
    index = build_index(data_copy)
    bad = index.paths([2])[0]
    bad.write_bytes(b"not a jpeg")
    cache = image_cache.open_or_build(index, 16, tmp_path / "cache")
    assert list(cache.bad) == [2] and "UnidentifiedImageError" in cache.bad[2]
    ds = CachedImages.from_index(cache, index, range(5))
    batch = collate(ds.__getitems__([0, 1, 2, 3]))
    assert batch["name"] == [index.files[r] for r in (0, 1, 3)] and batch["image"].shape == (3, 3, 16, 16)
    assert [name for name, _ in batch["bad"]] == [bad.name]
    assert torch.equal(batch["target"], torch.from_numpy(index.labels[[0, 1, 3]]).float())

    from mlabel_exp.data.loaders import decoded_cache
    from mlabel_exp.config import validate

    cfg = validate(compose_cfg(*tiny_overrides(tmp_path), "data=folder", f"data.root={data_copy}", "data.decoded_cache=on",
                               "data.decoded_cache_size=16", "data.on_bad_image=error"))
    with pytest.raises(DataError, match=rf"{bad.name}.*data.on_bad_image=skip"):
        decoded_cache(cfg, index)


def test_no_room_on_disk(data_copy, tmp_path, monkeypatch, caplog):
    index = build_index(data_copy)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    assert image_cache.open_or_build(index, 32, tmp_path / "cache") is None
    assert "data.decoded_cache=off" in caplog.text
    with pytest.raises(DataError, match="data.cache_dir"):
        image_cache.open_or_build(index, 32, tmp_path / "cache", required=True)
    assert not list((tmp_path / "cache" / "decoded").glob("*.npy"))
    pays, why = image_cache.pays_off(len(index), 32, epochs=5, cache_dir=tmp_path / "cache")
    assert not pays and "free disk" in why
    assert not image_cache.pays_off(len(index), 32, epochs=1, cache_dir=tmp_path)[0]


def test_workers_map_the_cache_instead_of_receiving_it(data_copy, tmp_path):
    index = build_index(data_copy)
    cache = image_cache.open_or_build(index, 64, tmp_path / "cache")
    cache.array.sum()  # opened in this process
    assert len(pickle.dumps(cache)) < 10_000  # the path, not the 3.5 MB of pixels
    ds = CachedImages.from_index(cache, index, range(len(index)))
    loader = make_loader(ds, 16, shuffle=False, num_workers=2, persistent=True)
    names = [n for b in loader for n in b["name"]]
    assert names == index.files


def test_epoch_order_is_the_same_with_persistent_workers_and_after_a_restart(synthetic_root):
    """Resuming at epoch 3 must see epoch 3's order, although an uninterrupted run's workers live on."""
    index = build_index(synthetic_root)
    ds = MultiLabelImages.from_index(index, range(40), image_steps(8))

    def order(loader, epoch):
        loader.sampler.set_epoch(epoch)
        loader.generator.manual_seed(epoch)
        return [n for b in loader for n in b["name"]]

    kept = make_loader(ds, 8, shuffle=True, num_workers=2, seed=5, persistent=True)
    through = [order(kept, e) for e in (1, 2, 3)]
    restarted = make_loader(ds, 8, shuffle=True, num_workers=2, seed=5, persistent=True)
    assert order(restarted, 3) == through[2]
    assert through[0] != through[1] and sorted(through[0]) == sorted(index.files[:40])
    assert list(EpochShuffle(40, 5)) != list(EpochShuffle(40, 6))


@pytest.mark.precision
@pytest.mark.integration
def test_training_with_and_without_the_cache_is_identical(tmp_path):
    """The cache changes where pixels come from, not which: same seed, same losses and metrics on CPU."""
    from mlabel_exp.experiment.train import train
    from tests.conftest import mlflow_runs

    scores = []
    for mode in ("on", "off"):
        cfg = compose_cfg(*tiny_overrides(tmp_path, f"data.decoded_cache={mode}", "trainer.epochs=3",
                                          f"trainer.output_dir={tmp_path / mode}", "trainer.checkpoint=false"))
        scores.append(train(cfg).objective)
    client, runs = mlflow_runs(tmp_path)
    by_mode = {r.data.params["data.decoded_cache_used"]: r for r in runs}
    assert set(by_mode) == {"True", "False"}
    history = {m: [x.value for x in client.get_metric_history(r.info.run_id, "train/loss")] for m, r in by_mode.items()}
    assert len(history["True"]) == 3 and history["True"] == history["False"]
    assert scores[0] == scores[1]
