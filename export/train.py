"""Train a small SAM (the official classes) on generated scenes, following the paper's recipe.

Per step: B scenes are encoded once; K targets per scene are prompted with a foreground point
or a noisy box (sigma 10% of the box side, at most 20 px); then further points are sampled
from the error region with the previous low-res logits as mask prompt. The first round uses
multimask output and back-propagates only the lowest-loss mask; later rounds use the single
mask token. Loss: focal and dice 20:1 on masks, MSE on the IoU head.

Seeded and resumable: every step's scenes come from (seed, step), and a state file holds the
model, optimizer and step. Progress is shown with tqdm.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from samrt import processing as P
from samrt.scenes import TRAIN_SEED, generate_scene
from samrt.spec import SamConfig

from .checkpoint import build_sam
from .wrappers import SamDecoderOnnx

__all__ = ["SMALL_CONFIG", "TrainOptions", "train", "init_provenance", "focal_loss", "dice_loss"]

log = logging.getLogger(__name__)

# The shipped model: small ViT image encoder at 256 px input, the standard prompt encoder and
# mask decoder (256-d two-way transformer, 2 layers, 8 heads, MLP 2048).
SMALL_CONFIG = SamConfig(
    model_type="samrt_small",
    encoder_embed_dim=192,
    encoder_depth=6,
    encoder_num_heads=6,
    encoder_global_attn_indexes=(2, 5),
    image_size=256,
    patch_size=16,
    window_size=8,
)


@dataclasses.dataclass
class TrainOptions:
    steps: int = 3000
    batch_images: int = 4
    prompts_per_image: int = 4
    correction_rounds: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    seed: int = TRAIN_SEED
    threads: int = 0
    checkpoint_every: int = 100
    max_minutes: float = 0.0  # stop (resumably) after this long; 0 = no limit
    # Curriculum: large objects first (a decoder trained from scratch on ~1%-of-image objects
    # collapses to "no mask" for hundreds of steps), then the full size range.
    curriculum_steps: int = 800
    curriculum_size_range: Tuple[float, float] = (0.3, 0.9)
    size_range: Tuple[float, float] = (0.08, 0.8)


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
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def _iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


def _noisy_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.normal(0, 1, 4) * 0.1 * np.array([w, h, w, h])
    box = box + np.clip(noise, -20, 20)
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def _sample_point(rng: np.random.Generator, region: np.ndarray) -> Tuple[float, float]:
    ys, xs = np.nonzero(region)
    k = int(rng.integers(len(ys)))
    return float(xs[k]), float(ys[k])


def _batch(rng: np.random.Generator, cfg: SamConfig, opts: TrainOptions, size_range=None):
    """Scenes (long side = image size), their preprocessed images, and K targets each."""
    images, targets, owner, first = [], [], [], []
    for b in range(opts.batch_images):
        aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.67))))
        s = cfg.image_size
        h, w = (s, int(s / aspect)) if aspect > 1 else (int(s * aspect), s)
        sr = size_range or opts.size_range
        scene = generate_scene(rng, h, w, size_range=sr)
        while not scene.masks:
            scene = generate_scene(rng, h, w, size_range=sr)
        x, _ = P.preprocess_image(scene.image, s)
        images.append(x[0])
        for _ in range(opts.prompts_per_image):
            m = scene.masks[int(rng.integers(len(scene.masks)))]
            padded = np.zeros((s, s), dtype=bool)
            padded[:h, :w] = m
            targets.append(padded)
            owner.append(b)
            if rng.uniform() < 0.5:
                first.append(("point", np.array([_sample_point(rng, m)]), np.array([1.0])))
            else:
                box = _noisy_box(rng, m)
                first.append(("box", box.reshape(2, 2), np.array([2.0, 3.0])))
    return np.stack(images), np.stack(targets), np.array(owner), first


def _losses(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor, size: int):
    """logits [P,C,m,m], target [P,S,S] bool -> (per-mask loss [P,C], iou loss [P,C], pred masks)."""
    up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    t = target[:, None].float().expand_as(up)
    mask_loss = 20 * focal_loss(up, t) + dice_loss(up, t)
    pred = up > 0
    iou_true = _iou(pred, target[:, None].expand_as(pred)).detach()
    iou_loss = (iou_pred - iou_true) ** 2
    return mask_loss, iou_loss, pred


def train_step(sam, decoder: SamDecoderOnnx, rng: np.random.Generator, cfg: SamConfig, opts: TrainOptions,
               size_range=None):
    images, targets, owner, first = _batch(rng, cfg, opts, size_range)
    emb = sam.image_encoder(torch.from_numpy(images))
    emb = emb[torch.from_numpy(owner)]
    target = torch.from_numpy(targets)
    num = len(first)
    m = cfg.low_res_size

    # Round 1: one point (padded) or one box; multimask, lowest loss back-propagated.
    coords = np.zeros((num, 2, 2), np.float32)
    labels = np.full((num, 2), -1.0, np.float32)
    for i, (_, c, l) in enumerate(first):
        coords[i, : len(c)] = c
        labels[i, : len(l)] = l
    low, iou = decoder(emb, torch.from_numpy(coords), torch.from_numpy(labels),
                       torch.zeros(num, 1, m, m), torch.zeros(num))
    mask_loss, iou_loss, pred = _losses(low[:, 1:], target, iou[:, 1:], cfg.image_size)
    best = mask_loss.argmin(1)
    rows = torch.arange(num)
    loss = mask_loss[rows, best].mean() + iou_loss.mean()
    with torch.no_grad():
        prob = torch.sigmoid(F.interpolate(low[rows, 1 + best][:, None], (cfg.image_size,) * 2, mode="bilinear",
                                           align_corners=False)[:, 0])
        fg = (prob * target).flatten(1).sum(1) / target.flatten(1).sum(1).clamp(min=1)
        bg = (prob * ~target).flatten(1).sum(1) / (~target).flatten(1).sum(1).clamp(min=1)
    stats = {"round1_iou": float(_iou(pred[rows, best], target).mean()),
             "fg_prob": float(fg.mean()), "bg_prob": float(bg.mean())}
    prev_low = low[rows, 1 + best].detach()[:, None]
    prev_pred = pred[rows, best].numpy()

    # Correction rounds: a point from the error region, previous logits as mask prompt.
    pts: List[List[Tuple[float, float]]] = [[] for _ in range(num)]
    lbs: List[List[float]] = [[] for _ in range(num)]
    for i, (kind, c, l) in enumerate(first):
        pts[i] = [tuple(p) for p in c]
        lbs[i] = list(l)
    for r in range(opts.correction_rounds):
        for i in range(num):
            err = prev_pred[i] ^ targets[i]
            if err.any():
                x, y = _sample_point(rng, err)
                pts[i].append((x, y))
                lbs[i].append(1.0 if targets[i][int(y), int(x)] else 0.0)
            else:  # nothing to correct: repeat a point already given (no new information)
                pts[i].append(pts[i][0])
                lbs[i].append(lbs[i][0])
        n = max(len(p) for p in pts)
        coords = np.zeros((num, n, 2), np.float32)
        labels = np.full((num, n), -1.0, np.float32)
        for i in range(num):
            coords[i, : len(pts[i])] = pts[i]
            labels[i, : len(lbs[i])] = lbs[i]
        low, iou = decoder(emb, torch.from_numpy(coords), torch.from_numpy(labels), prev_low, torch.ones(num))
        mask_loss, iou_loss, pred = _losses(low[:, :1], target, iou[:, :1], cfg.image_size)
        loss = loss + mask_loss.mean() + iou_loss.mean()
        stats[f"round{r + 2}_iou"] = float(_iou(pred[:, 0], target).mean())
        prev_low = low[:, :1].detach()
        prev_pred = pred[:, 0].numpy()
    loss = loss / (1 + opts.correction_rounds)
    stats["loss"] = float(loss.detach())
    return loss, stats


def _lr(step: int, opts: TrainOptions) -> float:
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    frac = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, frac)))


def init_provenance(init: Optional[str]) -> Optional[dict]:
    """What a run continued from: the --init file and, from its .train.json when present, the steps,
    time and options that produced it (and what that one continued from), so a card can add them up."""
    if not init:
        return None
    info: dict = {"path": os.path.basename(init)}
    # train() writes <out>.train.json; a checkpoint copied under a new name keeps <stem>.train.json.
    for cand in (init + ".train.json", os.path.splitext(init)[0] + ".train.json"):
        if os.path.isfile(cand):
            with open(cand) as f:
                prev = json.load(f)
            info.update({k: prev.get(k) for k in ("steps", "elapsed_s", "options", "threads", "init")})
            if info["steps"] is None:  # a file written from a state (resumable run stopped early)
                info["steps"] = prev.get("step")
            if info["threads"] is None:
                info["threads"] = (prev.get("options") or {}).get("threads")
            break
    return info


def train(out_path: str, opts: TrainOptions, cfg: SamConfig = SMALL_CONFIG, state_path: Optional[str] = None,
          init: Optional[str] = None) -> dict:
    """Train (or resume) and write the official-format state dict to `out_path`.

    `init`: start from these weights (an official-format state dict, e.g. an earlier run's
    checkpoint) with a fresh optimizer and schedule; ignored when a state file resumes the run."""
    from tqdm import tqdm

    if opts.threads:
        torch.set_num_threads(opts.threads)
    state_path = state_path or out_path + ".state"
    torch.manual_seed(opts.seed)
    sam = build_sam(cfg).train()
    optim = torch.optim.AdamW(sam.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    step, elapsed, history = 0, 0.0, []
    if os.path.isfile(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        sam.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        log.warning("resuming from %s at step %d", state_path, step)
    elif init:
        sam.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
        log.warning("starting from the weights in %s", init)
    # Built after the weights are loaded: the wrapper holds the dense positional encoding computed
    # from the prompt encoder's (fixed, random) Gaussian matrix, which comes from the checkpoint.
    decoder = SamDecoderOnnx(sam)
    started = time.perf_counter() - elapsed
    bar = tqdm(total=opts.steps, initial=step, desc="train", dynamic_ncols=True)

    def save_state() -> None:
        torch.save({"model": sam.state_dict(), "optimizer": optim.state_dict(), "step": step,
                    "elapsed_s": time.perf_counter() - started, "history": history,
                    "options": dataclasses.asdict(opts), "config": cfg.to_dict()}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)

    while step < opts.steps:
        rng = np.random.default_rng([opts.seed, step])
        for g in optim.param_groups:
            g["lr"] = _lr(step, opts)
        size_range = opts.curriculum_size_range if step < opts.curriculum_steps else opts.size_range
        loss, stats = train_step(sam, decoder, rng, cfg, opts, size_range)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optim.step()
        step += 1
        history.append({"step": step, **{k: round(v, 4) for k, v in stats.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", iou1=f"{stats['round1_iou']:.2f}")
        if step % opts.checkpoint_every == 0 or step == opts.steps:
            save_state()
        if opts.max_minutes and time.perf_counter() - started > opts.max_minutes * 60:
            save_state()
            break
    bar.close()
    sam.eval()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save(sam.state_dict(), out_path)
    summary = {"steps": step, "elapsed_s": round(time.perf_counter() - started, 1), "options": dataclasses.asdict(opts),
               "config": cfg.to_dict(), "threads": torch.get_num_threads(), "init": init_provenance(init),
               "last_100": {k: float(np.mean([h[k] for h in history[-100:]])) for k in history[-1] if k != "step"}}
    with open(out_path + ".train.json", "w") as f:
        json.dump({**summary, "history": history}, f)
    return summary
