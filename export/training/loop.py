"""The training loop: seeded and resumable, with a learning-rate schedule and state files.

Every step's scenes come from (seed, step), so a run is the same with or without scene workers
and after a resume. A state file (`<out>.state`) holds the model, optimizer, step, elapsed time
and history; train() resumes from it when it exists. Progress is shown with tqdm.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from samrt.artifacts import check_new_or_own_file
from samrt.spec import SamConfig
from samrt.scenes import TrainingSample

from ..checkpoint import build_sam, config_from_state_dict, resize_image_input
from ..wrappers import PromptDecoder
from .feed import SceneFeed
from .options import SMALL_CONFIG, TrainOptions
from .provenance import run_summary, write_run_record
from .step import train_step

__all__ = ["lr_at", "train"]

log = logging.getLogger(__name__)


def lr_at(step: int, opts: TrainOptions) -> float:
    """The learning rate of step `step` (0-based): linear warm-up to opts.lr over opts.warmup steps,
    then cosine decay to 0 at opts.steps."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    frac = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, frac)))


@dataclasses.dataclass
class _Progress:
    """Where a run stands: steps done, its start on the perf_counter clock (earlier sessions' time
    subtracted, so elapsed() adds up across resumes) and the per-step statistics."""

    step: int
    started: float
    history: List[dict]

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _set_up_torch(opts: TrainOptions) -> torch.device:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _read_state(state_path: str, cfg: SamConfig) -> Optional[dict]:
    """The state file of an interrupted run, or None; ValueError when it holds another config."""
    if not os.path.isfile(state_path):
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if state.get("config", cfg.to_dict()) != cfg.to_dict():
        raise ValueError(f"state file {state_path} holds a run of config {state['config']}, "
                         f"expected {cfg.to_dict()} (same --image-size as the run it resumes)")
    return state


def _init_weights(init: str, cfg: SamConfig) -> Dict[str, torch.Tensor]:
    """An official-format state dict from `init`, its position tables resized to cfg's input size."""
    sd = torch.load(init, map_location="cpu", weights_only=True)
    init_size = config_from_state_dict(sd).image_size
    if init_size != cfg.image_size:  # e.g. fine-tune a 256 px model at 512 px
        sd = resize_image_input(sd, cfg.image_size)
        log.warning("resized the position tables of %s from %d px to %d px input", init, init_size, cfg.image_size)
    return sd


def _cpu_state_dict(sam: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in sam.state_dict().items()}


def _save_state(state_path: str, sam: torch.nn.Module, optim: torch.optim.Optimizer, progress: _Progress,
                opts: TrainOptions, cfg: SamConfig) -> None:
    """Writes the resumable state atomically (a .tmp file, then renamed over `state_path`)."""
    torch.save({"model": _cpu_state_dict(sam), "optimizer": optim.state_dict(), "step": progress.step,
                "elapsed_s": progress.elapsed(), "history": progress.history,
                "options": dataclasses.asdict(opts), "config": cfg.to_dict()}, state_path + ".tmp")
    os.replace(state_path + ".tmp", state_path)


def _optimizer_step(sam, decoder: PromptDecoder, optim: torch.optim.Optimizer, samples: List[TrainingSample],
                    seed: np.random.SeedSequence, step: int, cfg: SamConfig, opts: TrainOptions) -> Dict[str, float]:
    """Scheduled lr, train_step's loss back-propagated, gradients clipped to norm 1, one AdamW step."""
    for g in optim.param_groups:
        g["lr"] = lr_at(step, opts)
    loss, stats = train_step(sam, decoder, samples, seed, cfg, opts)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
    optim.step()
    return stats


def _run_steps(sam, decoder: PromptDecoder, optim: torch.optim.Optimizer, progress: _Progress, cfg: SamConfig,
               opts: TrainOptions, state_path: str) -> None:
    """Steps from progress.step to opts.steps (or until opts.max_minutes), a state file every
    opts.checkpoint_every steps, at the end and when time runs out."""
    from tqdm import tqdm  # tqdm: the train extra

    bar = tqdm(total=opts.steps, initial=progress.step, desc="train", dynamic_ncols=True)
    feed = SceneFeed(cfg, opts)
    try:
        while progress.step < opts.steps:
            samples, seed = feed.get(progress.step)
            stats = _optimizer_step(sam, decoder, optim, samples, seed, progress.step, cfg, opts)
            progress.step += 1
            progress.history.append({"step": progress.step, "time_s": round(progress.elapsed(), 2),
                                     **{k: round(v, 4) for k, v in stats.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", iou1=f"{stats['round1_iou']:.2f}")
            if progress.step % opts.checkpoint_every == 0 or progress.step == opts.steps:
                _save_state(state_path, sam, optim, progress, opts, cfg)
            if opts.max_minutes and progress.elapsed() > opts.max_minutes * 60:
                _save_state(state_path, sam, optim, progress, opts, cfg)
                break
    finally:
        feed.close()
    bar.close()


def train(out_path: str, opts: TrainOptions, cfg: SamConfig = SMALL_CONFIG, state_path: Optional[str] = None,
          init: Optional[str] = None) -> dict:
    """Train (or resume) and write the official-format state dict to `out_path`.

    Writes `out_path`, `<out_path>.train.json` (run_summary plus the per-step history) and the
    resumable state file `state_path` (default `<out_path>.state`); when that file exists the run
    resumes from it. Returns the summary (provenance.run_summary).

    `init`: start from these weights (an official-format state dict, e.g. an earlier run's
    checkpoint; position tables resized when its input size differs from cfg's) with a fresh
    optimizer and schedule; ignored when a state file resumes the run.

    Raises ValueError when the state file holds a run of another config, or opts.loss_size is not
    a divisor of the input size of at least the low-res mask side."""
    state_path = state_path or out_path + ".state"
    # Never overwrite weights samrt train did not write (its own carry a .train.json or .state beside them).
    check_new_or_own_file(out_path, [".train.json", ".state"], "train")
    device = _set_up_torch(opts)
    torch.manual_seed(opts.seed)
    sam = build_sam(cfg).train()
    state = _read_state(state_path, cfg)
    if state is not None:
        sam.load_state_dict(state["model"])
        log.warning("resuming from %s at step %d", state_path, state["step"])
    elif init:
        sam.load_state_dict(_init_weights(init, cfg))
        log.warning("starting from the weights in %s", init)
    sam.to(device)
    optim = torch.optim.AdamW(sam.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    if state is not None:
        optim.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
    # Built after the weights are loaded: the wrapper holds the dense positional encoding computed
    # from the prompt encoder's (fixed, random) Gaussian matrix, which comes from the checkpoint.
    decoder = PromptDecoder(sam)
    if state is not None:
        progress = _Progress(state["step"], time.perf_counter() - state["elapsed_s"], state["history"])
    else:
        progress = _Progress(0, time.perf_counter(), [])

    _run_steps(sam, decoder, optim, progress, cfg, opts, state_path)

    sam.eval()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save(_cpu_state_dict(sam), out_path)
    summary = run_summary(progress.step, progress.elapsed(), opts, cfg, init, device, progress.history)
    write_run_record(out_path, summary, progress.history)
    return summary
