"""Training losses for imbalanced multi-label data (the ``loss`` config group).

``bce`` (optionally with a per-class ``pos_weight``), torchvision's sigmoid focal loss, and the
asymmetric loss (ASL, Ridnik et al. 2021), which no maintained PyTorch package ships on its own.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mlabel_exp.config import LOSSES, one_of


def pos_weight(labels: np.ndarray, mode: str, max_weight: float) -> torch.Tensor | None:
    """Per-class weight of positives from training labels: negatives/positives ('balanced') or its
    square root ('sqrt'), clipped at ``max_weight``; 1 for a class without positives."""
    if mode == "none":
        return None
    pos = labels.sum(0).astype(np.float64)
    neg = len(labels) - pos
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    return torch.tensor(np.clip(ratio, 1.0, max_weight), dtype=torch.float32)


class FocalLoss(nn.Module):
    def __init__(self, alpha: float, gamma: float):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="mean")


class AsymmetricLoss(nn.Module):
    """ASL: focusing ``gamma_neg`` on negatives, ``gamma_pos`` on positives, and probability shifting
    by ``clip`` that discards very easy negatives. Mean over all (image, class) pairs."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p  # shifted probability for negatives
        loss_pos = targets * (1 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=self.eps))
        loss_neg = (1 - targets) * p_neg.pow(self.gamma_neg) * torch.log((1 - p_neg).clamp(min=self.eps))
        return -(loss_pos + loss_neg).mean()


def build_loss(cfg, train_labels: np.ndarray) -> nn.Module:
    """The configured loss; ``pos_weight`` statistics come from the training split only."""
    if cfg.name == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight(train_labels, cfg.pos_weight, cfg.pos_weight_max))
    if cfg.name == "focal":
        return FocalLoss(cfg.focal_alpha, cfg.focal_gamma)
    if cfg.name == "asl":
        return AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
    raise ValueError(f"loss.name={cfg.name!r}: expected {one_of(LOSSES)}")
