"""Sample images and overlays (numpy + PIL only)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["STYLE", "sample_image", "overlay", "mask_outline", "two_tone_outline", "candidates", "save_png"]


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


# One look for every picture samrt draws: `overlay` below, and the annotation page
# (samrt/app/annotate/static), which reads this table from the app's /api/config.
STYLE = {
    "fill_alpha": 0.45,                 # mask fill opacity over the image
    "outline_alpha": 1.0,               # mask outline, drawn opaque
    "outline_shade": 1.0,               # outline colour = fill colour * this (1: the colour itself, opaque)
    "outline_width": 3,                 # px at 512 px of image long side, scaled with the image (at least 1)
    "palette": [(30, 144, 255), (255, 140, 0), (50, 205, 50), (220, 20, 60), (148, 0, 211),
                (0, 206, 209), (255, 215, 0), (255, 105, 180), (139, 69, 19), (112, 128, 144)],
    # Foreground and background differ in shape, not colour alone: a disc with a plus, a square with a cross.
    "foreground": {"shape": "disc-plus", "color": (0, 200, 0)},
    "background": {"shape": "square-cross", "color": (220, 0, 0)},
    "marker_edge": (255, 255, 255),
    "marker_radius": 8,                 # px at 512 px of image long side, scaled (at least 4)
    "box_color": (255, 255, 255),
    # The mask being made (the page's working mask): its outline in two tones, dark outside and
    # light inside, so that it shows on any image, whatever the fill's colour does.
    "outline_tones": ((0, 0, 0), (255, 255, 255)),
    "proposal_alpha": 0.15,             # prefill proposals other than the highlighted one: faint fills
}


def _scaled(value: float, image_shape, minimum: int) -> int:
    return max(minimum, int(round(value * max(image_shape[:2]) / 512)))


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """HxW bool: the mask's pixels within `width` px (4-neighbourhood steps) of its boundary.

    A pixel is on the boundary when one of its 4 neighbours is outside the mask (the image
    border counts as outside). The page computes the same thing in JavaScript."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(max(1, int(width))):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return m & ~inner


def two_tone_outline(mask: np.ndarray, width: int = 1):
    """(outer, inner): `mask_outline(mask, width)` split into its outer ceil(width / 2) rings and
    the rest (empty for width 1), for an outline in two tones. The page splits it the same way."""
    width = max(1, int(width))
    outer = mask_outline(mask, (width + 1) // 2)
    return outer, mask_outline(mask, width) & ~outer


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, r: int, label: int) -> None:
    edge = STYLE["marker_edge"]
    w = max(1, r // 3)
    if label == 1:  # foreground: a green disc with a white plus
        draw.ellipse([x - r, y - r, x + r, y + r], fill=STYLE["foreground"]["color"], outline=edge, width=w)
        draw.line([x - r * 0.55, y, x + r * 0.55, y], fill=edge, width=w)
        draw.line([x, y - r * 0.55, x, y + r * 0.55], fill=edge, width=w)
    else:  # background: a red square with a white cross
        draw.rectangle([x - r, y - r, x + r, y + r], fill=STYLE["background"]["color"], outline=edge, width=w)
        d = r * 0.5
        draw.line([x - d, y - d, x + d, y + d], fill=edge, width=w)
        draw.line([x - d, y + d, x + d, y - d], fill=edge, width=w)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    points: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    color: Tuple[int, int, int] = STYLE["palette"][0],
    alpha: float = STYLE["fill_alpha"],
    box: Optional[np.ndarray] = None,
    outline: bool = True,
    two_tone: bool = False,
) -> np.ndarray:
    """HxWx3 uint8: a boolean HxW mask filled (`alpha`) and outlined (opaque) in `color`, or with
    `two_tone` in STYLE's two outline tones (`two_tone_outline`), the clicks marked by shape
    (foreground: a green disc with a plus; background: a red square with a cross), and an
    optional box (x0, y0, x1, y1) in pixels. Same look as the annotation page."""
    out = image.astype(np.float32).copy()
    m = np.asarray(mask, dtype=bool)
    col = np.asarray(color, dtype=np.float32)
    out[m] = out[m] * (1 - alpha) + col * alpha
    if outline:
        width = _scaled(STYLE["outline_width"], image.shape, 1)
        if two_tone:
            for ring, tone in zip(two_tone_outline(m, width), STYLE["outline_tones"]):
                out[ring] = tone
        else:
            out[mask_outline(m, width)] = col * STYLE["outline_shade"]
    img = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
        draw.rectangle([x0, y0, x1, y1], outline=STYLE["box_color"], width=_scaled(STYLE["outline_width"], image.shape, 1))
    if points is not None:
        r = _scaled(STYLE["marker_radius"], image.shape, 4)
        for (x, y), lab in zip(np.asarray(points), np.ones(len(points)) if labels is None else labels):
            _marker(draw, float(x), float(y), r, int(lab))
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
