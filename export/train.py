"""Train a small SAM (the official classes) on generated scenes, following the paper's recipe.

Per step: B scenes are encoded once; K targets per scene are prompted with a foreground point
or a noisy box (sigma 10% of the box side, at most 20 px); then further points are sampled
from the error region with the previous low-res logits as mask prompt. A first point uses
multimask output and back-propagates only the lowest-loss mask; a first box and later rounds
use the single mask token. Loss: focal and dice 20:1 on masks, MSE on the IoU head.

Seeded and resumable: every step's scenes come from (seed, step), and a state file holds the
model, optimizer and step. Progress is shown with tqdm.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from samrt.scenes import TRAIN_SEED
from samrt import processing as P
from samrt.spec import SamConfig
from samrt.train_data import SceneSampling, TrainingSample, training_sample

from .checkpoint import build_sam, config_from_state_dict, resize_image_input
from .wrappers import SamDecoderOnnx

__all__ = ["SMALL_CONFIG", "TrainOptions", "train", "init_provenance", "focal_loss", "dice_loss", "error_points", "round1_selection",
           "SceneFeed", "collate"]

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
    # Scenes are drawn at a long side in this range and an aspect ratio (w/h) in that one, then
    # resized to the input. (192, 640) and (0.5, 2.0) is how the held-out set is drawn (from
    # another seed stream); (256, 256) draws at the input size, the cheapest on a CPU.
    scene_long_side: Tuple[int, int] = (256, 256)
    aspect_range: Tuple[float, float] = (0.6, 1.67)
    device: str = "cpu"
    workers: int = 0  # scene-generating processes (0: in the training process)
    # Side of the grid the mask loss is computed on: 0 = the input size. A smaller one (a divisor
    # of the input size, at least the low-res mask side) compares the logits with the targets'
    # area coverage pooled to that grid: at 512 px input, 256 keeps ~half the step time on a CPU.
    loss_size: int = 0


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


class SceneFeed:
    """Each step's training samples, drawn from (seed, step): generated in the training process
    (workers=0) or by a pool of worker processes that keeps `ahead` steps in flight (steps are
    asked for in order)."""

    def __init__(self, cfg: SamConfig, opts: TrainOptions, ahead: int = 4) -> None:
        self.cfg, self.opts, self.ahead = cfg, opts, ahead
        self.pool = None
        self.pending: "collections.deque" = collections.deque()
        if opts.workers > 0:
            # fork, as torch's DataLoader does: workers run numpy + PIL only, never CUDA or torch.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(opts.workers, mp_context=ctx)

    def _seeds(self, step: int) -> List[np.random.SeedSequence]:
        """One seed per image, and a last one for the correction rounds' point sampling."""
        return np.random.SeedSequence([self.opts.seed, step]).spawn(self.opts.batch_images + 1)

    def _spec(self, step: int) -> SceneSampling:
        o = self.opts
        size_range = o.curriculum_size_range if step < o.curriculum_steps else o.size_range
        return SceneSampling(image_size=self.cfg.image_size, prompts_per_image=o.prompts_per_image,
                             size_range=tuple(size_range), long_side=tuple(o.scene_long_side),
                             aspect_range=tuple(o.aspect_range))

    def _submit(self, step: int) -> None:
        spec, seeds = self._spec(step), self._seeds(step)
        self.pending.append((step, [self.pool.submit(training_sample, s, spec) for s in seeds[:-1]], seeds[-1]))

    def get(self, step: int) -> Tuple[List[TrainingSample], np.random.SeedSequence]:
        if self.pool is None:
            seeds = self._seeds(step)
            spec = self._spec(step)
            return [training_sample(s, spec) for s in seeds[:-1]], seeds[-1]
        if self.pending and self.pending[0][0] != step:
            raise ValueError(f"SceneFeed.get: got step {step}, expected the next step {self.pending[0][0]}")
        nxt = self.pending[-1][0] + 1 if self.pending else step
        while len(self.pending) < self.ahead:
            self._submit(nxt)
            nxt += 1
        _, futures, extra = self.pending.popleft()
        return [f.result() for f in futures], extra

    def close(self) -> None:
        if self.pool is not None:
            for _, futures, _ in self.pending:
                for f in futures:
                    f.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def collate(samples: List[TrainingSample], image_size: int, device: torch.device):
    """Samples -> (normalised zero-padded images [B,3,S,S], soft targets [P,S,S] in 0..1,
    owner image of each target [P], first-prompt coords [P,2,2] and labels [P,2]), on `device`."""
    images = np.stack([P.normalize_and_pad(smp.image, image_size) for smp in samples])
    targets = np.concatenate([smp.targets for smp in samples])
    owner = np.repeat(np.arange(len(samples)), [len(smp.targets) for smp in samples])
    coords = np.concatenate([smp.coords for smp in samples])
    labels = np.concatenate([smp.labels for smp in samples])
    return (torch.from_numpy(images).to(device), torch.from_numpy(targets).to(device).float() / 255,
            torch.from_numpy(owner).to(device), torch.from_numpy(coords).to(device),
            torch.from_numpy(labels).to(device))


def _losses(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor, size: int):
    """logits [P,C,m,m], soft target [P,S,S] -> (per-mask loss [P,C], iou loss [P,C], pred masks [P,C,S,S])."""
    up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    t = target[:, None].expand_as(up)
    mask_loss = 20 * focal_loss(up, t) + dice_loss(up, t)
    pred = up > 0
    iou_true = _iou(pred, (target > 0.5)[:, None].expand_as(pred)).detach()
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


def train_step(sam, decoder: SamDecoderOnnx, samples: List[TrainingSample], seed: np.random.SeedSequence,
               cfg: SamConfig, opts: TrainOptions):
    device = next(sam.parameters()).device
    images, target, owner, coords, labels = collate(samples, cfg.image_size, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    size = opts.loss_size or cfg.image_size
    if size != cfg.image_size:
        if cfg.image_size % size or size < cfg.low_res_size:
            raise ValueError(f"loss_size: got {size}, expected a divisor of the input size {cfg.image_size} "
                             f"of at least the low-res mask side {cfg.low_res_size}")
        target = F.avg_pool2d(target[:, None], cfg.image_size // size)[:, 0]  # area coverage on the loss grid
    scale = cfg.image_size / size  # loss-grid pixel -> input pixel
    hard = target > 0.5
    emb = sam.image_encoder(images)[owner]
    num = len(owner)
    m = cfg.low_res_size

    # Round 1: one point (padded) or one box. A point is ambiguous: multimask output, only the
    # lowest-loss mask back-propagated. A box is not: the single-mask token, as SamPredictor
    # answers a box with multimask_output=False.
    low, iou = decoder(emb, coords, labels, torch.zeros(num, 1, m, m, device=device), torch.zeros(num, device=device))
    mask_loss, iou_loss, pred = _losses(low, target, iou, size)
    best, trained = round1_selection(mask_loss, labels[:, 0] == 2)
    rows = torch.arange(num, device=device)
    loss = mask_loss[rows, best].mean() + (iou_loss * trained).sum() / trained.sum()
    with torch.no_grad():
        prob = torch.sigmoid(F.interpolate(low[rows, best][:, None], (size,) * 2, mode="bilinear",
                                           align_corners=False)[:, 0])
        fg = (prob * hard).flatten(1).sum(1) / hard.flatten(1).sum(1).clamp(min=1)
        bg = (prob * ~hard).flatten(1).sum(1) / (~hard).flatten(1).sum(1).clamp(min=1)
    stats = {"round1_iou": _iou(pred[rows, best], hard).mean(), "fg_prob": fg.mean(), "bg_prob": bg.mean()}
    prev_low = low[rows, best].detach()[:, None]
    prev_pred = pred[rows, best]

    # Correction rounds: a point from the error region, previous logits as mask prompt, single mask.
    for r in range(opts.correction_rounds):
        c, lb = error_points(prev_pred, hard, gen)
        c = (c + 0.5) * scale - 0.5  # the loss-grid pixel's centre in input pixels (identity at scale 1)
        coords, labels = torch.cat([coords, c], 1), torch.cat([labels, lb], 1)
        low, iou = decoder(emb, coords, labels, prev_low, torch.ones(num, device=device))
        mask_loss, iou_loss, pred = _losses(low[:, :1], target, iou[:, :1], size)
        loss = loss + mask_loss.mean() + iou_loss.mean()
        stats[f"round{r + 2}_iou"] = _iou(pred[:, 0], hard).mean()
        prev_low = low[:, :1].detach()
        prev_pred = pred[:, 0]
    loss = loss / (1 + opts.correction_rounds)
    stats["loss"] = loss.detach()
    values = torch.stack([v.float() for v in stats.values()]).tolist()  # one device sync per step
    return loss, dict(zip(stats, values))


def _lr(step: int, opts: TrainOptions) -> float:
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    frac = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, frac)))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


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
            info.update({k: prev.get(k) for k in ("steps", "elapsed_s", "options", "config", "threads", "device", "init")})
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
    device = torch.device(opts.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state_path = state_path or out_path + ".state"
    torch.manual_seed(opts.seed)
    sam = build_sam(cfg).train()
    step, elapsed, history = 0, 0.0, []
    state = None
    if os.path.isfile(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("config", cfg.to_dict()) != cfg.to_dict():
            raise ValueError(f"state file {state_path} holds a run of config {state['config']}, "
                             f"expected {cfg.to_dict()} (same --image-size as the run it resumes)")
        sam.load_state_dict(state["model"])
        step, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        log.warning("resuming from %s at step %d", state_path, step)
    elif init:
        sd = torch.load(init, map_location="cpu", weights_only=True)
        init_size = config_from_state_dict(sd).image_size
        if init_size != cfg.image_size:  # e.g. fine-tune a 256 px model at 512 px
            sd = resize_image_input(sd, cfg.image_size)
            log.warning("resized the position tables of %s from %d px to %d px input", init, init_size, cfg.image_size)
        sam.load_state_dict(sd)
        log.warning("starting from the weights in %s", init)
    sam.to(device)
    optim = torch.optim.AdamW(sam.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    if state is not None:
        optim.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
    # Built after the weights are loaded: the wrapper holds the dense positional encoding computed
    # from the prompt encoder's (fixed, random) Gaussian matrix, which comes from the checkpoint.
    decoder = SamDecoderOnnx(sam)
    started = time.perf_counter() - elapsed
    bar = tqdm(total=opts.steps, initial=step, desc="train", dynamic_ncols=True)

    def cpu_state_dict() -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in sam.state_dict().items()}

    def save_state() -> None:
        torch.save({"model": cpu_state_dict(), "optimizer": optim.state_dict(), "step": step,
                    "elapsed_s": time.perf_counter() - started, "history": history,
                    "options": dataclasses.asdict(opts), "config": cfg.to_dict()}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)

    feed = SceneFeed(cfg, opts)
    try:
        while step < opts.steps:
            samples, seed = feed.get(step)
            for g in optim.param_groups:
                g["lr"] = _lr(step, opts)
            loss, stats = train_step(sam, decoder, samples, seed, cfg, opts)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
            optim.step()
            step += 1
            history.append({"step": step, "time_s": round(time.perf_counter() - started, 2),
                            **{k: round(v, 4) for k, v in stats.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", iou1=f"{stats['round1_iou']:.2f}")
            if step % opts.checkpoint_every == 0 or step == opts.steps:
                save_state()
            if opts.max_minutes and time.perf_counter() - started > opts.max_minutes * 60:
                save_state()
                break
    finally:
        feed.close()
    bar.close()
    sam.eval()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save(cpu_state_dict(), out_path)
    summary = {"steps": step, "elapsed_s": round(time.perf_counter() - started, 1), "options": dataclasses.asdict(opts),
               "config": cfg.to_dict(), "threads": torch.get_num_threads(), "init": init_provenance(init),
               "device": _device_name(device),
               "last_100": {k: float(np.mean([h[k] for h in history[-100:] if k in h]))
                            for k in history[-1] if k not in ("step", "time_s")}}
    with open(out_path + ".train.json", "w") as f:
        json.dump({**summary, "history": history}, f)
    return summary
