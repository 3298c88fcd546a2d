"""The mask losses every trainer uses: soft Dice, beside binary cross-entropy (U-Nets and the
detector) or SAM's focal loss (SAM2 fine-tuning), on logits of shape (B, 1, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the soft Dice of each sample (smoothed by 1, so an empty target and an empty
    answer agree), shape (B,)."""
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum(dim=(1, 2, 3))
    total = probability.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return 1 - (2 * overlap + 1) / (total + 1)


def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAM's focal loss per sample (alpha 0.25, gamma 2, weighted 20 as SAM weighs it), shape (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    return (alpha * (1 - p_t) ** 2 * bce).mean(dim=(1, 2, 3)) * 20


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE (with per-pixel weights, normalised per image, where given) plus soft Dice."""
    if weight is None:
        bce = F.binary_cross_entropy_with_logits(logits, target)
    else:
        pixels = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = ((pixels * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))).mean()
    return bce + soft_dice(logits, target).mean()
