"""Pre- and postprocessing in numpy, reproducing segment_anything.SamPredictor.

Importable without torch: the client, the Triton python models and the export checks
share these functions. Shapes follow segment-anything's docstrings (`Nx2` points in
(x, y) pixels, `XYXY` boxes, `CxHxW` masks).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image

from .errors import InputError
from .spec import PIXEL_MEAN, PIXEL_STD
from .upscale import _source_index, upscale_logits

__all__ = [
    "VALID_LABELS",
    "get_preprocess_shape",
    "check_image",
    "resize_longest_side",
    "preprocess_image",
    "apply_coords",
    "apply_boxes",
    "build_prompt",
    "one_prompt_as_batch",
    "build_prompts",
    "interpolate_bilinear",
    "upscale_masks",
    "select_masks",
]

VALID_LABELS = (-1, 0, 1, 2, 3)
_MEAN = np.asarray(PIXEL_MEAN, dtype=np.float32)
_STD = np.asarray(PIXEL_STD, dtype=np.float32)


def get_preprocess_shape(old_h: int, old_w: int, long_side: int) -> Tuple[int, int]:
    """(h, w) after resizing so that the longest side is `long_side` (as ResizeLongestSide)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    new_h, new_w = old_h * scale, old_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


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
    resized = resize_longest_side(image, image_size)
    return normalize_and_pad(resized, image_size)[None], resized.shape[:2]


def normalize_and_pad(resized: np.ndarray, image_size: int) -> np.ndarray:
    """An already resized hxwx3 uint8 image -> float32 [3,S,S]: SAM's pixel mean/std, then zero
    padding at the bottom and right."""
    h, w = resized.shape[:2]
    x = np.zeros((3, image_size, image_size), dtype=np.float32)
    x[:, :h, :w] = ((resized.astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)
    return x


def apply_coords(coords: np.ndarray, original_size: Tuple[int, int], long_side: int) -> np.ndarray:
    """(x, y) pixels in the original image -> the resized frame (float32)."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out.astype(np.float32)


def apply_boxes(boxes: np.ndarray, original_size: Tuple[int, int], long_side: int) -> np.ndarray:
    """Bx4 XYXY boxes in the original image -> the resized frame (float32)."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: got non-finite values (NaN or inf), expected finite pixel coordinates")


def build_prompts(
    point_coords: Optional[np.ndarray],
    point_labels: Optional[np.ndarray],
    boxes: Optional[np.ndarray],
    original_size: Tuple[int, int],
    image_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    """SamPredictor's prompt conventions for B prompts -> decoder ([B,N,2] coords, [B,N] labels).

    `point_coords` BxNx2 and `point_labels` BxN in original-image pixels, `boxes` Bx4 XYXY.
    Points come first; a box adds its two corners with labels 2 and 3; without boxes a
    padding point (0, 0) with label -1 is appended, as segment-anything's prompt encoder does.
    """
    if point_coords is None and boxes is None:
        raise InputError("prompt: got no points and no box, expected at least one point or a box")
    coords, labels = [], []
    batch = None
    if point_coords is not None:
        if point_labels is None:
            raise InputError("point_labels: got None, expected one label per point when point_coords is given")
        pc = np.asarray(point_coords, dtype=np.float64)
        pl = np.asarray(point_labels)
        if pc.ndim != 3 or pc.shape[2] != 2 or pc.shape[1] < 1:
            raise InputError(f"point_coords: got shape {pc.shape}, expected BxNx2 (x, y) with N >= 1")
        if pl.shape != pc.shape[:2]:
            raise InputError(f"point_labels: got shape {pl.shape}, expected {pc.shape[:2]} to match point_coords")
        _check_finite("point_coords", pc)
        bad = ~np.isin(pl, VALID_LABELS)
        if bad.any():
            raise InputError(f"point_labels: got {sorted(set(pl[bad].tolist()))}, expected values in {VALID_LABELS}")
        coords.append(apply_coords(pc, original_size, image_size))
        labels.append(pl.astype(np.float32))
        batch = pc.shape[0]
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 4 or (batch is not None and b.shape[0] != batch):
            want = f"{batch}x4" if batch is not None else "Bx4"
            raise InputError(f"boxes: got shape {b.shape}, expected {want} XYXY")
        _check_finite("boxes", b)
        coords.append(apply_boxes(b, original_size, image_size).reshape(-1, 2, 2))
        labels.append(np.tile(np.array([[2, 3]], dtype=np.float32), (b.shape[0], 1)))
    else:
        coords.append(np.zeros((batch, 1, 2), dtype=np.float32))
        labels.append(np.full((batch, 1), -1, dtype=np.float32))
    return (np.concatenate(coords, axis=1).astype(np.float32),
            np.concatenate(labels, axis=1).astype(np.float32))


def one_prompt_as_batch(
    point_coords: Optional[np.ndarray], point_labels: Optional[np.ndarray], box: Optional[np.ndarray]
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """SamPredictor.predict's single prompt (Nx2 points, N labels, 4 box) -> a batch of one."""
    if point_coords is not None:
        pc = np.asarray(point_coords)
        if pc.ndim != 2:
            raise InputError(f"point_coords: got shape {pc.shape}, expected Nx2 (x, y)")
        point_coords = pc[None]
        point_labels = None if point_labels is None else np.asarray(point_labels)[None]
    if box is not None:
        b = np.asarray(box, dtype=np.float64)
        if b.size != 4:
            raise InputError(f"box: got shape {b.shape}, expected 4 values XYXY")
        box = b.reshape(1, 4)
    return point_coords, point_labels, box


def build_prompt(
    point_coords: Optional[np.ndarray],
    point_labels: Optional[np.ndarray],
    box: Optional[np.ndarray],
    original_size: Tuple[int, int],
    image_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    """One prompt as SamPredictor.predict takes it (Nx2 points, N labels, 4 box) -> [N,2], [N]."""
    coords, labels = build_prompts(*one_prompt_as_batch(point_coords, point_labels, box), original_size, image_size)
    return coords[0], labels[0]


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


def select_masks(
    low_res_masks: np.ndarray, iou_predictions: np.ndarray, multimask_output: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Decoder outputs of all 4 tokens -> the ones SamPredictor returns (1..3, or 0)."""
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return low_res_masks[:, sl], iou_predictions[:, sl]


