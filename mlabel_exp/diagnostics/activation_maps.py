"""Where the model looks: Grad-CAM maps for a few validation images per class, its map and those of the labels the
model predicts, beside the image.

The maintained ``grad-cam`` package (import name ``pytorch_grad_cam``, the optional extra ``diagnose``) computes the
maps; this module picks the images (per class, its most confident true positives and its most confident errors:
false positives and false negatives, which a person wants explained), the layer (the last conv block of each
architecture, ``TARGET_LAYERS``), feeds the run's own preprocessing (``Predictor.inputs``) and draws the maps over the
images. Only the images shown are read.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from mlabel_exp.diagnostics.measures import errors_per_class, most_errors_first, top_errors
from mlabel_exp.errors import ModelError
from mlabel_exp.render.figures import blank_figure, save, wrap_path

log = logging.getLogger(__name__)

#: The layer whose activations and gradients make the map, per architecture: the last convolutional block, the
#: deepest layer that still has a spatial grid (torchvision's own models and SmallCNN in models/backbones.py).
TARGET_LAYERS = {"SmallCNN": "features.3", "ResNet": "layer4", "VGG": "features", "Inception3": "Mixed_7c"}
INSTALL_HINT = "pip install mlabel-exp[diagnose]"
MAX_LABELS = 3       # maps per image beside it: the page's class, then its other predicted labels, most probable first
BATCH = 16           # images per forward pass
DISPLAY_SIZE = 210   # longest side of an image as drawn (pixels, at the page's 100 dpi)
KINDS = {"TP": ("true positives", "predicted and present, the most confident first"),
         "FP": ("false positives", "predicted although absent, the most confident first"),
         "FN": ("false negatives", "present but not predicted, the least probable first"),
         "P": ("predicted", "the most confident first (no true labels given)")}


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


def pick_images(probs: np.ndarray, thresholds: Sequence[float], per_kind: int,
                targets: np.ndarray | None = None) -> dict[int, dict[str, list[int]]]:
    """Per class, the rows of its ``per_kind`` most confident true positives (predicted and present, highest
    probability first), false positives (predicted although known absent, highest first) and false negatives (present
    but not predicted, lowest first: ``measures.top_errors``, ties by row); without ``targets``, its most confident
    predicted positives ("P"). A kind with no image is left out."""
    probs = np.asarray(probs)
    predicted = probs >= np.asarray(thresholds)[None, :]
    picked = {}
    for c in range(probs.shape[1]):
        if targets is None:
            kinds = {"P": np.flatnonzero(predicted[:, c])}
        else:
            fp, fn = top_errors(probs, targets, predicted, c, per_kind)
            kinds = {"TP": np.flatnonzero(predicted[:, c] & (targets[:, c] == 1)), "FP": fp, "FN": fn}
        for kind in ("TP", "P"):
            if kind in kinds:
                rows = kinds[kind]
                kinds[kind] = rows[np.lexsort((rows, -probs[rows, c]))]
        picked[c] = {kind: [int(r) for r in rows[:per_kind]] for kind, rows in kinds.items() if len(rows)}
    return picked


def page_classes(picked: dict[int, dict[str, list[int]]], errors: np.ndarray | None, n: int) -> list[int]:
    """The classes that get a page: those with an image to show, the most errors first (``errors``: per class; ties
    and no targets: class order), the first ``n`` of them (0: every one)."""
    order = range(len(picked)) if errors is None else most_errors_first(errors)
    shown = [c for c in order if picked[c]]
    return shown if n == 0 else shown[:n]


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
    """The labels of one image whose maps are drawn: ``first`` (the page's class, predicted or not), then its other
    predicted labels by probability, MAX_LABELS in all."""
    predicted = [c for c in np.argsort(-probs_row, kind="stable") if probs_row[c] >= thresholds[c] and c != first]
    return [first, *[int(c) for c in predicted]][:MAX_LABELS]


def overlay(picture: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map in the turbo colour map blended over the picture (both H x W, values in [0, 1]): one RGB array, drawn
    once (two stacked images with transparency cost matplotlib several times as long)."""
    from matplotlib import colormaps

    return (1 - alpha) * picture + alpha * colormaps["turbo"](np.clip(cam, 0, 1))[..., :3]


TEXT_WIDTH, PANEL, GAP = 2.6, DISPLAY_SIZE / 100, 0.08  # inches: the text column, an image or map, between panels
ROW, HEADER = PANEL + 0.4, 0.35  # inches: a row (its panels' titles above them), a kind's heading


def _row_text(kind: str, c: int, r: int, names: Sequence[str], probs: np.ndarray, classes: Sequence[str],
              labels: dict) -> str:
    """What the text column says of one image: the kind and the class's probability, the whole file name (wrapped,
    never cut), its true labels (where known) and its predicted ones."""
    lines = [f"{kind}  p({classes[c]}) = {probs[r, c]:.3f}", *wrap_path(names[r], 34)]
    for name, found in labels.items():
        lines += textwrap.wrap(f"{name}: {', '.join(classes[k] for k in found[r]) or '(none)'}", 34,
                               subsequent_indent="  ")
    return "\n".join(lines)


def _strip(picture: np.ndarray, cams: list[np.ndarray]) -> np.ndarray:
    """The picture and its map overlays side by side, each centred in a DISPLAY_SIZE square on white."""
    gap = np.ones((DISPLAY_SIZE, round(GAP * 100), 3))
    panels = []
    for image in [picture, *(overlay(picture, cam) for cam in cams)]:
        box = np.ones((DISPLAY_SIZE, DISPLAY_SIZE, 3))
        h, w = image.shape[:2]
        top, left = (DISPLAY_SIZE - h) // 2, (DISPLAY_SIZE - w) // 2
        box[top:top + h, left:left + w] = image
        panels += [box, gap]
    return np.concatenate(panels[:-1], axis=1)


def class_page(c: int, groups: dict[str, list[int]], shown: dict[int, list[int]], maps: dict, names: Sequence[str],
               probs: np.ndarray, classes: Sequence[str], labels: dict, layer: str):
    """One figure for class ``c``: per kind of image (``groups``: TP, FP, FN, or P), a row per image: the text (kind,
    probability, file name, true and predicted labels), the image, and a map per label in ``shown[row]``, the page's
    class first (in bold). One axes per row (a strip of panels): a grid of axes per panel costs several times as much
    to draw. ``labels``: "true" and "predicted" -> per row the class indices."""
    rows = sum(len(g) for g in groups.values())
    width = TEXT_WIDTH + (1 + MAX_LABELS) * (PANEL + GAP) + 0.1
    top = 0.75
    height = top + HEADER * len(groups) + ROW * rows + 0.1
    fig = blank_figure(figsize=(width, height), dpi=100)
    fig.text(0.01, 1 - 0.1 / height, f"where the model looks: {classes[c]}", fontsize=11, fontweight="bold", va="top")
    fig.text(0.01, 1 - 0.38 / height, f"Grad-CAM at {layer}: red marks the regions that raise a label's logit most, each "
             "map scaled to its own maximum; the class's map first, then the image's other predicted labels",
             fontsize=8, va="top")
    y = height - top
    for kind, group in groups.items():
        fig.text(0.01, (y - 0.1) / height, f"{KINDS[kind][0]} ({kind}): {KINDS[kind][1]}", fontsize=9,
                 fontweight="bold", va="top", color="0.25")
        y -= HEADER
        for r in group:
            strip = _strip(maps[r, c][0], [maps[r, k][1] for k in shown[r]])
            ax = fig.add_axes([TEXT_WIDTH / width, (y - ROW + 0.05) / height, strip.shape[1] / 100 / width,
                               PANEL / height])
            ax.imshow(strip, interpolation="nearest", aspect="auto")
            ax.axis("off")
            for i, k in enumerate(shown[r]):
                centre = (i + 1.5) * DISPLAY_SIZE + (i + 1) * GAP * 100
                ax.text(centre, -6, f"{classes[k]}  p={probs[r, k]:.2f}", ha="center", va="bottom", fontsize=8.5,
                        fontweight="bold" if k == c else "normal", clip_on=False)
            fig.text(0.01, (y - ROW + 0.05 + PANEL) / height, _row_text(kind, c, r, names, probs, classes, labels),
                     fontsize=7.5, va="top", family="monospace")
            y -= ROW
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
                          thresholds: Sequence[float], classes: Sequence[str], per_kind: int = 2, *,
                          targets: np.ndarray | None = None, names: Sequence[str] | None = None, pages: int = 0,
                          relative_to: Path | None = None) -> list[dict]:
    """One PNG per class in ``out_dir``: among ``image_paths`` (rows of ``probs``, N x C, decided at ``thresholds``),
    its ``per_kind`` most confident true positives, false positives and false negatives (``targets``: N x C, 1, 0 or -1
    unknown; without them its most confident predicted positives), each with a Grad-CAM map of the class and of its
    other predicted labels. ``names``: the file names the pages show (default the paths); ``pages``: the classes with
    the most errors only (0: every class with an image to show). Returns index entries {"title", "image" (the PNG
    relative to ``relative_to``, default ``out_dir``), "caption"}; none (and one warning) without the grad-cam
    package."""
    import time

    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        log.warning("activation maps skipped: the grad-cam package is not installed (%s)", INSTALL_HINT)
        return []

    started, probs = time.perf_counter(), np.asarray(probs)
    predicted = probs >= np.asarray(thresholds)[None, :]
    picked = pick_images(probs, thresholds, per_kind, targets)
    errors = errors_per_class(targets, predicted) if targets is not None else None
    chosen = page_classes(picked, errors, pages)
    shown = {(c, r): labels_shown(probs[r], thresholds, c) for c in chosen for rows in picked[c].values() for r in rows}
    maps = image_maps(predictor, image_paths, sorted({(r, k) for (_, r), labels in shown.items() for k in labels}))
    names = [Path(p).as_posix() for p in image_paths] if names is None else list(names)
    labels = {"predicted": [np.flatnonzero(row) for row in predicted]}
    if targets is not None:
        labels = {"true": [np.flatnonzero(row == 1) for row in np.asarray(targets)], **labels}
    layer, entries = layer_name(predictor.model), []
    out_dir.mkdir(parents=True, exist_ok=True)
    for c in chosen:
        groups = {kind: [r for r in rows if (r, c) in maps] for kind, rows in picked[c].items()}
        groups = {kind: rows for kind, rows in groups.items() if rows}  # unreadable images left out
        if not groups:
            continue
        fig = class_page(c, groups, {r: shown[c, r] for rows in groups.values() for r in rows}, maps, names, probs,
                         classes, labels, layer)
        path = save(fig, out_dir / _file_name(c, classes[c]), photos=True)
        counts = ", ".join(f"{len(rows)} {kind}" for kind, rows in groups.items())
        entries.append({"title": f"where the model looks: {classes[c]}",
                        "image": path.relative_to(relative_to or out_dir).as_posix(),
                        "caption": f"Grad-CAM ({layer}) of {classes[c]}'s most confident images ({counts}), each with "
                                   "a map of the class and of its other predicted labels"})
    log.info("activation maps: %d maps of %d images for %d classes in %.1f s", len(maps), len({r for r, _ in maps}),
             len(entries), time.perf_counter() - started)
    return entries
