"""TritonSamAutomaticMaskGenerator: SamAutomaticMaskGenerator's parameters and records, with
the work on the server (`sam_amg`): one request per image, masks back as COCO RLE.

Why on the server: the official pipeline needs full-resolution logits of every candidate
(3 per grid point, 3072 for a 32x32 grid) for its stability score; shipping those to a client
would cost gigabytes per image. The server keeps them local and sends only the kept masks, as RLE.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from samrt.amg import AmgOptions, uncompressed_rle
from samrt.errors import InputError
from samrt.masks import rle_to_mask

from ._client import SamClient

__all__ = ["TritonSamAutomaticMaskGenerator", "served_amg_options"]


def served_amg_options(model_info: dict, **given) -> AmgOptions:
    """SamAutomaticMaskGenerator's options for the model a server serves: its defaults, then what
    the model's card recommends (`SamClient.model_info()["amg_options"]`: the embedded model's
    lower filters, say), then the options `given` (None: not given), checked."""
    fields = {**(model_info.get("amg_options") or {}), **{k: v for k, v in given.items() if v is not None}}
    return AmgOptions.from_fields(fields)


class TritonSamAutomaticMaskGenerator:
    def __init__(
        self,
        client: SamClient,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if point_grids is not None:
            raise InputError("point_grids: explicit grids are not supported by sam_amg; use points_per_side")
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise InputError(f"output_mode: got {output_mode!r}, expected binary_mask, uncompressed_rle or coco_rle")
        self.client = client
        self.output_mode = output_mode
        self.options = AmgOptions(
            points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio, crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
        ).validate()

    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Records as SamAutomaticMaskGenerator.generate: segmentation, area, bbox (XYWH),
        predicted_iou, point_coords, stability_score, crop_box (XYWH)."""
        records = self.client.amg(image, self.options)
        if self.output_mode != "coco_rle":
            for r in records:
                mask = rle_to_mask(r["segmentation"])
                r["segmentation"] = mask if self.output_mode == "binary_mask" else uncompressed_rle(mask)
        return records
