"""In-process predictor over the exported graphs, with segment_anything.SamPredictor's API.

No torch: runners plus `samrt.processing`. Used by `make demo`, the export parity tests, and
as the reference pipeline for the engines' accuracy checks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from samrt import processing as P
from samrt import prompts
from samrt.predictor_api import SamPredictorAPI

from .runner import OnnxRuntimeRunner, Runner, run_decoder

__all__ = ["OnnxSamPredictor"]


class OnnxSamPredictor(SamPredictorAPI):
    """`set_image` once, then `predict` per prompt, as segment_anything.SamPredictor."""

    def __init__(self, encoder: Runner, decoder: Runner) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.image_size = int(encoder.input_shapes["image"][-1])
        self.low_res_size = int(decoder.input_shapes["mask_input"][-1])
        self.reset_image()

    @classmethod
    def from_onnx(cls, encoder_path: str, decoder_path: str, device: str = "cpu") -> "OnnxSamPredictor":
        return cls(OnnxRuntimeRunner(encoder_path, device, memory_arena=False), OnnxRuntimeRunner(decoder_path, device))

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: Optional[np.ndarray] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        image = self._rgb(image, image_format)
        x, input_size = P.preprocess_image(image, self.image_size)
        self.reset_image()
        self.features = self.encoder.run({"image": x})["image_embeddings"]
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = input_size
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        self._require_image()
        return self.features

    def predict_batch(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one decoder call (mirrors SamPredictor.predict_torch, in numpy).

        Unlike predict_torch, coordinates are in original-image pixels: `point_coords` BxNx2,
        `point_labels` BxN, `boxes` Bx4 XYXY, `mask_input` Bx1x256x256.
        Returns masks BxCxHxW, scores BxC, low-res logits BxCx256x256.
        """
        self._require_image()
        coords, labels = prompts.assemble_prompts(point_coords, point_labels, boxes)
        coords, labels = prompts.decoder_prompts(coords, labels, self.original_size, self.image_size)
        low_res, iou = run_decoder(self.decoder, self.features, coords, labels, mask_input, self.low_res_size)
        low_res, iou = P.select_masks(low_res, iou, multimask_output)
        masks = P.upscale_masks(low_res, self.input_size, self.original_size, self.image_size)
        if not return_logits:
            masks = masks > 0.0
        return masks, iou, low_res
