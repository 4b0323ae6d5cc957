"""Binary masks, once for every floor: COCO RLE (through pycocotools), mask IoU and mask -> box.

Torch-free (numpy; pycocotools inside the RLE functions, the client extra). A mask is a boolean
(or 0/1) array [H, W]; batched functions take [N, H, W] or [..., H, W] as they say.

COCO RLE is the format SA-1B and SamAutomaticMaskGenerator's `coco_rle` output use:
`{"size": [H, W], "counts": str}`, column-major runs compressed as pycocotools writes them.
Functions that read an RLE accept `counts` as str or bytes.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from .errors import InputError

__all__ = ["mask_to_rle", "masks_to_rles", "rle_to_mask", "rle_area", "mask_iou", "masks_to_boxes", "coco_bbox"]


# -- COCO RLE ---------------------------------------------------------------------------------
def masks_to_rles(masks: np.ndarray) -> List[Dict]:
    """[N, H, W] bool -> N COCO RLEs `{"size": [H, W], "counts": str}` (pycocotools.mask.encode,
    one call for the batch; [] for N = 0). Raises InputError for another number of dimensions."""
    from pycocotools import mask as mask_utils  # pycocotools: the client extra

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise InputError(f"masks: got shape {masks.shape}, expected [N, H, W]")
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def mask_to_rle(mask: np.ndarray) -> Dict:
    """[H, W] bool -> COCO RLE `{"size": [H, W], "counts": str}` (SA-1B's `segmentation`)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask: got shape {mask.shape}, expected [H, W]")
    return masks_to_rles(mask[None])[0]


def _pycocotools_rle(rle: Dict) -> Dict:
    try:
        counts, size = rle["counts"], [int(s) for s in rle["size"]]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"rle: got {type(rle).__name__} {str(rle)[:80]!r}, expected a COCO RLE "
                         '{"size": [H, W], "counts": str}') from None
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_mask(rle: Dict) -> np.ndarray:
    """COCO RLE (counts as str or bytes) -> [H, W] bool (pycocotools.mask.decode)."""
    from pycocotools import mask as mask_utils  # pycocotools: the client extra

    return mask_utils.decode(_pycocotools_rle(rle)).astype(bool)


def rle_area(rle: Dict) -> int:
    """The number of true pixels of a COCO RLE, without decoding it (pycocotools.mask.area)."""
    from pycocotools import mask as mask_utils  # pycocotools: the client extra

    return int(mask_utils.area(_pycocotools_rle(rle)))


# -- IoU --------------------------------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [H, W] masks, in [0, 1].

    Two empty masks give 1.0: they agree that there is nothing (the engine accuracy gate must not
    count an engine that agrees with fp32 as wrong; an empty ground truth predicted empty is
    right). pycocotools.mask.iou gives 0.0 there. Raises InputError when the shapes differ."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"mask_iou: got shapes {a.shape} and {b.shape}, expected equal shapes")
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# -- boxes ------------------------------------------------------------------------------------
def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[..., H, W] bool -> [..., 4] float32 XYXY boxes of the true pixels, as segment_anything's
    `batched_mask_to_box`: x1, y1 are the last true column and row (inclusive pixel indices, so a
    single pixel at (x, y) is (x, y, x, y)); an empty mask gives (0, 0, 0, 0)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim < 2:
        raise InputError(f"masks: got shape {masks.shape}, expected [..., H, W]")
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    if masks.size == 0:  # no masks, or masks without pixels
        return np.zeros(lead + (4,), np.float32)
    flat = masks.reshape((-1, h, w))
    rows, cols = flat.any(axis=2), flat.any(axis=1)
    top = np.where(rows.any(1), rows.argmax(1), h)
    bottom = np.where(rows.any(1), h - 1 - rows[:, ::-1].argmax(1), 0)
    left = np.where(cols.any(1), cols.argmax(1), w)
    right = np.where(cols.any(1), w - 1 - cols[:, ::-1].argmax(1), 0)
    boxes = np.stack([left, top, right, bottom], 1).astype(np.float32)
    boxes[(right < left) | (bottom < top)] = 0
    return boxes.reshape(lead + (4,))


def coco_bbox(mask: np.ndarray) -> List[float]:
    """[H, W] bool -> COCO's `bbox` [x, y, width, height] in pixels, as pycocotools.mask.toBbox:
    width and height count pixels (a single pixel is [x, y, 1, 1]); [0, 0, 0, 0] for an empty mask.
    SamAutomaticMaskGenerator's `bbox` differs: its width is x1 - x0 of `masks_to_boxes`, one less."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise InputError(f"mask: got shape {mask.shape}, expected [H, W]")
    if not mask.any():
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0, x1, y1 = (float(v) for v in masks_to_boxes(mask))
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
