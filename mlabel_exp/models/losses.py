"""Training losses for imbalanced multi-label data (the ``loss`` config group).

``bce`` (optionally with a per-class ``pos_weight``), torchvision's sigmoid focal loss, and the
asymmetric loss (ASL, Ridnik et al. 2021), which no maintained PyTorch package ships on its own.

Unknown labels (target -1: VOC's difficult objects, -1 or empty in a one-hot CSV) are masked out of every loss: an
unknown entry contributes nothing to the loss or its gradient, and the loss is the mean over the known (image, class)
entries only. A data set without unknown labels is computed exactly as before unknowns existed (``masked=False``,
what ``build_loss`` chooses when the data set has none): the plain mean over every entry, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mlabel_exp.config import LOSSES, one_of


def pos_weight(labels: np.ndarray, mode: str, max_weight: float) -> torch.Tensor | None:
    """Per-class weight of positives from training labels: negatives/positives ('balanced') or its
    square root ('sqrt'), clipped at ``max_weight``; 1 for a class without positives. Counted over known entries only:
    an unknown (-1) is neither a positive nor a negative."""
    if mode == "none":
        return None
    labels = np.asarray(labels)
    pos = (labels == 1).sum(0).astype(np.float64)
    neg = (labels == 0).sum(0).astype(np.float64)
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    return torch.tensor(np.clip(ratio, 1.0, max_weight), dtype=torch.float32)


def known_mean(per_entry: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_entry`` losses over the entries whose target is known (>= 0); 0 when none is. Unknown
    entries get neither a value nor a gradient (``torch.where``, not a product: an unknown's loss never spreads)."""
    known = targets >= 0
    return torch.where(known, per_entry, torch.zeros_like(per_entry)).sum() / known.sum().clamp(min=1)


class MaskedBCE(nn.BCEWithLogitsLoss):
    """``BCEWithLogitsLoss`` (with its per-class ``pos_weight``) whose mean covers the known entries only: the sum
    of the (weighted) losses of known entries over their number. ``masked=False``: exactly BCEWithLogitsLoss's mean over
    every entry, for data without unknown labels."""

    def __init__(self, pos_weight: torch.Tensor | None = None, masked: bool = True):
        super().__init__(pos_weight=pos_weight)
        self.masked = masked

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.masked:
            return super().forward(logits, targets)
        per_entry = nn.functional.binary_cross_entropy_with_logits(
            logits, targets.clamp(min=0), pos_weight=self.pos_weight, reduction="none")
        return known_mean(per_entry, targets)


class FocalLoss(nn.Module):
    """torchvision's sigmoid focal loss, mean over known entries (``masked``) or over every entry."""

    def __init__(self, alpha: float, gamma: float, masked: bool = True):
        super().__init__()
        self.alpha, self.gamma, self.masked = alpha, gamma, masked

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        if not self.masked:
            return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="mean")
        per_entry = sigmoid_focal_loss(logits, targets.clamp(min=0), alpha=self.alpha, gamma=self.gamma,
                                       reduction="none")
        return known_mean(per_entry, targets)


class AsymmetricLoss(nn.Module):
    """ASL: focusing ``gamma_neg`` on negatives, ``gamma_pos`` on positives, and probability shifting
    by ``clip`` that discards very easy negatives. Mean over the known (image, class) pairs (``masked``), or over all
    of them."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 masked: bool = True):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.masked = masked

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.clamp(min=0) if self.masked else targets
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p  # shifted probability for negatives
        loss_pos = y * (1 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=self.eps))
        loss_neg = (1 - y) * p_neg.pow(self.gamma_neg) * torch.log((1 - p_neg).clamp(min=self.eps))
        if not self.masked:
            return -(loss_pos + loss_neg).mean()
        return -known_mean(loss_pos + loss_neg, targets)


def build_loss(cfg, train_labels: np.ndarray, unknown: bool = True) -> nn.Module:
    """The configured loss; ``pos_weight`` statistics come from the training split only. ``unknown``: whether any
    target the loss will see (training or validation) can be -1; False (a data set without unknown labels) computes the
    plain mean over every entry, exactly as before unknown labels existed."""
    if cfg.name == "bce":
        return MaskedBCE(pos_weight(train_labels, cfg.pos_weight, cfg.pos_weight_max), masked=unknown)
    if cfg.name == "focal":
        return FocalLoss(cfg.focal_alpha, cfg.focal_gamma, masked=unknown)
    if cfg.name == "asl":
        return AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, masked=unknown)
    raise ValueError(f"loss.name={cfg.name!r}: expected {one_of(LOSSES)}")
