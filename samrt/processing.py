"""Image pre- and mask postprocessing in numpy, reproducing segment_anything.SamPredictor.

Importable without torch: the client, the Triton python models and the export checks share
these functions. Prompt rules (labels, padding, boxes, the coordinate transform) live in
`samrt.prompts`. Shapes follow segment-anything's docstrings (`CxHxW` masks).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image

from .errors import InputError
from .prompts import get_preprocess_shape
from .imageio import check_resized_shape  # imageio hook: refuse shapes whose resized side would be 0
from .spec import PIXEL_MEAN, PIXEL_STD
from .upscale import _source_index, upscale_logits

__all__ = [
    "get_preprocess_shape",
    "check_image",
    "resize_longest_side",
    "preprocess_image",
    "normalize_and_pad",
    "interpolate_bilinear",
    "upscale_masks",
    "upscaled_masks",
    "UPSCALE_CHUNK",
    "select_masks",
]

_MEAN = np.asarray(PIXEL_MEAN, dtype=np.float32)
_STD = np.asarray(PIXEL_STD, dtype=np.float32)


def check_image(image: np.ndarray, max_pixels: Optional[int] = None) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB image; return it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image: got {type(image).__name__}, expected a numpy array HxWx3 uint8")
    if image.dtype != np.uint8:
        raise InputError(f"image: got dtype {image.dtype}, expected uint8 (HxWx3 RGB, 0..255)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: got shape {tuple(image.shape)}, expected HxWx3 (RGB)")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise InputError(f"image: got an empty image of {h}x{w} pixels, expected at least 1x1")
    if max_pixels is not None and h * w > max_pixels:
        raise InputError(f"image: got {h}x{w} = {h * w} pixels, expected at most {max_pixels}")
    return np.ascontiguousarray(image)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """PIL bilinear resize, as SamPredictor does through torchvision's PIL path."""
    h, w = get_preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def preprocess_image(image: np.ndarray, image_size: int = 1024) -> Tuple[np.ndarray, Tuple[int, int]]:
    """HxWx3 uint8 RGB -> (encoder input float32 [1,3,S,S], resized (h, w)).

    Resize of the longest side to S, normalisation with SAM's pixel mean/std, zero padding
    at the bottom and right.
    """
    image = check_image(image)
    check_resized_shape(image.shape[:2], get_preprocess_shape(*image.shape[:2], image_size), image_size)  # imageio hook
    resized = resize_longest_side(image, image_size)
    return normalize_and_pad(resized, image_size)[None], resized.shape[:2]


def normalize_and_pad(resized: np.ndarray, image_size: int) -> np.ndarray:
    """An already resized hxwx3 uint8 image -> float32 [3,S,S]: SAM's pixel mean/std, then zero
    padding at the bottom and right."""
    h, w = resized.shape[:2]
    x = np.empty((3, image_size, image_size), dtype=np.float32)
    x[:, h:, :] = 0
    x[:, :h, w:] = 0
    # channel by channel, in place: the same float32 subtract and divide as (x - mean) / std on the
    # whole HxWx3 array (bit-identical), without its three full-size temporaries and the transposed
    # copy (vit_b's 1024 side: 1.5 ms instead of 16.5 here)
    for c in range(3):
        out = x[c, :h, :w]
        np.subtract(resized[:, :, c], _MEAN[c], out=out, dtype=np.float32)
        np.divide(out, _STD[c], out=out)
    return x




def interpolate_bilinear(
    x: np.ndarray, out_hw: Tuple[int, int], keep_hw: Optional[Tuple[int, int]] = None
) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="bilinear", align_corners=False) on the last two axes.

    `keep_hw` computes only the top-left (h, w) of the output (the same values as a crop).
    Fancy indexing, slow on large outputs: the reference that `upscale_masks` is tested against.
    """
    in_h, in_w = x.shape[-2:]
    out_h, out_w = out_hw
    keep_h, keep_w = keep_hw or out_hw
    w0, w1, lw = _source_index(in_w, out_w, keep_w)
    h0, h1, lh = _source_index(in_h, out_h, keep_h)
    x = np.asarray(x, dtype=np.float32)
    t = x[..., w0] * (np.float32(1) - lw) + x[..., w1] * lw
    return t[..., h0, :] * (np.float32(1) - lh)[:, None] + t[..., h1, :] * lh[:, None]


def upscale_masks(
    low_res: np.ndarray, input_size: Tuple[int, int], original_size: Tuple[int, int], image_size: int = 1024
) -> np.ndarray:
    """Low-res logits [..., m, m] -> logits at the original size [..., H, W] float32 (Sam.postprocess_masks).

    Two banded matrix products with cached weights (`samrt.upscale.upscale_logits`, which states
    the tolerance); `interpolate_bilinear` twice with the crop is the exact reference.
    """
    return upscale_logits(low_res, input_size, original_size, image_size)


# Prompts upscaled at a time by `upscaled_masks`: float logits at the original size exist for this many only.
UPSCALE_CHUNK = 8


def upscaled_masks(low_res: np.ndarray, input_size: Tuple[int, int], original_size: Tuple[int, int],
                   image_size: int = 1024, chunk: int = UPSCALE_CHUNK) -> np.ndarray:
    """Low-res logits [P,C,m,m] -> bool masks [P,C,H,W] at the original size: `upscale_masks` > 0.0
    (SamPredictor's `mask_threshold`), `chunk` prompts at a time, so the float logits at full size
    (4 bytes a pixel) never exist for more than `chunk` prompts, only the bool answer. The one
    definition of a served mask: the server's `sam_mask_upscale` and the Python SDK's `decode`
    (which upscales the low-res logits it receives instead of downloading the masks) both call it."""
    p, c = low_res.shape[:2]
    masks = np.empty((p, c) + tuple(original_size), dtype=bool)
    for start in range(0, p, chunk):
        masks[start:start + chunk] = upscale_masks(low_res[start:start + chunk], input_size, original_size,
                                                   image_size) > 0.0
    return masks


def select_masks(
    low_res_masks: np.ndarray, iou_predictions: np.ndarray, multimask_output: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Decoder outputs of all 4 tokens -> the ones SamPredictor returns (1..3, or 0)."""
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return low_res_masks[:, sl], iou_predictions[:, sl]


