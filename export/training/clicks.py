"""Correction clicks: where a simulated user clicks next, given the previous prediction."""

from __future__ import annotations

import torch

__all__ = ["error_points"]


def error_points(pred: torch.Tensor, target: torch.Tensor, gen: torch.Generator):
    """A pixel drawn uniformly from each prediction's error region: pred, target bool [P,S,S] ->
    (coords [P,1,2] as (x, y), labels [P,1]: 1 where the pixel is a missed foreground, 0 where it is
    false background, -1 (padding, no new information) where the prediction has no error)."""
    err = (pred ^ target).flatten(1)
    r = torch.rand(err.shape, generator=gen, device=err.device)
    idx = torch.where(err, r + 1, torch.zeros_like(r)).argmax(1)  # r+1 > 0: any error pixel beats the rest
    s = pred.shape[-1]
    coords = torch.stack([idx % s, idx // s], -1).float()
    fg = target.flatten(1).gather(1, idx[:, None])[:, 0]
    labels = torch.where(err.any(1), fg.float(), torch.full_like(fg, -1, dtype=torch.float32))
    return coords[:, None], labels[:, None]
