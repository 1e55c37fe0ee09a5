import numpy as np
import pytest
import torch
from PIL import Image

from mlabel_exp.data import MultiLabelImages, build_index, build_transform, load_image, to_rgb


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
    image, target = ds[1]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and target.tolist() == index.labels[5].astype(float).tolist()
    assert -2.1 <= image.min() and image.max() <= 2.1  # (x - 0.5) / 0.25 for x in [0, 1]
    named = MultiLabelImages.from_index(index, rows, build_transform(40), with_names=True)
    assert named[2][2] == index.files[9]
    unlabeled = MultiLabelImages(index.paths(rows), None, build_transform(40))
    assert unlabeled[0][1] == "im1.jpg"


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
    x, y = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 14)
