"""Training samples from generated scenes: numpy + PIL only, so scene worker processes stay light.

One sample is one scene at its own size and aspect ratio, resized (longest side) to the model's
input like any image samrt serves, with K targets drawn from its instances. Each target carries
its ground truth resized to the input frame as area coverage (0..255: a thin bar keeps its
partial pixels instead of vanishing), and its first prompt: a foreground point (a pixel of the
instance) or a noisy box (sigma 10% of the box side, at most 20 px), both drawn in the scene's
own pixels and then scaled to the input frame, as SamPredictor scales a user's prompts.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np
from PIL import Image

from samrt import processing as P
from samrt.masks import masks_to_boxes

from .generate import generate_scene

__all__ = ["SceneSampling", "TrainingSample", "training_sample", "noisy_box", "sample_point"]


@dataclasses.dataclass(frozen=True)
class SceneSampling:
    image_size: int  # the model's input side
    prompts_per_image: int
    size_range: Tuple[float, float]  # object sizes as fractions of the short side
    long_side: Tuple[int, int] = (256, 256)  # scenes are drawn at a long side in this range...
    aspect_range: Tuple[float, float] = (0.6, 1.67)  # ...and an aspect ratio (w/h) in this one


@dataclasses.dataclass
class TrainingSample:
    image: np.ndarray  # resized uint8 RGB, (h, w, 3), longest side = image_size (not padded)
    targets: np.ndarray  # uint8 [K, image_size, image_size]: area coverage x 255, zero padded
    coords: np.ndarray  # float32 [K, 2, 2]: one point (second row padding) or the box's two corners
    labels: np.ndarray  # float32 [K, 2]: (1, -1) for a point, (2, 3) for a box
    kinds: List[str]  # shape name of each target's instance


def sample_point(rng: np.random.Generator, region: np.ndarray) -> Tuple[float, float]:
    """(x, y) of a pixel of `region`, uniformly."""
    ys, xs = np.nonzero(region)
    k = int(rng.integers(len(ys)))
    return float(xs[k]), float(ys[k])


def noisy_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The mask's XYXY box with each coordinate moved by N(0, 10% of the side), at most 20 px."""
    box = masks_to_boxes(mask).astype(np.float64)
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.normal(0, 1, 4) * 0.1 * np.array([w, h, w, h])
    box = box + np.clip(noise, -20, 20)
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def _coverage(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool (H, W) -> uint8 (h, w): the fraction of each output pixel the mask covers, x 255."""
    if mask.shape == (h, w):
        return mask.astype(np.uint8) * 255
    f = Image.fromarray(mask.astype(np.float32), mode="F").resize((w, h), Image.BOX)
    return np.clip(np.rint(np.asarray(f) * 255), 0, 255).astype(np.uint8)


def training_sample(seed: np.random.SeedSequence, spec: SceneSampling) -> TrainingSample:
    """One scene and K prompted targets, all drawn from `seed` (so a step's data is reproducible)."""
    rng = np.random.default_rng(seed)
    lo, hi = spec.long_side
    a0, a1 = spec.aspect_range
    while True:
        ls = int(rng.integers(lo, hi + 1))
        aspect = float(np.exp(rng.uniform(np.log(a0), np.log(a1))))
        h, w = (ls, max(16, int(ls / aspect))) if aspect > 1 else (max(16, int(ls * aspect)), ls)
        scene = generate_scene(rng, h, w, size_range=spec.size_range)
        if scene.masks:
            break
    s = spec.image_size
    image = P.resize_longest_side(scene.image, s)
    rh, rw = image.shape[:2]
    sx, sy = rw / w, rh / h
    k = spec.prompts_per_image
    targets = np.zeros((k, s, s), np.uint8)
    coords = np.zeros((k, 2, 2), np.float32)
    labels = np.full((k, 2), -1.0, np.float32)
    kinds = []
    for i in range(k):
        j = int(rng.integers(len(scene.masks)))
        m = scene.masks[j]
        kinds.append(scene.kinds[j])
        targets[i, :rh, :rw] = _coverage(m, rh, rw)
        if rng.uniform() < 0.5:
            x, y = sample_point(rng, m)
            coords[i, 0] = (x * sx, y * sy)
            labels[i, 0] = 1.0
        else:
            box = noisy_box(rng, m)
            coords[i] = box.reshape(2, 2) * (sx, sy)
            labels[i] = (2.0, 3.0)
    return TrainingSample(image=image, targets=targets, coords=coords, labels=labels, kinds=kinds)
