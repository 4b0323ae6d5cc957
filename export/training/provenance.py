"""What a run records about itself in `<out>.train.json`: where it ran, what it continued from,
its options, config and per-step history. The model card (`cards.py`) reads this chain back."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import List, Optional

import numpy as np
import torch

from samrt.spec import SamConfig

from .options import TrainOptions

__all__ = ["device_name", "init_provenance", "run_summary", "write_run_record"]


def device_name(device: torch.device) -> str:
    """The machine a run trains on, in words: the GPU's name, or the CPU's and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
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


def run_summary(step: int, elapsed_s: float, opts: TrainOptions, cfg: SamConfig, init: Optional[str],
                device: torch.device, history: List[dict]) -> dict:
    """What train() returns: steps done, time, options, config, threads, --init provenance, device,
    and each statistic's mean over the last 100 steps."""
    return {"steps": step, "elapsed_s": round(elapsed_s, 1), "options": dataclasses.asdict(opts),
            "config": cfg.to_dict(), "threads": torch.get_num_threads(), "init": init_provenance(init),
            "device": device_name(device),
            "last_100": {k: float(np.mean([h[k] for h in history[-100:] if k in h]))
                         for k in history[-1] if k not in ("step", "time_s")}}


def write_run_record(out_path: str, summary: dict, history: List[dict]) -> str:
    """Writes `<out_path>.train.json` (the summary and the per-step history); returns its path."""
    path = out_path + ".train.json"
    with open(path, "w") as f:
        json.dump({**summary, "history": history}, f)
    return path
