"""The losses of SAM's recipe: focal and dice 20:1 on masks, MSE on the IoU head, and which
mask token a first prompt trains."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["focal_loss", "dice_loss", "mask_iou", "mask_losses", "round1_selection"]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = -1.0, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, mean over pixels, per mask: [..., H, W] -> [...]."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:  # RetinaNet's class weighting; off by default: foreground is ~1% of pixels here
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss (smoothing 1) per mask: logits, target in 0..1 [..., H, W] -> [...]."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks [..., H, W] -> float [...] (0 where both are empty)."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


def mask_losses(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor, size: int):
    """logits [P,C,m,m], soft target [P,S,S] (S = `size`), predicted IoU [P,C] -> (per-mask loss
    [P,C], IoU-head loss [P,C], predicted masks bool [P,C,S,S]). The logits are upsampled to S."""
    up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    t = target[:, None].expand_as(up)
    mask_loss = 20 * focal_loss(up, t) + dice_loss(up, t)
    pred = up > 0
    iou_true = mask_iou(pred, (target > 0.5)[:, None].expand_as(pred)).detach()
    iou_loss = (iou_pred - iou_true) ** 2
    return mask_loss, iou_loss, pred


def round1_selection(mask_loss: torch.Tensor, is_box: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [P,4] (token 0: single mask; 1-3: multimask) -> (the token each prompt
    back-propagates [P], and which tokens' IoU predictions are trained [P,4] float): a box trains
    token 0; a point trains the lowest-loss multimask token, and the IoU head on all three."""
    best = torch.where(is_box, torch.zeros_like(is_box, dtype=torch.long), 1 + mask_loss[:, 1:].argmin(1))
    trained = torch.zeros_like(mask_loss)
    trained[:, 1:] = (~is_box).float()[:, None]
    trained[:, 0] = is_box.float()
    return best, trained
