"""Where the model looks: Grad-CAM maps for a few validation images per class, one map per predicted label.

The maintained ``grad-cam`` package (import name ``pytorch_grad_cam``, the optional extra ``diagnose``) computes the
maps; this module picks the images (per class, the most confident predicted positives), the layer (the last conv
block of each architecture, ``TARGET_LAYERS``), feeds the run's own preprocessing (``Predictor.inputs``) and draws
the maps over the images. Only the images shown are read.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from mlabel_exp.errors import ModelError
from mlabel_exp.render.figures import clip, figure, save

log = logging.getLogger(__name__)

#: The layer whose activations and gradients make the map, per architecture: the last convolutional block, the
#: deepest layer that still has a spatial grid (torchvision's own models and SmallCNN in models/backbones.py).
TARGET_LAYERS = {"SmallCNN": "features.3", "ResNet": "layer4", "VGG": "features", "Inception3": "Mixed_7c"}
INSTALL_HINT = "pip install mlabel-exp[diagnose]"
MAX_LABELS = 4       # maps per image beside it: its predicted labels, the most probable first
BATCH = 16           # images per forward pass
DISPLAY_SIZE = 320   # longest side of an image as drawn (pixels)


def target_layer(model):
    """The module Grad-CAM reads in ``model`` (a DDP wrapper is looked through); a clear error for an unknown one."""
    model = getattr(model, "module", model)
    name = TARGET_LAYERS.get(type(model).__name__)
    if name is None:
        raise ModelError(f"activation maps: no target layer known for {type(model).__name__}; add one to "
                         "analysis/activation_maps.py TARGET_LAYERS")
    layer = model.get_submodule(name)
    return layer[-1] if hasattr(layer, "__getitem__") else layer  # a block of layers: its last


def layer_name(model) -> str:
    """The target layer as ``Architecture.path`` (SmallCNN.features.3), for titles."""
    name = type(getattr(model, "module", model)).__name__
    return f"{name}.{TARGET_LAYERS.get(name)}"


def pick_images(probs: np.ndarray, thresholds: Sequence[float], per_class: int) -> dict[int, list[int]]:
    """Per class, the rows of its ``per_class`` most confident predicted positives (probability >= threshold),
    highest first; a class predicted nowhere has none."""
    probs = np.asarray(probs)
    picked = {}
    for c in range(probs.shape[1]):
        rows = np.flatnonzero(probs[:, c] >= thresholds[c])
        picked[c] = [int(r) for r in rows[np.argsort(-probs[rows, c], kind="stable")][:per_class]]
    return picked


def compute_maps(predictor, images: dict, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """Grad-CAM of each (image, class) pair: an (input size) x (input size) map in [0, 1] per pair, from the logit of
    that class. ``images``: row -> uint8 tensor as ``predictor.image_steps`` makes it.

    Grad-CAM needs the gradient of a logit at the target layer only, so the layer's output is cut from autograd there
    (a forward hook placed before grad-cam's own): the backbone runs as inference, once per image, and the hook
    repeats each image's activations once per label asked of it; the head and the backward pass then run per
    (image, class) pair, which is what grad-cam computes the maps of. The model is put in eval mode and its
    parameters out of autograd for the pass, then restored."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = getattr(predictor.model, "module", predictor.model)
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    layer, repeat = target_layer(model), {}
    cut = layer.register_forward_hook(
        lambda module, args, output: output.detach()[repeat["index"].to(output.device)].requires_grad_(True))
    rows = sorted({r for r, _ in pairs})
    maps = {}
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            for start in range(0, len(rows), BATCH):
                batch = rows[start:start + BATCH]
                chunk = [(r, c) for r, c in pairs if r in batch]
                repeat["index"] = torch.tensor([batch.index(r) for r, _ in chunk])
                x = predictor.inputs(torch.stack([images[r] for r in batch])).float()
                grey = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for _, c in chunk])
                maps.update(zip(chunk, grey))
    finally:
        cut.remove()
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    return maps


def resized(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map (H x W) or an image (H x W x 3) bilinearly resized, float32."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (out[0] if array.ndim == 2 else out.permute(1, 2, 0)).numpy()


def display_size(width: int, height: int, longest: int = DISPLAY_SIZE) -> tuple[int, int]:
    """(height, width) of an image drawn with its longest side ``longest`` pixels (its aspect ratio kept)."""
    scale = longest / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def labels_shown(probs_row: np.ndarray, thresholds: Sequence[float], first: int) -> list[int]:
    """The predicted labels of one image whose maps are drawn: ``first`` (the page's class), then the others by
    probability, MAX_LABELS in all."""
    predicted = [c for c in np.argsort(-probs_row, kind="stable") if probs_row[c] >= thresholds[c] and c != first]
    return [first, *[int(c) for c in predicted]][:MAX_LABELS]


def overlay(picture: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map in the turbo colour map blended over the picture (both H x W, values in [0, 1]): one RGB array, drawn
    once (two stacked images with transparency cost matplotlib several times as long)."""
    from matplotlib import colormaps

    return (1 - alpha) * picture + alpha * colormaps["turbo"](np.clip(cam, 0, 1))[..., :3]


def class_page(c: int, rows: list[int], shown: dict[int, list[int]], maps: dict, names: list[str], probs: np.ndarray,
               classes: Sequence[str], true_labels: Sequence[str] | None, layer: str):
    """One figure for class ``c``: a row per image (the image, then one overlay per label shown), each titled with
    the image's path and the label's probability."""
    n_cols = 1 + max(len(shown[r]) for r in rows)
    width = 2.7 * n_cols
    heading = [f"where the model looks: {classes[c]}", *textwrap.wrap(
        f"Grad-CAM at {layer}, the {len(rows)} images most confidently predicted {classes[c]}; one map per predicted "
        "label (red: the regions that raise that label's logit most; each map scaled to its own maximum)",
        int(width * 14))]
    top = 0.17 * len(heading) + 0.5  # inches above the first row: the heading and the row's own two-line titles
    height = 2.95 * len(rows) + top
    fig, axes = figure(len(rows), n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - top / height, wspace=0.04,
                        hspace=0.5 / 2.45)
    fig.suptitle("\n".join(heading), fontsize=9, y=1 - 0.06 / height, va="top")
    for ax in axes.ravel():
        ax.axis("off")
    for ax_row, r in zip(axes, rows):
        picture = maps[r, c][0]
        ax_row[0].imshow(picture)
        truth = f"\ntrue: {clip(true_labels[r] or '(none)', 34)}" \
            if true_labels is not None else ""
        ax_row[0].set_title(f"{clip(names[r], 36, keep='tail')}{truth}", fontsize=8.5)
        for ax, label in zip(ax_row[1:], shown[r]):
            ax.imshow(overlay(picture, maps[r, label][1]))
            ax.set_title(f"{clip(classes[label], 24)}  p={probs[r, label]:.2f}",
                         fontsize=9, fontweight="bold" if label == c else "normal")
    return fig


def _load(paths: Sequence[Path], rows: list[int], predictor) -> tuple[dict, dict]:
    """(row -> model input as uint8, row -> picture as drawn) of the images of ``rows``; one that cannot be read is
    left out with a warning."""
    from mlabel_exp.data.images import load_image

    inputs, pictures = {}, {}
    for r in rows:
        try:
            image = load_image(paths[r])
        except Exception as e:  # noqa: BLE001 - an unreadable image costs its maps, not the run
            log.warning("activation maps: %s left out (%s)", paths[r], e)
            continue
        inputs[r] = predictor.image_steps(image)
        height, width = display_size(*image.size)
        pictures[r] = np.asarray(image.resize((width, height)), dtype=np.float32) / 255
    return inputs, pictures


def image_maps(predictor, image_paths: Sequence[Path], pairs: list[tuple[int, int]]) -> dict:
    """(row, class) -> (picture, map) for each pair: the image as drawn (H x W x 3 in [0, 1], its aspect ratio kept)
    and its Grad-CAM map for that class at the same H x W (the model's square input stretched back, as the
    preprocessing squashed it). Only the images of ``pairs`` are read; an unreadable one is left out (a warning)."""
    inputs, pictures = _load(image_paths, sorted({r for r, _ in pairs}), predictor)
    pairs = [(r, c) for r, c in pairs if r in inputs]
    maps = compute_maps(predictor, inputs, pairs)
    return {(r, c): (pictures[r], resized(maps[r, c], *pictures[r].shape[:2])) for r, c in pairs}


def _file_name(c: int, name: str) -> str:
    return f"{c:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"


def write_activation_maps(out_dir: Path, predictor, image_paths: Sequence[Path], probs: np.ndarray,
                          thresholds: Sequence[float], classes: Sequence[str], per_class: int = 3, *,
                          true_labels: Sequence[str] | None = None, relative_to: Path | None = None) -> list[dict]:
    """One PNG per class in ``out_dir``: its ``per_class`` most confident predicted positives among ``image_paths``
    (rows of ``probs``, N x C, at ``thresholds``), each with a Grad-CAM map per predicted label. Returns index entries
    {"title", "image" (the PNG relative to ``relative_to``, default ``out_dir``), "caption"}; none (and one warning)
    when the grad-cam package is missing."""
    import time

    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        log.warning("activation maps skipped: the grad-cam package is not installed (%s)", INSTALL_HINT)
        return []

    started, probs = time.perf_counter(), np.asarray(probs)
    picked = pick_images(probs, thresholds, per_class)
    pages = {c: rows for c, rows in picked.items() if rows}
    shown = {(c, r): labels_shown(probs[r], thresholds, c) for c, rows in pages.items() for r in rows}
    maps = image_maps(predictor, image_paths, sorted({(r, k) for (_, r), labels in shown.items() for k in labels}))
    pages = {c: [r for r in rows if (r, c) in maps] for c, rows in pages.items()}  # unreadable images left out
    pages = {c: rows for c, rows in pages.items() if rows}
    layer = layer_name(predictor.model)
    names = [Path(p).as_posix() for p in image_paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for c, rows in pages.items():
        fig = class_page(c, rows, {r: shown[c, r] for r in rows}, maps, names, probs, classes, true_labels, layer)
        path = save(fig, out_dir / _file_name(c, classes[c]), photos=True)
        entries.append({"title": f"where the model looks: {classes[c]}",
                        "image": path.relative_to(relative_to or out_dir).as_posix(),
                        "caption": f"Grad-CAM ({layer}) of the {len(rows)} images most confidently predicted "
                                   f"{classes[c]}, one map per predicted label"})
    log.info("activation maps: %d maps of %d images for %d classes in %.1f s", len(maps), len({r for r, _ in maps}),
             len(pages), time.perf_counter() - started)
    return entries
