"""Each step's training samples, and the batch tensors they become.

The samples themselves (`samrt.scenes.train_data`) are torch-free, so worker processes can draw them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
from typing import List, Tuple

import numpy as np
import torch

from samrt import processing as P
from samrt.spec import SamConfig
from samrt.scenes import SceneSampling, TrainingSample, training_sample

from .options import TrainOptions

__all__ = ["SceneFeed", "collate"]


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
        """Step `step`'s samples (batch_images of them) and the seed of its correction clicks.

        Raises ValueError when a worker pool is asked for a step other than the next one."""
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
