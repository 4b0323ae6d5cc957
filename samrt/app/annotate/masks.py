"""Mask encodings: row-major runs for the page, COCO RLE for the files (pycocotools)."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

__all__ = ["to_runs", "from_runs", "coco_rle", "from_coco_rle", "bbox_xywh"]


def to_runs(mask: np.ndarray) -> List[int]:
    """HxW bool -> run lengths in row-major order, alternating off/on, starting with an off run
    (0 when the first pixel is on). The page decodes these (static/draw.js `decodeRuns`)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def from_runs(runs: List[int], height: int, width: int) -> np.ndarray:
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    if flat.size != height * width:
        raise ValueError(f"runs: got {flat.size} pixels, expected {height}x{width}")
    return flat.reshape(height, width)


def coco_rle(mask: np.ndarray) -> Dict:
    """HxW bool -> COCO RLE {'size': [H, W], 'counts': str} (SA-1B's `segmentation`)."""
    from pycocotools import mask as mask_utils  # pycocotools: the client extra

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def from_coco_rle(rle: Dict) -> np.ndarray:
    from pycocotools import mask as mask_utils  # pycocotools: the client extra

    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}).astype(bool)


def bbox_xywh(mask: np.ndarray) -> List[float]:
    """Tight box [x, y, w, h] in pixels (SA-1B / COCO convention); [0, 0, 0, 0] for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
