"""Decoding images (one decoder for training, the cache, predict and pyfunc) and the transforms to the model's input:
per image in the DataLoader workers (``image_steps``), per batch on the device (``BatchTransform``)."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlabel_exp.config import IMAGENET_MEAN, IMAGENET_STD
from mlabel_exp.errors import ImageTooLarge, UnsupportedImage
from mlabel_exp.fsutil import epoch_seed


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB; 16-bit and float images are rescaled, not clipped to white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F":  # by the bit depth, never by the image's own maximum: one value, one grey everywhere
            arr = arr / 257.0  # 16-bit samples (Pillow opens 16-bit PNG and TIFF as I;16 or I) to 8 bits
        elif arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")



#: Colour samples per pixel of a TIFF's photometric interpretation (tag 262): grey, palette, RGB, CMYK, YCbCr, Lab.
TIFF_COLOUR_SAMPLES = {0: 1, 1: 1, 2: 3, 3: 1, 5: 4, 6: 3, 8: 3}
TIFF_MULTIBAND_FIX = ("only greyscale (1 band) and RGB (3 bands, a 4th if it is alpha) images are read: write the 3 "
                      "bands to train on as an 8- or 16-bit RGB TIFF (e.g. gdal_translate -b 1 -b 2 -b 3 in.tif "
                      "out.tif, the bands in R, G, B order)")


def _tiff_bands(tags) -> str | None:
    """Why a TIFF's tags (SamplesPerPixel 277, BitsPerSample 258, Photometric 262, ExtraSamples 338) describe more
    bands than an image has colours (a multispectral or multi-channel stack: Pillow reads such a file as its first
    three bands, or not at all); None for grey, RGB, CMYK and the like, with or without alpha."""
    samples = int(tags.get(277, 1))
    alpha = sum(1 for e in (tags.get(338) or ()) if e in (1, 2))  # associated or unassociated alpha
    if samples - alpha <= TIFF_COLOUR_SAMPLES.get(tags.get(262, 1), 1):
        return None
    bits = tags.get(258) or (1,)
    return f"a TIFF of {samples} bands ({bits[0]}-bit): {TIFF_MULTIBAND_FIX}"


def _unsupported_tiff(source) -> str | None:
    """Why a file Pillow cannot identify is a TIFF it cannot use (its first directory's band count), if it is one."""
    from PIL import TiffImagePlugin

    with (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")) as fp:
        head = fp.read(8)
        if head[:4] not in (b"II*\0", b"MM\0*"):
            return None
        tags = TiffImagePlugin.ImageFileDirectory_v2(head)
        try:
            fp.seek(tags.next)
            tags.load(fp)
        except (OSError, ValueError, struct.error):
            tags = {}
        if tags.get(258) is None and tags.get(262) is None:  # no bit depth, no colour model: the file is cut or damaged
            return "a truncated or damaged TIFF (its first directory cannot be read): copy or export it again"
        return _tiff_bands(tags) or f"a TIFF that Pillow cannot decode (BitsPerSample {tags.get(258)}, " \
            f"Photometric {tags.get(262)}): save it as an 8- or 16-bit RGB or greyscale TIFF, or a PNG"


def open_image(source: str | Path | bytes) -> Image.Image:
    """An image file (a path, or its bytes) opened from its header only, refused when its width x height exceeds
    PIL.Image.MAX_IMAGE_PIXELS (Pillow's limit, about 89 million: a 9459 px square, 268 MB as RGB; raise it there,
    or set it to None for no limit), or when it is a TIFF of more bands than RGB or greyscale (UnsupportedImage, one
    line with the fix). Pillow itself only warns up to twice its limit, and decodes: a PNG of a few KB and 12000 x
    12000 px would become 432 MB of RGB. Closing it is the caller's (``with open_image(...) as im``)."""
    fix = "refused before decoding; shrink the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
    with warnings.catch_warnings():  # our own error below says it; Pillow's warning would repeat it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses too
            raise ImageTooLarge(f"{str(e).rstrip('.')}: {fix}") from None
        except UnidentifiedImageError:
            why = _unsupported_tiff(source)
            if why:
                raise UnsupportedImage(why) from None
            raise
    limit = Image.MAX_IMAGE_PIXELS
    why = _tiff_bands(im.tag_v2) if im.format == "TIFF" else None
    if why or (limit is not None and im.width * im.height > limit):
        im.close()
        raise UnsupportedImage(why) if why else ImageTooLarge(
            f"{im.width} x {im.height} pixels, over the limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS): {fix}")
    return im


def load_image(source: str | Path | bytes) -> Image.Image:
    """Decode to RGB, through ``open_image``'s pixel limit: the one decoder of training, validation, the decoded
    cache, predict and the pyfunc model."""
    with open_image(source) as im:
        im.load()
        return to_rgb(im)


def interpolation_mode(name: str):
    """torchvision's InterpolationMode for a model.interpolation name (bilinear, bicubic, nearest)."""
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def policy_steps(policy: str) -> list:
    """The per-image steps of an augmentation policy (data.augment) on uint8 tensors: torchvision's RandAugment or
    TrivialAugmentWide with their defaults; none and flip have none (the flips run per batch: BatchTransform)."""
    from torchvision.transforms import v2

    return {"randaugment": [v2.RandAugment()], "trivialaugment": [v2.TrivialAugmentWide()]}.get(policy, [])


def image_steps(input_size: int, train: bool = False, random_resized_crop: bool = False,
                crop_scale_min: float = 0.6, interpolation: str = "bilinear", policy: str = "flip"):
    """The per-image part of the pipeline, run in DataLoader workers: PIL image -> uint8 tensor at the input size,
    resized with ``interpolation`` (the model's: timm models say which they were trained with); in training, then the
    random crop and the ``policy``'s own steps (policy_steps).

    Everything else (scaling to float, the random flip, cutout, normalising) runs on whole batches on the training
    device (``BatchTransform``): workers send a quarter of the bytes and the GPU does the arithmetic.
    """
    from torchvision.transforms import v2

    steps, mode = [v2.PILToTensor()], interpolation_mode(interpolation)
    if train and random_resized_crop:
        steps.append(v2.RandomResizedCrop(input_size, scale=(crop_scale_min, 1.0), interpolation=mode, antialias=True))
    else:
        steps.append(v2.Resize((input_size, input_size), interpolation=mode, antialias=True))
    return v2.Compose(steps + (policy_steps(policy) if train else []))


def worker_augmentation(data_cfg, input_size: int, interpolation: str = "bilinear"):
    """What a training run draws per image on images already at their decoded size (the decoded cache's): the random
    crop to ``input_size`` and the policy's steps; None when the settings draw nothing there."""
    from torchvision.transforms import v2

    steps = policy_steps(data_cfg.augment)
    if data_cfg.random_resized_crop:
        steps.insert(0, v2.RandomResizedCrop(input_size, scale=(data_cfg.crop_scale_min, 1.0), antialias=True,
                                             interpolation=interpolation_mode(interpolation)))
    return v2.Compose(steps) if steps else None


def build_transform(input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    train: bool = False, random_resized_crop: bool = False, crop_scale_min: float = 0.6,
                    hflip: bool = False, interpolation: str = "bilinear"):
    """PIL image -> normalised float tensor, one image at a time: the two steps training runs (``image_steps`` in
    the workers, ``BatchTransform`` on the device) applied to a batch of one, so there is one definition of each."""
    steps = image_steps(input_size, train, random_resized_crop, crop_scale_min, interpolation)
    finish = BatchTransform(input_size, mean, std, hflip=hflip, interpolation=interpolation)
    return lambda image: finish(steps(image)[None], train=train)[0]


def cutout(x, fraction: float, generator):
    """ML-Decoder's CutoutPIL on a uint8 batch at once: in each image a rectangle of round(fraction x its height) by
    round(fraction x its width) (a square on square images), centred on a uniformly drawn pixel and clipped at the
    borders, filled with one random colour."""
    import torch

    n, channels, height, width = x.shape
    kw = {"generator": generator, "device": x.device}

    def covered(size: int):
        """(n, size): the rows (or columns) each image's square covers."""
        side = int(fraction * size + 0.5)
        start = torch.randint(size, (n, 1), **kw) - side // 2
        position = torch.arange(size, device=x.device)
        return (position >= start) & (position < start + side)

    rows, columns = covered(height), covered(width)
    colour = torch.randint(256, (n, channels, 1, 1), dtype=x.dtype, **kw)
    return torch.where((rows[:, :, None] & columns[:, None, :])[:, None], colour, x)


class BatchTransform:
    """uint8 image batches -> normalised float32 batches, on the device they train on.

    A batch stored at another size (a decoded cache kept smaller) is resized here. In training each image
    is flipped with probability 1/2, then (``cutout`` > 0) has a square erased, drawn from a generator seeded by
    (seed, epoch, rank): the flips and squares of an epoch do not depend on workers or on where a resumed run restarted.
    """

    def __init__(self, input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 hflip: bool = False, seed: int = 0, interpolation: str = "bilinear", cutout: float = 0.0):
        self.input_size, self.mean, self.std, self.hflip, self.seed = input_size, list(mean), list(std), hflip, seed
        self.interpolation, self.cutout = interpolation, cutout
        self.epoch_seed = seed
        self._generator, self._generator_device = None, None
        self._affine = {}  # device -> (scale, shift) with x / 255 normalised = x * scale + shift

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        self.epoch_seed = epoch_seed(self.seed, epoch, rank)
        self._generator = None

    def __call__(self, x, train: bool = False):
        """Few passes over the batch and one allocation: flips on uint8 (a quarter of the bytes), then float and an
        in-place multiply-add."""
        import torch
        from torchvision.transforms.v2 import functional as F

        if train and (self.hflip or self.cutout):
            if self._generator is None or self._generator_device != x.device:  # once per epoch and device
                self._generator, self._generator_device = torch.Generator(x.device).manual_seed(self.epoch_seed), x.device
            if self.hflip:
                flip = torch.rand(len(x), generator=self._generator, device=x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if self.cutout:
                x = cutout(x, self.cutout, self._generator)
        x = x.to(torch.float32, copy=True)  # our own copy: the in-place steps below allocate nothing more
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.resize(x, [self.input_size, self.input_size], interpolation=interpolation_mode(self.interpolation),
                         antialias=True)
        if x.device not in self._affine:
            mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device)[:, None, None] for v in (self.mean, self.std))
            self._affine[x.device] = (1 / (255 * std), -mean / std)
        scale, shift = self._affine[x.device]
        return x.mul_(scale).add_(shift)
