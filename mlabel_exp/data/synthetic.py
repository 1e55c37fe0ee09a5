"""The embedded default data set: synthetic images in exactly the real data set's on-disk format.

``images/im1.jpg .. imN.jpg`` plus ``annotations/<class>.txt`` (1-based image numbers, one per line),
so every path of the real loader runs without the real data. Each class is a distinct shape or
pattern drawn at a random position, size, rotation and colour on a varied background; class
frequencies are imbalanced like the real set's (one class in about a third of the images, the rarest
in about 1%), a share of images has no label and a few are grayscale JPEGs.

Every image is drawn from its own RNG seeded with ``(seed, image number)``, so the same parameters
give byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mlabel_exp.config import SyntheticConfig as SyntheticSpec  # the parameters, range-checked, are the config schema
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.fsutil import write_atomic

log = logging.getLogger(__name__)

#: Bump when the drawing changes, so cached data sets of the old look are not reused.
GENERATOR_VERSION = 1

#: class name -> share of labelled images that contain it (before the unlabeled share is applied).
PREVALENCE: dict[str, float] = {
    "circle": 0.55, "square": 0.28, "triangle": 0.27, "ring": 0.25, "star": 0.10, "stripes": 0.07,
    "plus": 0.05, "hexagon": 0.045, "checker": 0.04, "diamond": 0.035, "dots": 0.03,
    "crescent": 0.025, "xcross": 0.02, "zigzag": 0.02,
}


def cache_key(spec: SyntheticSpec) -> str:
    """Cache folder name: every parameter that changes the files, and the generator version."""
    return (f"n{spec.num_images}_px{spec.image_size}_seed{spec.seed}_u{spec.unlabeled_fraction:g}"
            f"_g{spec.grayscale_fraction:g}_m{spec.max_objects}_v{GENERATOR_VERSION}")


def _polygon(n: int, radius: float, centre: float, angle: float, inner: float | None = None):
    """Vertices of a regular polygon (or a star when ``inner`` radius is given)."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        r = (inner if inner and k % 2 else radius)
        a = angle + 2 * math.pi * k / steps
        pts.append((centre + r * math.cos(a), centre + r * math.sin(a)))
    return pts


def _rotated_rects(d: ImageDraw.ImageDraw, c: float, half_len: float, half_w: float, angle: float):
    """Draw two perpendicular bars through the centre (a plus sign rotated by ``angle``)."""
    for a in (angle, angle + math.pi / 2):
        ca, sa = math.cos(a), math.sin(a)
        corners = [(-half_len, -half_w), (half_len, -half_w), (half_len, half_w), (-half_len, half_w)]
        d.polygon([(c + x * ca - y * sa, c + x * sa + y * ca) for x, y in corners], fill=255)


def _mask(name: str, s: int, rng: np.random.Generator) -> Image.Image:
    """An s x s 'L' mask (255 = object) for one instance of class ``name``."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    c, r = (s - 1) / 2, s / 2 - 1
    jitter = math.radians(rng.uniform(-12, 12))
    if name == "circle":
        d.ellipse((1, 1, s - 2, s - 2), fill=255)
    elif name == "ring":
        d.ellipse((1, 1, s - 2, s - 2), outline=255, width=max(2, s // 7))
    elif name == "crescent":
        d.ellipse((1, 1, s - 2, s - 2), fill=255)
        off = s * 0.3
        d.ellipse((1 + off, 1 - off * 0.3, s - 2 + off, s - 2 - off * 0.3), fill=0)
        m = m.rotate(rng.uniform(0, 360), resample=Image.NEAREST)
    elif name == "square":
        d.polygon(_polygon(4, r, c, math.pi / 4 + jitter), fill=255)
    elif name == "diamond":  # a tall rhombus: distinct from a square under the limited rotation
        pts = [(c, 1), (c + r * 0.55, c), (c, s - 2), (c - r * 0.55, c)]
        d.polygon(pts, fill=255)
        m = m.rotate(math.degrees(jitter), resample=Image.NEAREST)
    elif name == "triangle":
        d.polygon(_polygon(3, r, c, rng.uniform(0, 2 * math.pi)), fill=255)
    elif name == "hexagon":
        d.polygon(_polygon(6, r, c, rng.uniform(0, math.pi)), fill=255)
    elif name == "star":
        d.polygon(_polygon(5, r, c, rng.uniform(0, 2 * math.pi), inner=r * 0.42), fill=255)
    elif name == "plus":
        _rotated_rects(d, c, r, r * 0.22, jitter)
    elif name == "xcross":
        _rotated_rects(d, c, r, r * 0.22, math.pi / 4 + jitter)
    elif name == "stripes":
        bar = s / 7
        for k in range(0, 7, 2):
            d.rectangle((k * bar, 0, (k + 1) * bar - 1, s - 1), fill=255)
        m = m.rotate(rng.uniform(0, 180), resample=Image.NEAREST)
    elif name == "checker":
        cell = s / 4
        for i in range(4):
            for j in range(4):
                if (i + j) % 2 == 0:
                    d.rectangle((i * cell, j * cell, (i + 1) * cell - 1, (j + 1) * cell - 1), fill=255)
        m = m.rotate(math.degrees(jitter), resample=Image.NEAREST)
    elif name == "dots":
        step, dot = s / 3, s / 9
        for i in range(3):
            for j in range(3):
                x, y = step * (i + 0.5), step * (j + 0.5)
                d.ellipse((x - dot, y - dot, x + dot, y + dot), fill=255)
    elif name == "zigzag":
        n = 4
        pts = [(s * k / n, (s * 0.2 if k % 2 else s * 0.8)) for k in range(n + 1)]
        d.line(pts, fill=255, width=max(2, s // 8), joint="curve")
        m = m.rotate(rng.uniform(0, 360), resample=Image.NEAREST)
    else:  # pragma: no cover - PREVALENCE and this function are edited together
        raise KeyError(name)
    return m


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A linear gradient between two random colours with mild grain: varied, but not a pattern."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xs * math.cos(angle) + ys * math.sin(angle))
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.integers(-10, 11, (size, size, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def draw_image(spec: SyntheticSpec, number: int) -> tuple[bytes, list[str]]:
    """JPEG bytes and class names of image ``number`` (1-based); a pure function of (spec, number)."""
    rng = np.random.default_rng((spec.seed, number))
    classes = list(PREVALENCE)
    labels: list[str] = []
    if rng.random() >= spec.unlabeled_fraction:
        drawn = rng.random(len(classes))
        labels = [c for c, u in zip(classes, drawn) if u < PREVALENCE[c]]
        if len(labels) > spec.max_objects:
            labels = list(rng.choice(labels, spec.max_objects, replace=False))
    size = spec.image_size
    bg = _background(size, rng)
    img = Image.fromarray(bg, "RGB")
    for name in labels:
        s = int(rng.uniform(0.22, 0.42) * size)
        x, y = (int(v) for v in rng.integers(0, size - s + 1, 2))
        local = bg[y:y + s, x:x + s].reshape(-1, 3).mean(0)
        colour = rng.integers(0, 256, 3)
        for _ in range(8):  # keep objects visible against their background
            if abs(_luma(colour) - _luma(local)) > 70:
                break
            colour = rng.integers(0, 256, 3)
        img.paste(tuple(int(v) for v in colour), (x, y), _mask(name, s, rng))
    if rng.random() < spec.grayscale_fraction:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), sorted(labels)


def generate(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write ``spec.num_images`` images and the 14 annotation files under ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    positives: dict[str, list[int]] = {c: [] for c in PREVALENCE}
    for number in range(1, spec.num_images + 1):
        data, labels = draw_image(spec, number)
        (root / "images" / f"im{number}.jpg").write_bytes(data)
        for c in labels:
            positives[c].append(number)
    order_rng = np.random.default_rng((spec.seed, 0))  # real files are unordered: so are ours
    for c, ids in positives.items():
        ids = [int(v) for v in order_rng.permutation(ids)]
        (root / "annotations" / f"{c}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def ensure_generated(cache_dir: str | Path, spec: SyntheticSpec) -> Path:
    """The cached data set for ``spec``, generated on first use.

    Generation goes to a private temporary folder renamed into place at the end, so concurrent jobs
    never see a half-written data set and an interrupted generation leaves nothing behind.
    """
    final = Path(cache_dir).expanduser() / "synthetic" / cache_key(spec)
    if (final / "annotations").is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{cache_key(spec)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("Generating synthetic data set (%d images of %d px) into %s",
             spec.num_images, spec.image_size, final)
    try:
        generate(tmp, spec)
        os.rename(tmp, final)
    except OSError:
        if not (final / "annotations").is_dir():
            raise
        # another process finished the same data set first: theirs is identical, keep it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_format(root: str | Path, fmt: str) -> Path:
    """Convert the folder-format data set at ``root`` in place into another format, same images and labels:

    - ``csv``: ``labels.csv`` as Kaggle's Planet set (``image_name,tags``: names without extension, space-separated);
    - ``onehot``: ``labels.csv`` with an ``image`` column and one 1/0 column per class;
    - ``coco``: ``instances.json`` (one whole-image box per label, category ids in generator order);
    - ``voc``: a devkit: ``JPEGImages/``, ``Annotations/<id>.xml`` and ``ImageSets/Main/trainval.txt``.

    ``folder`` leaves the data set as it is. The images stay in ``images/`` except for voc."""
    root = Path(root)
    if fmt == "folder":
        return root
    folder_log = logging.getLogger("mlabel_exp.data.formats.folder")
    level, _ = folder_log.level, folder_log.setLevel(logging.ERROR)  # rare classes without positives: expected here
    try:
        index = build_index(root)
    finally:
        folder_log.setLevel(level)
    names = [[c for c, v in zip(index.classes, row) if v == 1] for row in index.labels]
    if fmt in ("csv", "onehot"):
        if fmt == "csv":
            lines = ["image_name,tags"] + [f"{Path(f).stem},{' '.join(n)}" for f, n in zip(index.files, names)]
        else:
            lines = [",".join(["image", *index.classes])] + [
                ",".join([f, *(str(int(v)) for v in row)]) for f, row in zip(index.files, index.labels)]
        write_atomic(root / "labels.csv", "\n".join(lines) + "\n")
    elif fmt == "coco":
        write_atomic(root / "instances.json", json.dumps(_coco(index, names)))
    elif fmt == "voc":
        _voc(root, index, names)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    shutil.rmtree(root / "annotations")
    return root


def _coco(index, names: list[list[str]]) -> dict:
    category_id = {c: i for i, c in enumerate(PREVALENCE, start=1)}  # not the sorted order: readers must sort
    images, annotations = [], []
    for image_id, file, labels in zip(index.ids, index.files, names):
        with Image.open(index.image_dir / file) as im:
            w, h = im.size
        images.append({"id": int(image_id), "file_name": file, "width": w, "height": h})
        for c in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id), "category_id": category_id[c],
                                "bbox": [0, 0, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": i, "name": c, "supercategory": "shape"} for c, i in category_id.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _voc(root: Path, index, names: list[list[str]]) -> None:
    import xml.etree.ElementTree as ET

    os.rename(root / "images", root / "JPEGImages")
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for file, labels in zip(index.files, names):
        with Image.open(root / "JPEGImages" / file) as im:
            w, h = im.size
        node = ET.Element("annotation")
        ET.SubElement(node, "filename").text = file
        size = ET.SubElement(node, "size")
        for tag, v in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        for c in labels:
            obj = ET.SubElement(node, "object")
            ET.SubElement(obj, "name").text = c
            ET.SubElement(obj, "difficult").text = "0"
            box = ET.SubElement(obj, "bndbox")
            for tag, v in (("xmin", 1), ("ymin", 1), ("xmax", w), ("ymax", h)):
                ET.SubElement(box, tag).text = str(v)
        (root / "Annotations" / f"{Path(file).stem}.xml").write_bytes(ET.tostring(node))
    stems = "".join(f"{Path(f).stem}\n" for f in index.files)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text(stems)


def write_label_errors(root: str | Path, out: str | Path, drop: float = 0.1, add: float = 0.01,
                       seed: int = 0) -> list[tuple[int, str, int]]:
    """A copy of the folder-format data set at ``root`` in ``out`` (images hard-linked where the disk allows, else
    copied) whose labels are wrong on purpose: each positive dropped with probability ``drop`` (a missing label), each
    negative made positive with probability ``add`` (a label the image does not show), drawn from
    ``np.random.default_rng(seed)``. Returns the errors as (image number, class, the label now given) and writes them to
    ``out``/injected_errors.csv: what the label check is measured against (benchmarks/bench_label_errors.py)."""
    root, out = Path(root), Path(out)
    index = build_index(root)
    if (out / "annotations").exists():
        raise FileExistsError(f"{out} holds a data set already")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for file in index.files:
        try:
            os.link(root / "images" / file, out / "images" / file)
        except OSError:
            shutil.copy2(root / "images" / file, out / "images" / file)
    rng = np.random.default_rng(seed)
    labels = index.labels.copy()
    draws = rng.random(labels.shape)
    dropped, added = (labels == 1) & (draws < drop), (labels == 0) & (draws < add)
    labels[dropped], labels[added] = 0, 1
    (out / "annotations").mkdir()
    for c, name in enumerate(index.classes):
        ids = index.ids[labels[:, c] == 1]
        (out / "annotations" / f"{name}.txt").write_text("".join(f"{int(i)}\n" for i in ids))
    errors = [(int(index.ids[r]), index.classes[c], int(labels[r, c])) for r, c in zip(*np.nonzero(dropped | added))]
    write_atomic(out / "injected_errors.csv", "image,class,given\n" + "".join(f"{i},{c},{g}\n" for i, c, g in errors))
    return errors
