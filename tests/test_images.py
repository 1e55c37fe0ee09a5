import numpy as np
import pytest
import torch
from PIL import Image

from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.images import build_transform, load_image, to_rgb
from mlabel_exp.data.loaders import MultiLabelImages


def _modes():
    rgb = Image.new("RGB", (6, 4), (200, 100, 50))
    p_transparent = Image.new("P", (6, 4), 3)
    p_transparent.info["transparency"] = 3
    return {
        "L": Image.new("L", (6, 4), 128),
        "LA": Image.new("LA", (6, 4), (128, 255)),
        "P": rgb.convert("P"),
        "P+transparency": p_transparent,
        "RGBA": Image.new("RGBA", (6, 4), (200, 100, 50, 128)),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)),
        "I": Image.fromarray(np.full((4, 6), 1000, dtype=np.int32)),
        "F": Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32)),
        "1": Image.new("1", (6, 4), 1),
    }


@pytest.mark.parametrize("name,img", list(_modes().items()))
def test_every_mode_becomes_8bit_rgb_of_the_same_size(name, img):
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (6, 4)


def test_16_bit_images_are_rescaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(arr)))
    assert out[0, :, 0].tolist() == [0, 127, 255]


@pytest.mark.parametrize("fmt,mode", [("PNG", "I;16"), ("TIFF", "CMYK"), ("JPEG", "CMYK"), ("PNG", "P"),
                                      ("PNG", "LA"), ("JPEG", "L")])
def test_files_of_every_mode_load_as_rgb(tmp_path, fmt, mode):
    img = Image.new("RGB", (10, 10), (10, 200, 30)).convert("RGBA" if mode == "LA" else "RGB")
    img = Image.fromarray(np.full((10, 10), 4000, np.uint16)) if mode == "I;16" else img.convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    assert load_image(path).mode == "RGB"


def test_dataset_returns_normalised_image_and_float_multi_hot(synthetic_root):
    index = build_index(synthetic_root)
    rows = [0, 5, 9]
    ds = MultiLabelImages.from_index(index, rows, build_transform(40, mean=(0.5,) * 3, std=(0.25,) * 3))
    item = ds[1]
    image, target = item["image"], item["target"]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and target.tolist() == index.labels[5].astype(float).tolist()
    assert -2.1 <= image.min() and image.max() <= 2.1  # (x - 0.5) / 0.25 for x in [0, 1]
    assert ds[2]["name"] == index.files[9]
    unlabeled = MultiLabelImages(index.paths(rows), None, build_transform(40))
    assert unlabeled[0]["name"] == "im1.jpg" and "target" not in unlabeled[0]


def test_train_augmentation_is_random_but_eval_is_deterministic(synthetic_root):
    img = load_image(synthetic_root / "images" / "im2.jpg")
    train = build_transform(48, train=True, random_resized_crop=True, crop_scale_min=0.3, hflip=True)
    evaluate = build_transform(48)
    torch.manual_seed(0)
    outs = [train(img) for _ in range(4)]
    assert all(o.shape == (3, 48, 48) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(evaluate(img), evaluate(img))


def test_dataloader_batches_with_workers(synthetic_root):
    from torch.utils.data import DataLoader

    index = build_index(synthetic_root)
    ds = MultiLabelImages.from_index(index, range(10), build_transform(32))
    from mlabel_exp.data.loaders import make_loader

    batch = next(iter(make_loader(ds, 4, shuffle=True, num_workers=2)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["target"].shape == (4, 14) and batch["bad"] == []


def _bad_files(folder):
    """Every kind of bad image file a hand-assembled folder holds."""
    good = folder / "good.jpg"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(good)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:120])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a jpeg")
    return [good, folder / "truncated.jpg", folder / "empty.jpg", folder / "text.jpg"]


def test_bad_images_are_skipped_and_reported_in_the_batch(tmp_path):
    from mlabel_exp.data.loaders import make_loader

    paths = _bad_files(tmp_path)
    ds = MultiLabelImages(paths, np.zeros((4, 2)), build_transform(16))
    batch = next(iter(make_loader(ds, 4, shuffle=False, num_workers=0)))
    assert batch["name"] == ["good.jpg"] and batch["image"].shape[0] == 1
    assert sorted(n for n, _ in batch["bad"]) == ["empty.jpg", "text.jpg", "truncated.jpg"]
    only_bad = next(iter(make_loader(MultiLabelImages(paths[1:], None, build_transform(16)), 3, shuffle=False,
                                     num_workers=0)))
    assert only_bad["image"] is None and len(only_bad["bad"]) == 3


def test_on_bad_image_error_names_the_file(tmp_path):
    from mlabel_exp.errors import DataError

    paths = _bad_files(tmp_path)
    ds = MultiLabelImages(paths, None, build_transform(16), on_bad_image="error")
    with pytest.raises(DataError, match=r"truncated\.jpg: unreadable image.*data\.on_bad_image=skip"):
        ds[1]


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")  # 400 pixels > 100: Pillow would only warn
    ds = MultiLabelImages([tmp_path / "big.png"], None, build_transform(8))
    assert ds[0].error.startswith("ImageTooLarge: ") and "PIL.Image.MAX_IMAGE_PIXELS" in ds[0].error


# ------------------------------------------------------------------ TIFF

def _tiff_cases():
    """name -> (file bytes, the 8-bit RGB pixels expected): 8-bit RGB and grey through Pillow's own TIFF writer, 16-bit
    grey through mode I;16, 16-bit RGB by hand (Pillow writes none). 16-bit samples become 8 bits by the bit depth:
    grey as v / 257 rounded down (to_rgb), RGB as the high byte (Pillow's RGB;16 unpacking): a sample of 65535 is 255
    both ways, 30000 is 116 or 117."""
    import io

    from tests.conftest import raw_tiff

    def pillow(img, **kw):
        data = io.BytesIO()
        img.save(data, "TIFF", **kw)
        return data.getvalue()

    grey16 = np.array([[0, 30000, 65535]], dtype=np.uint16)
    rgb16 = np.array([[[65535, 30000, 0], [257, 512, 40000], [0, 0, 0]]], dtype=np.uint16)
    rgb8 = np.array([[[200, 10, 30], [0, 255, 7], [1, 2, 3]]], dtype=np.uint8)
    return {
        "RGB 8-bit": (pillow(Image.fromarray(rgb8)), rgb8),
        "RGB 8-bit LZW": (pillow(Image.fromarray(rgb8), compression="tiff_lzw"), rgb8),
        "grey 8-bit": (pillow(Image.fromarray(rgb8[..., 0])), np.repeat(rgb8[..., :1], 3, axis=2)),
        "grey 16-bit (I;16)": (pillow(Image.fromarray(grey16)), np.repeat((grey16 // 257)[..., None], 3, axis=2)),
        "RGB 16-bit": (raw_tiff(rgb16, photometric=2), (rgb16 >> 8).astype(np.uint8)),
        "RGB 8-bit with alpha": (raw_tiff(np.dstack([rgb8, np.full(rgb8.shape[:2], 255, np.uint8)]), 2, (2,)), rgb8),
    }


@pytest.mark.parametrize("name", list(_tiff_cases()))
def test_tiff_images_load_as_the_rgb_they_hold(tmp_path, name):
    """Read from a .tif file and from its bytes (the pyfunc model's way), through the one decoder."""
    data, expected = _tiff_cases()[name]
    (tmp_path / "x.tif").write_bytes(data)
    for source in (tmp_path / "x.tif", data):
        image = load_image(source)
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)


@pytest.mark.parametrize("bands,photometric,extra", [(5, 1, ()), (4, 1, ()), (2, 1, ()), (5, 2, (0, 0)), (4, 2, (0,))])
def test_a_multi_band_tiff_is_refused_in_one_line_naming_its_bands(tmp_path, bands, photometric, extra):
    """A multispectral stack Pillow cannot open (grey photometric), and one it would read as its first three bands
    without a word (RGB photometric with unspecified extra bands): both refused, naming the bands and the fix; a
    loader skips the file with that reason."""
    from mlabel_exp.errors import UnsupportedImage
    from tests.conftest import raw_tiff

    path = tmp_path / "stack.tif"
    path.write_bytes(raw_tiff(np.full((4, 5, bands), 7, np.uint8), photometric, extra))
    with pytest.raises(UnsupportedImage, match=rf"^a TIFF of {bands} bands \(8-bit\): only greyscale .*RGB TIFF") as e:
        load_image(path)
    assert "\n" not in str(e.value)
    ds = MultiLabelImages([path], None, build_transform(8))
    assert ds[0].error.startswith(f"UnsupportedImage: a TIFF of {bands} bands")


def test_a_truncated_tiff_is_called_damaged_not_given_a_format_fix(tmp_path):
    from mlabel_exp.errors import UnsupportedImage
    from tests.conftest import raw_tiff

    whole = raw_tiff(np.full((4, 5, 5), 7, np.uint8), 1, ())
    path = tmp_path / "cut.tif"
    path.write_bytes(whole[:12])  # the header and the start of the first directory: cut while copying
    with pytest.raises(UnsupportedImage, match=r"^a truncated or damaged TIFF .*: copy or export it again$"):
        load_image(path)


def test_tiff_files_are_found_by_name_without_extension_and_audited(tmp_path):
    """A CSV naming images without extension finds .tif and .tiff files; the audit reads their headers (a 16-bit grey
    one is counted grey) and lists a multi-band one with the reason."""
    from mlabel_exp.config import validate
    from mlabel_exp.data.audit import audit
    from mlabel_exp.data.formats import index_from_config
    from tests.conftest import compose_cfg, raw_tiff

    (tmp_path / "images").mkdir()
    Image.new("RGB", (6, 4), (1, 2, 3)).save(tmp_path / "images" / "a.tif")
    Image.fromarray(np.full((4, 6), 4000, np.uint16)).save(tmp_path / "images" / "b.tiff")
    (tmp_path / "images" / "c.tif").write_bytes(raw_tiff(np.zeros((4, 6, 5), np.uint8), 1))
    (tmp_path / "labels.csv").write_text("image,tags\na,x\nb,y\nc,x y\n")
    index = index_from_config(validate(compose_cfg("data=csv", f"data.root={tmp_path}")).data)
    assert index.files == ["a.tif", "b.tiff", "c.tif"]
    report = audit(index)
    assert report.summary["grayscale images"] == 1 and sum(report.image_modes.values()) == 2
    assert [p.where for p in report.findings if p.kind == "unreadable image"] == [str(tmp_path / "images" / "c.tif")]
