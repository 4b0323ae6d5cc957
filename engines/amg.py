"""Automatic mask generation over runners: the crop decoder that the server's `sam_amg` and the
in-process generator (the Ray dataset job) share, so both give the same records.

`samrt.amg.generate_masks` drives the pipeline; it asks a `set_crop(crop)` for a decode function
per crop. This module builds that decode function from a crop's embeddings, and an in-process
`set_crop` that embeds each crop with a local encoder runner. No torch.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from samrt import amg
from samrt import processing as P
from samrt import prompts

from .decoders import ClassicDecoder, MaskDecoder
from .runner import Runner

__all__ = ["amg_crop_decoder", "InProcessMaskGenerator"]


def amg_crop_decoder(
    decoder: MaskDecoder,
    image_embeddings: np.ndarray,
    crop_size: Tuple[int, int],
    image_size: int,
    state: Optional[Mapping[str, np.ndarray]] = None,
) -> amg.DecodeFn:
    """The decode function of one crop: points [B,2] (float, crop pixels, x,y) ->
    (low-res logits [B,3,m,m], predicted IoU [B,3], upscale), where `upscale([k,m,m])` gives the
    logits at the crop's size (h,w) = `crop_size`: samrt.amg upscales a few masks at a time.

    `image_embeddings` is the crop's [1,C,e,e] encoder output and `state` the decoder's per-image
    tensors for it (`decoder.prepare_image`, computed here when not given); each point is a single
    foreground click with SAM's padding point, decoded with the three multimask tokens
    (SamAutomaticMaskGenerator).
    """
    size = (int(crop_size[0]), int(crop_size[1]))
    input_size = P.get_preprocess_shape(size[0], size[1], image_size)
    state = decoder.prepare_image(image_embeddings) if state is None else state

    def run(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        coords, labels = prompts.assemble_prompts(points[:, None, :], np.ones((len(points), 1), np.int32), None)
        coords, labels = prompts.decoder_prompts(coords, labels, size, image_size)
        low, iou = decoder.decode(image_embeddings, state, coords, labels)
        low, iou = P.select_masks(low, iou, True)
        return low, iou, upscale

    def upscale(low: np.ndarray) -> np.ndarray:
        return P.upscale_masks(low, input_size, size, image_size)

    return run


class InProcessMaskGenerator:
    """SamAutomaticMaskGenerator's pipeline with both graphs in this process (no server).

    `generate(image, opts)` gives the same records as the server's `sam_amg` for the same engines
    and options: the same `amg_crop_decoder`, the same `samrt.amg.generate_masks`.
    """

    def __init__(self, encoder: Runner, decoder: Union[MaskDecoder, Runner]) -> None:
        """`decoder`: a MaskDecoder (`samrt.engines.decoders`), or a runner of the classic graph."""
        self.encoder = encoder
        self.decoder = decoder if isinstance(decoder, MaskDecoder) else ClassicDecoder(decoder)
        self.image_size = int(encoder.input_shapes["image"][-1])
        self.low_res_size = self.decoder.low_res_size

    def set_crop(self, crop: np.ndarray) -> amg.DecodeFn:
        """Embed one crop (HxWx3 uint8) and return its decode function."""
        crop = np.ascontiguousarray(crop)
        x, _ = P.preprocess_image(crop, self.image_size)
        emb = self.encoder.run({"image": x})["image_embeddings"]
        return amg_crop_decoder(self.decoder, emb, crop.shape[:2], self.image_size)

    def generate(self, image: np.ndarray, opts: amg.AmgOptions, output_mode: str = "coco_rle") -> List[Dict[str, Any]]:
        """Records as SamAutomaticMaskGenerator.generate (segmentation, area, bbox XYWH, predicted_iou,
        point_coords, stability_score, crop_box XYWH) for an HxWx3 uint8 RGB image.
        Raises samrt.errors.InputError for a bad image or options."""
        return amg.generate_masks(P.check_image(image), self.set_crop, opts, output_mode)
