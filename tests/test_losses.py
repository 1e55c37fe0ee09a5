import numpy as np
import pytest
import torch
from torch import nn

from mlabel_exp.models.losses import AsymmetricLoss, FocalLoss, build_loss, pos_weight
from tests.conftest import compose_cfg


def test_pos_weight_modes_from_training_labels():
    labels = np.zeros((100, 3), dtype=np.uint8)
    labels[:10, 0] = 1   # 10 positives, 90 negatives -> 9
    labels[:1, 1] = 1    # 1 positive -> 99, clipped to 10
    assert pos_weight(labels, "none", 10) is None
    np.testing.assert_allclose(pos_weight(labels, "balanced", 10), [9.0, 10.0, 1.0])
    np.testing.assert_allclose(pos_weight(labels, "sqrt", 10), [3.0, np.sqrt(99), 1.0], rtol=1e-6)


def test_asl_without_focusing_or_clipping_is_bce():
    logits, y = torch.randn(16, 5), (torch.rand(16, 5) > 0.7).float()
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)
    assert asl(logits, y) == pytest.approx(nn.functional.binary_cross_entropy_with_logits(logits, y).item(), rel=1e-5)


def test_asl_discounts_easy_negatives_more_than_bce():
    logits, y = torch.full((4, 3), -3.0), torch.zeros(4, 3)  # confident, correct negatives
    assert AsymmetricLoss()(logits, y) < 1e-3 * nn.functional.binary_cross_entropy_with_logits(logits, y)


def test_focal_matches_torchvision_formula_at_gamma_zero():
    logits, y = torch.randn(8, 4), (torch.rand(8, 4) > 0.5).float()
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    alpha_t = 0.25 * y + 0.75 * (1 - y)
    assert FocalLoss(0.25, 0.0)(logits, y) == pytest.approx((alpha_t * bce).mean().item(), rel=1e-5)


@pytest.mark.parametrize("group,cls", [("bce", nn.BCEWithLogitsLoss), ("bce_balanced", nn.BCEWithLogitsLoss),
                                       ("bce_sqrt", nn.BCEWithLogitsLoss), ("focal", FocalLoss),
                                       ("asl", AsymmetricLoss)])
def test_loss_group_builds_every_option(group, cls):
    from mlabel_exp.config import validate

    cfg = validate(compose_cfg(f"loss={group}"))
    labels = (np.random.default_rng(0).random((50, 14)) < 0.2).astype(np.uint8)
    loss = build_loss(cfg.loss, labels)
    assert isinstance(loss, cls)
    assert torch.isfinite(loss(torch.randn(4, 14), torch.ones(4, 14)))
    if group == "bce_balanced":
        assert loss.pos_weight.shape == (14,) and (loss.pos_weight >= 1).all()
