"""Row-major runs of a mask, the encoding the page draws (the files hold COCO RLE: samrt.masks)."""

from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["to_runs", "from_runs"]


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
