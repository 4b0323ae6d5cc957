"""TritonSamPredictor: segment_anything.SamPredictor's API over a samrt server.

Switching existing code is one line: `predictor = TritonSamPredictor(SamClient(url))` instead
of `SamPredictor(sam)`. Same methods, arguments, output shapes and dtypes (numpy).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from samrt import processing as P
from samrt import prompts
from samrt.predictor_api import SamPredictorAPI

from samrt.errors import ImageNotCachedError

from ._client import SamClient

__all__ = ["TritonSamPredictor"]


class TritonSamPredictor(SamPredictorAPI):
    def __init__(self, client: SamClient, keep_image: bool = True) -> None:
        """`keep_image`: hold the image so that an evicted embedding is re-encoded transparently."""
        self.client = client
        self.keep_image = keep_image
        info = client.model_info()
        self.image_size = info["image_size"]
        self.low_res_size = info["low_res_size"]
        self.reset_image()

    # -- image -----------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        image = self._rgb(image, image_format)
        self.reset_image()
        result = self.client.encode(image)
        self.image_id = result.image_id
        self.original_size = result.original_size
        self.input_size = P.get_preprocess_shape(*self.original_size, self.image_size)
        self._image = image if self.keep_image else None
        self.is_image_set = True

    def reset_image(self) -> None:
        self.is_image_set = False
        self.image_id: Optional[str] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None
        self._image = None

    def get_image_embedding(self):
        raise NotImplementedError("the embedding stays on the server (sam_embedding_cache); use image_id")

    def _decode(self, coords, labels, mask_input, multimask_output, outputs):
        try:
            return self.client.decode(self.image_id, coords, labels, mask_input, multimask_output, outputs)
        except ImageNotCachedError:
            if self._image is None:
                raise
            self.image_id = self.client.encode(self._image).image_id  # evicted: encode again, once
            return self.client.decode(self.image_id, coords, labels, mask_input, multimask_output, outputs)

    # -- prompts: predict() comes from SamPredictorAPI -------------------------------------
    def predict_batch(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one request (mirrors SamPredictor.predict_torch, in numpy).

        Coordinates in original-image pixels: `point_coords` BxNx2, `point_labels` BxN, `boxes`
        Bx4 XYXY, `mask_input` Bx1x256x256. Returns BxCxHxW masks, BxC scores, BxCx256x256 logits.
        """
        self._require_image()
        # The same prompt assembly as the in-process predictor (points, padding or box corners),
        # sent as labelled points: the server uses a prompt holding -1 or 2/3 labels as given.
        c, l = prompts.assemble_prompts(point_coords, point_labels, boxes)
        outputs = ["iou_predictions", "low_res_masks"] + ([] if return_logits else ["masks"])
        out = self._decode(c, l, mask_input, multimask_output, outputs)
        low = out["low_res_masks"]
        if return_logits:
            masks = P.upscale_masks(low, self.input_size, self.original_size, self.image_size)
        else:
            masks = out["masks"]
        return masks, out["iou_predictions"], low
