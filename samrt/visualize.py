"""Sample images and overlays (numpy + PIL only)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["sample_image", "overlay", "candidates", "save_png"]


def sample_image(height: int = 480, width: int = 640, seed: int = 0) -> Tuple[np.ndarray, Tuple[int, int]]:
    """A generated RGB scene (textured background, a few shapes) and a click (x, y) on its main object."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width * 90 + 60, yy / height * 70 + 80, np.full_like(xx, 120.0, dtype=float)], -1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy, r = int(width * 0.42), int(height * 0.5), int(min(height, width) * 0.22)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 60, 50))
    draw.rectangle([int(width * 0.7), int(height * 0.15), int(width * 0.9), int(height * 0.45)], fill=(40, 160, 70))
    draw.polygon([(int(width * 0.12), int(height * 0.9)), (int(width * 0.3), int(height * 0.62)),
                  (int(width * 0.4), int(height * 0.92))], fill=(230, 210, 60))
    return np.asarray(img), (cx, cy)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    points: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    color: Tuple[int, int, int] = (30, 144, 255),
    alpha: float = 0.55,
) -> np.ndarray:
    """Blend a boolean HxW mask onto an HxWx3 image and mark the clicks (green fg, red bg)."""
    out = image.astype(np.float32).copy()
    m = np.asarray(mask, dtype=bool)
    out[m] = out[m] * (1 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    img = Image.fromarray(out.astype(np.uint8))
    if points is not None:
        draw = ImageDraw.Draw(img)
        r = max(4, min(image.shape[:2]) // 80)
        for (x, y), lab in zip(np.asarray(points), np.ones(len(points)) if labels is None else labels):
            fill = (0, 200, 0) if lab == 1 else (220, 0, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return np.asarray(img)


def candidates(image: np.ndarray, masks: np.ndarray, scores: np.ndarray, points: Optional[np.ndarray] = None,
               labels: Optional[np.ndarray] = None, gap: int = 8) -> np.ndarray:
    """The multimask answer side by side: one overlay per candidate mask, captioned with its
    predicted IoU, the highest-scored one marked (as segment_anything's notebooks show them)."""
    if len(masks) != len(scores):
        raise ValueError(f"got {len(masks)} masks and {len(scores)} scores, expected one score per mask")
    h, w = image.shape[:2]
    best = int(np.argmax(scores))
    sheet = Image.new("RGB", (len(masks) * w + (len(masks) - 1) * gap, h), (255, 255, 255))
    for i, (m, s) in enumerate(zip(masks, scores)):
        panel = Image.fromarray(overlay(image, m, points, labels))
        draw = ImageDraw.Draw(panel)
        text = f"mask {i}: predicted IoU {float(s):.3f}" + ("  (best)" if i == best else "")
        draw.rectangle([0, 0, 8 + 6 * len(text), 16], fill=(0, 0, 0))
        draw.text((4, 3), text, fill=(255, 255, 255))
        sheet.paste(panel, (i * (w + gap), 0))
    return np.asarray(sheet)


def save_png(path: str, image: np.ndarray) -> str:
    Image.fromarray(np.asarray(image)).save(path)
    return path
