"""segment_anything.SamPredictor's `predict`, on top of a `predict_batch` (numpy, no torch).

Both samrt predictors (in-process ONNX Runtime, and over Triton) inherit it, so the single-prompt
call is one code path: it adds the prompt dimension and calls `predict_batch`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import processing as P
from .prompts import one_prompt_as_batch
from .errors import InputError

__all__ = ["SamPredictorAPI"]


class SamPredictorAPI:
    is_image_set: bool = False

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    @staticmethod
    def _rgb(image: np.ndarray, image_format: str) -> np.ndarray:
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format: got {image_format!r}, expected 'RGB' or 'BGR'")
        image = P.check_image(np.asarray(image))
        return np.ascontiguousarray(image[..., ::-1]) if image_format == "BGR" else image

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        raise NotImplementedError

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """masks CxHxW (bool, or float32 logits), scores C, low-res logits Cx256x256."""
        self._require_image()
        point_coords, point_labels, box = one_prompt_as_batch(point_coords, point_labels, box)
        mask = None if mask_input is None else np.asarray(mask_input, dtype=np.float32)[None]
        masks, scores, low = self.predict_batch(point_coords, point_labels, box, mask, multimask_output, return_logits)
        return masks[0], scores[0], low[0]
