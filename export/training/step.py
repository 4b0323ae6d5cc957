"""One training step: encode B scenes once, prompt K targets per scene, then correction rounds.

Round 1 is one foreground point (padded) or one noisy box. A point is ambiguous: multimask output,
only the lowest-loss mask back-propagated. A box is not: the single-mask token, as SamPredictor
answers a box with multimask_output=False. Each correction round adds a click from the error
region and passes the previous low-res logits as mask prompt; it trains the single-mask token.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from samrt.spec import SamConfig
from samrt.scenes import TrainingSample

from ..wrappers import PromptDecoder
from .clicks import error_points
from .feed import collate
from .losses import mask_iou, mask_losses, round1_selection
from .options import TrainOptions

__all__ = ["LossGrid", "loss_grid", "train_step"]


@dataclasses.dataclass
class LossGrid:
    """The ground truth on the grid the mask loss is computed on (side `size`)."""

    soft: torch.Tensor  # float [P,size,size]: the targets' area coverage, 0..1
    hard: torch.Tensor  # bool [P,size,size]: soft > 0.5
    size: int
    scale: float  # loss-grid pixel -> input pixel


def loss_grid(target: torch.Tensor, cfg: SamConfig, loss_size: int) -> LossGrid:
    """Soft targets [P,S,S] at the input size S -> their area coverage on the loss grid
    (`loss_size`; 0 = S). Raises ValueError unless the side divides S and is at least the
    low-res mask side."""
    size = loss_size or cfg.image_size
    if size != cfg.image_size:
        if cfg.image_size % size or size < cfg.low_res_size:
            raise ValueError(f"loss_size: got {size}, expected a divisor of the input size {cfg.image_size} "
                             f"of at least the low-res mask side {cfg.low_res_size}")
        target = F.avg_pool2d(target[:, None], cfg.image_size // size)[:, 0]  # area coverage on the loss grid
    return LossGrid(soft=target, hard=target > 0.5, size=size, scale=cfg.image_size / size)


def _first_round(decoder: PromptDecoder, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                 grid: LossGrid, low_res_size: int):
    """The first prompt (coords [P,2,2], labels [P,2]; label 2 first: a box) -> (its loss, its
    statistics, and the back-propagated token's logits [P,1,m,m] (detached) and mask [P,s,s])."""
    num, device, m = len(emb), emb.device, low_res_size
    low, iou = decoder(emb, coords, labels, torch.zeros(num, 1, m, m, device=device), torch.zeros(num, device=device))
    mask_loss, iou_loss, pred = mask_losses(low, grid.soft, iou, grid.size)
    best, trained = round1_selection(mask_loss, labels[:, 0] == 2)
    rows = torch.arange(num, device=device)
    loss = mask_loss[rows, best].mean() + (iou_loss * trained).sum() / trained.sum()
    with torch.no_grad():  # mean foreground and background probability of the trained mask
        prob = torch.sigmoid(F.interpolate(low[rows, best][:, None], (grid.size,) * 2, mode="bilinear",
                                           align_corners=False)[:, 0])
        fg = (prob * grid.hard).flatten(1).sum(1) / grid.hard.flatten(1).sum(1).clamp(min=1)
        bg = (prob * ~grid.hard).flatten(1).sum(1) / (~grid.hard).flatten(1).sum(1).clamp(min=1)
    stats = {"round1_iou": mask_iou(pred[rows, best], grid.hard).mean(), "fg_prob": fg.mean(), "bg_prob": bg.mean()}
    return loss, stats, low[rows, best].detach()[:, None], pred[rows, best]


def _correction_round(decoder: PromptDecoder, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                      prev_low: torch.Tensor, prev_pred: torch.Tensor, grid: LossGrid, gen: torch.Generator):
    """A click from each previous mask's error region joins the prompt; the previous logits are the
    mask prompt -> (coords [P,N+1,2], labels [P,N+1], mask loss [P,1], IoU-head loss [P,1], and the
    single-mask token's logits [P,1,m,m] (detached) and mask [P,s,s])."""
    c, lb = error_points(prev_pred, grid.hard, gen)
    c = (c + 0.5) * grid.scale - 0.5  # the loss-grid pixel's centre in input pixels (identity at scale 1)
    coords, labels = torch.cat([coords, c], 1), torch.cat([labels, lb], 1)
    low, iou = decoder(emb, coords, labels, prev_low, torch.ones(len(emb), device=emb.device))
    mask_loss, iou_loss, pred = mask_losses(low[:, :1], grid.soft, iou[:, :1], grid.size)
    return coords, labels, mask_loss, iou_loss, low[:, :1].detach(), pred[:, 0]


def train_step(sam, decoder: PromptDecoder, samples: List[TrainingSample], seed: np.random.SeedSequence,
               cfg: SamConfig, opts: TrainOptions) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The loss of one step (not yet back-propagated) and its statistics: the loss and the mean IoU
    of each round's trained mask, mean foreground/background probability in round 1.

    `sam`: the official Sam being trained; `decoder`: a PromptDecoder around it; `samples`: the
    step's scenes (SceneFeed.get); `seed`: the step's seed for the correction clicks."""
    device = next(sam.parameters()).device
    images, target, owner, coords, labels = collate(samples, cfg.image_size, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    grid = loss_grid(target, cfg, opts.loss_size)
    emb = sam.image_encoder(images)[owner]

    loss, stats, prev_low, prev_pred = _first_round(decoder, emb, coords, labels, grid, cfg.low_res_size)
    for r in range(opts.correction_rounds):
        coords, labels, mask_loss, iou_loss, prev_low, prev_pred = _correction_round(
            decoder, emb, coords, labels, prev_low, prev_pred, grid, gen)
        loss = loss + mask_loss.mean() + iou_loss.mean()
        stats[f"round{r + 2}_iou"] = mask_iou(prev_pred, grid.hard).mean()
    loss = loss / (1 + opts.correction_rounds)
    stats["loss"] = loss.detach()
    values = torch.stack([v.float() for v in stats.values()]).tolist()  # one device sync per step
    return loss, dict(zip(stats, values))
