"""ResizeLongestSide: segment_anything.utils.transforms.ResizeLongestSide's coordinate methods,
for code written against `SamPredictor.transform`, without torch.

The geometry is `samrt.prompts` (the same functions the server applies); torch is imported only
by the `_torch` methods, so a client-only install never needs it.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from samrt import prompts

__all__ = ["ResizeLongestSide"]


def _torch():
    try:
        import torch  # torch: optional for the SDK (the *_torch methods only)
    except ImportError as e:  # pragma: no cover - the client-only install has no torch
        raise ImportError("the *_torch methods need torch (pip install torch); the numpy methods do not") from e
    return torch


class ResizeLongestSide:
    """Coordinates from original-image pixels to the frame whose longest side is `target_length`
    (the encoder's input size), and back. Sizes are (H, W); coordinates (x, y)."""

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Tuple[int, int]:
        """(h, w) after resizing so that the longest side is `long_side_length`."""
        return prompts.get_preprocess_shape(oldh, oldw, long_side_length)

    # -- numpy, as segment_anything: float64 out ---------------------------------------------
    def apply_coords(self, coords: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """[..., 2] (x, y) in original pixels -> the resized frame, float64."""
        return prompts.apply_coords(coords, tuple(original_size), self.target_length, dtype=np.float64)

    def apply_boxes(self, boxes: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """Bx4 XYXY boxes in original pixels -> the resized frame, float64."""
        return prompts.apply_boxes(boxes, tuple(original_size), self.target_length, dtype=np.float64)

    # -- torch, as segment_anything: float32 out, on the input's device ----------------------
    def apply_coords_torch(self, coords, original_size: Tuple[int, ...]):
        """[..., 2] torch tensor (x, y) in original pixels -> the resized frame, torch.float."""
        torch = _torch()
        sx, sy = prompts.coords_scale(tuple(original_size), self.target_length)
        out = torch.as_tensor(coords).clone().to(torch.float)
        out[..., 0] = out[..., 0] * sx
        out[..., 1] = out[..., 1] * sy
        return out

    def apply_boxes_torch(self, boxes, original_size: Tuple[int, ...]):
        """Bx4 XYXY torch tensor in original pixels -> the resized frame, torch.float."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    # -- the way back (not in segment_anything: the wire takes original pixels) ---------------
    def restore_coords(self, coords: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """apply_coords's inverse: [..., 2] (x, y) in the resized frame -> original pixels, float64."""
        return prompts.restore_coords(coords, tuple(original_size), self.target_length)

    def restore_boxes(self, boxes: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """apply_boxes's inverse: Bx4 XYXY in the resized frame -> original pixels, float64."""
        return self.restore_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)
