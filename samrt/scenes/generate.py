"""Synthetic scenes with exact ground-truth instance masks (numpy + PIL, no torch).

Varied shapes (ellipses, rotated rectangles, convex polygons, concave stars, rings with holes,
thin bars), textures (flat, stripes, checker, noise) and colours, occlusion by drawing order,
objects from tiny to large on cluttered backgrounds, at any size and aspect ratio, and the
part/whole ambiguity SAM is built for: some objects carry a distinct part, and both the whole
object and the part are ground-truth instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Scene", "generate_scene", "scene_for_index", "EVAL_SEED", "TRAIN_SEED"]

TRAIN_SEED = 1
EVAL_SEED = 20_231_105  # the held-out evaluation set draws from this stream only


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    masks: List[np.ndarray] = field(default_factory=list)  # visible HxW bool per instance
    kinds: List[str] = field(default_factory=list)  # shape name, or "part"
    parent: List[int] = field(default_factory=list)  # for a part: index of its whole, else -1


_SHAPES = ("ellipse", "rectangle", "polygon", "star", "ring", "bar")


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int, size: float) -> np.ndarray:
    """A full (unoccluded) mask of one shape of about `size` pixels across."""
    canvas = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h
    r = size / 2
    ang = rng.uniform(0, np.pi)
    if kind in ("ellipse", "ring"):
        rx, ry = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.4, 1.0)
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        if kind == "ring":
            f = rng.uniform(0.35, 0.65)
            d.ellipse([cx - rx * f, cy - ry * f, cx + rx * f, cy + ry * f], fill=0)
    elif kind in ("rectangle", "bar"):
        a, b = (r, r * rng.uniform(0.3, 1.0)) if kind == "rectangle" else (r * 1.6, max(1.0, rng.uniform(1.0, 3.5)))
        pts = [(-a, -b), (a, -b), (a, b), (-a, b)]
        c, s = np.cos(ang), np.sin(ang)
        d.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=255)
    elif kind == "polygon":
        n = int(rng.integers(3, 8))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rr = r * rng.uniform(0.7, 1.0, n)
        d.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(rr, t)], fill=255)
    elif kind == "star":
        n = int(rng.integers(4, 8))
        inner = rng.uniform(0.3, 0.6)
        t = ang + np.arange(2 * n) * np.pi / n
        rr = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        d.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(rr, t)], fill=255)
    return np.asarray(canvas) > 127


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An HxWx3 float texture: flat colour, stripes, checker or noise between two colours."""
    c1 = rng.uniform(0, 255, 3)
    c2 = np.clip(c1 + rng.normal(0, 60, 3), 0, 255)
    kind = rng.choice(["flat", "flat", "stripes", "checker", "noise"])
    if kind == "flat":
        t = np.zeros((h, w))
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(4, 16)
        if kind == "stripes":
            a = rng.uniform(0, np.pi)
            t = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0).astype(np.float32)
        elif kind == "checker":
            t = ((xx // period + yy // period) % 2).astype(np.float32)
        else:
            t = rng.uniform(0, 1, (h, w)).astype(np.float32)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, cx, cy = rng.uniform(40, 215, 3), rng.normal(0, 60, 3), rng.normal(0, 60, 3)
    bg = c0 + cx * (xx / w)[..., None] + cy * (yy / h)[..., None]
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(5, 25))):  # low-contrast clutter that is not an object
        x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, max(3, 0.03 * max(h, w)))
        col = tuple(int(v) for v in np.clip(bg[int(min(y, h - 1)), int(min(x, w - 1))] + rng.normal(0, 12, 3), 0, 255))
        d.ellipse([x - s, y - s, x + s, y + s], fill=col)
    return np.asarray(canvas).astype(np.float32) + rng.normal(0, rng.uniform(1, 8), (h, w, 3))


def generate_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: Tuple[int, int] = (2, 7),
    min_visible: int = 24,
    part_probability: float = 0.3,
    size_range: Tuple[float, float] = (0.08, 0.8),
) -> Scene:
    """One scene with its visible instance masks (later objects occlude earlier ones).

    `size_range`: object sizes as fractions of the short side, drawn log-uniformly."""
    h, w = int(height), int(width)
    image = _background(rng, h, w)
    full: List[np.ndarray] = []
    kinds: List[str] = []
    parent: List[int] = []
    side = min(h, w)
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        kind = str(rng.choice(_SHAPES))
        size = side * float(np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]))))
        m = _shape_mask(rng, kind, h, w, size)
        if m.sum() < min_visible:
            continue
        tex = _texture(rng, h, w)
        image[m] = tex[m]
        for j in range(len(full)):
            full[j] &= ~m
        full.append(m)
        kinds.append(kind)
        parent.append(-1)
        if kind != "bar" and rng.uniform() < part_probability and m.sum() > 400:
            ys, xs = np.nonzero(m)
            k = int(rng.integers(len(ys)))
            pr = np.sqrt(m.sum()) * rng.uniform(0.15, 0.3)
            canvas = Image.new("L", (w, h), 0)
            ImageDraw.Draw(canvas).ellipse([xs[k] - pr, ys[k] - pr, xs[k] + pr, ys[k] + pr], fill=255)
            part = (np.asarray(canvas) > 127) & m
            if part.sum() >= min_visible and part.sum() < 0.6 * m.sum():
                ptex = _texture(rng, h, w)
                image[part] = ptex[part]
                full.append(part)
                kinds.append("part")
                parent.append(len(full) - 2)
    image = np.clip(image, 0, 255).astype(np.uint8)
    scene = Scene(image=image)
    remap = {}
    for i, (m, k, p) in enumerate(zip(full, kinds, parent)):
        if p >= 0:  # a part occludes nothing of its own whole: the whole is the union
            continue
        vis = m.copy()
        for j, (pm, pk, pp) in enumerate(zip(full, kinds, parent)):
            if pp == i:
                vis |= pm
        if vis.sum() >= min_visible:
            remap[i] = len(scene.masks)
            scene.masks.append(vis)
            scene.kinds.append(k)
            scene.parent.append(-1)
    for i, (m, k, p) in enumerate(zip(full, kinds, parent)):
        if p >= 0 and p in remap and m.sum() >= min_visible:
            scene.masks.append(m)
            scene.kinds.append("part")
            scene.parent.append(remap[p])
    return scene


def scene_for_index(index: int, stream: int = EVAL_SEED, long_side: Optional[int] = None) -> Scene:
    """Scene `index` of a seeded stream, with a size and aspect ratio drawn from the same seed."""
    rng = np.random.default_rng([stream, index])
    ls = long_side or int(rng.integers(192, 640))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    h, w = (ls, max(16, int(ls / aspect))) if aspect > 1 else (max(16, int(ls * aspect)), ls)
    return generate_scene(rng, h, w)
