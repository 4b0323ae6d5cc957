"""SAM's prompt rules, in one place: label validation, box corners, the padding point, the
coordinate transform, and the decoder feeds for P prompts.

Everything that turns prompts into decoder inputs calls these functions: the server
(`sam_decode`, `sam_amg`), the in-process predictor, the SDK (which checks before sending) and
the engines' accuracy gate, so they cannot disagree. numpy only, no torch.

The rules, as segment_anything's `SamPredictor` and `PromptEncoder` apply them:
- labels: 1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding
  (`PromptEncoder._embed_points`: `not_a_point_embed` for -1, `point_embeddings[label]` else);
- a prompt is points first, then a box's two corners (labels 2, 3);
- a prompt without a box gets one padding point (0, 0) with label -1 appended
  (`PromptEncoder._embed_points(pad=boxes is None)`);
- coordinates go from original-image pixels to the resized frame whose longest side is the
  encoder's input size (`ResizeLongestSide.apply_coords`).
On the wire (`sam_decode`), prompts arrive as labelled points that may already hold box corners
or padding: a request none of whose labels is 2, 3 or -1 gets the padding point appended to every
row (`complete_prompts`); any other request is used as given, so a client that sends what
`assemble_prompts` produced gets exactly the in-process result.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from .errors import InputError

__all__ = [
    "VALID_LABELS",
    "MAX_POINTS_PER_PROMPT",
    "PAD_LABEL",
    "ABSENT_LABEL",
    "BOX_LABELS",
    "get_preprocess_shape",
    "decoder_coords",
    "coords_scale",
    "apply_coords",
    "restore_coords",
    "apply_boxes",
    "check_points",
    "check_boxes",
    "check_mask_input",
    "MAX_MASK_LOGIT",
    "check_points_in_image",
    "looks_like_fractions",
    "FRACTIONS_MIN_SIDE",
    "fractions_message",
    "assemble_prompts",
    "complete_prompts",
    "decoder_prompts",
    "decoder_feeds",
    "one_prompt_as_batch",
]

VALID_LABELS = (-1, 0, 1, 2, 3)
# Points per prompt (box corners included) that a prompt may carry. The decoder's attention
# between prompt tokens and the 64x64 image tokens grows with the point count: on the tiny test
# model, 16 prompts of 1000 points took 5.5 GB above the idle process (16 of 65: 60 MB), so a few
# hundred bytes of request could exhaust a server. SAM was trained with a box and about a dozen points.
MAX_POINTS_PER_PROMPT = 64
PAD_LABEL = -1
# A prompt slot that is no token at all: the fast decoder graphs (samrt.spec.fast_decoder_spec) pad
# prompts to a fixed slot count with it and mask those slots out of attention. Never on the wire.
ABSENT_LABEL = -2
BOX_LABELS = (2, 3)


def get_preprocess_shape(old_h: int, old_w: int, long_side: int) -> Tuple[int, int]:
    """(h, w) after resizing so that the longest side is `long_side` (ResizeLongestSide)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    new_h, new_w = old_h * scale, old_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def coords_scale(original_size: Tuple[int, int], long_side: int) -> Tuple[float, float]:
    """(x, y) factors from original-image pixels to the resized frame (ResizeLongestSide):
    new_w / old_w and new_h / old_h."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, long_side)
    return new_w / old_w, new_h / old_h


def apply_coords(coords: np.ndarray, original_size: Tuple[int, int], long_side: int,
                 dtype=np.float32) -> np.ndarray:
    """[..., 2] (x, y) pixels in the original image -> the resized frame (`dtype`, float32 unless
    asked; segment_anything's numpy transform returns float64)."""
    sx, sy = coords_scale(original_size, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * sx
    out[..., 1] = out[..., 1] * sy
    return out.astype(dtype)


def restore_coords(coords: np.ndarray, original_size: Tuple[int, int], long_side: int) -> np.ndarray:
    """apply_coords's inverse: [..., 2] (x, y) in the resized frame -> original-image pixels (float64)."""
    sx, sy = coords_scale(original_size, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] / sx
    out[..., 1] = out[..., 1] / sy
    return out


def apply_boxes(boxes: np.ndarray, original_size: Tuple[int, int], long_side: int,
                dtype=np.float32) -> np.ndarray:
    """Bx4 XYXY boxes in the original image -> the resized frame (`dtype`, float32 unless asked)."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side, dtype).reshape(-1, 4)


def check_points(point_coords, point_labels) -> Tuple[np.ndarray, np.ndarray]:
    """[P,N,2] coordinates and [P,N] labels, checked -> (float64 [P,N,2], int32 [P,N]).

    Raises InputError for a wrong shape, more than MAX_POINTS_PER_PROMPT points per prompt,
    non-finite coordinates, non-integer labels, labels outside VALID_LABELS, or a prompt whose box
    corners are not paired (as many 2s as 3s)."""
    if point_labels is None:
        raise InputError("point_labels: got None, expected one label per point when point_coords is given")
    try:
        pc = np.asarray(point_coords, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"point_coords: got values that are not numbers ({e}), expected [P,N,2] (x, y) in pixels") from None
    pl = np.asarray(point_labels)
    if pc.ndim != 3 or pc.shape[2] != 2 or pc.shape[1] < 1:
        raise InputError(f"point_coords: got shape {list(pc.shape)}, expected [P,N,2] (x, y) with N >= 1")
    if pc.shape[1] > MAX_POINTS_PER_PROMPT:
        raise InputError(f"point_coords: got {pc.shape[1]} points per prompt, expected at most {MAX_POINTS_PER_PROMPT} "
                         "(box corners included; the decoder's memory grows with the points of a prompt)")
    if pl.shape != pc.shape[:2]:
        raise InputError(f"point_labels: got shape {list(pl.shape)}, expected {list(pc.shape[:2])} to match point_coords")
    if not np.all(np.isfinite(pc)):
        raise InputError("point_coords: got non-finite values (NaN or inf), expected finite pixel coordinates")
    if pl.dtype.kind not in "iub":
        try:
            as_float = pl.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"point_labels: got values that are not numbers ({e}), expected integers in "
                             f"{VALID_LABELS}") from None
        if not np.all(np.isfinite(as_float)) or not np.all(np.equal(np.mod(as_float, 1), 0)):
            raise InputError(f"point_labels: got non-integer values of dtype {pl.dtype}, expected integers")
    labels = pl.astype(np.int64)
    bad = ~np.isin(labels, VALID_LABELS)
    if bad.any():
        raise InputError(f"point_labels: got {sorted(set(labels[bad].tolist()))}, expected values in {VALID_LABELS}")
    tops, bottoms = (labels == 2).sum(axis=1), (labels == 3).sum(axis=1)
    unpaired = np.flatnonzero(tops != bottoms)
    if unpaired.size:
        r = int(unpaired[0])
        raise InputError(f"point_labels: prompt {r} has {int(tops[r])} box top-left corner(s) (label 2) and "
                         f"{int(bottoms[r])} bottom-right (label 3), expected a box as both corners, 2 then 3")
    return pc, labels.astype(np.int32)


def _real_points(coords, labels) -> np.ndarray:
    """The [K,2] points of [..., 2] `coords` that are not padding (label -1; all when `labels` is None)."""
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if labels is None:
        return pts
    keep = np.asarray(labels).reshape(-1) != PAD_LABEL
    return pts[keep] if keep.shape[0] == pts.shape[0] else pts


def check_points_in_image(coords, labels, original_size: Tuple[int, int], name: str = "point_coords") -> None:
    """Refuse points more than one image width (x) or height (y) outside the image: x in [-W, 2W]
    and y in [-H, 2H] pass, anything farther cannot be a click on this image (e.g. coordinates of
    another image, or of the encoder's 1024 frame sent for a small image). `coords` [..., 2] (x, y)
    in original pixels, `labels` [...] or None (padding points, label -1, are not checked: the
    decoder ignores their position). InputError naming the first such point (`name`: what the
    caller calls the points)."""
    h, w = (int(v) for v in original_size)
    pts = _real_points(coords, labels)
    far = (pts[:, 0] < -w) | (pts[:, 0] > 2 * w) | (pts[:, 1] < -h) | (pts[:, 1] > 2 * h)
    if far.any():
        x, y = pts[int(np.argmax(far))]
        raise InputError(f"{name}: got ({x:g}, {y:g}), more than the image's size outside a {h}x{w} (HxW) "
                         f"image, expected x in [{-w}, {2 * w}] and y in [{-h}, {2 * h}] (pixels of the original image)")


# Images whose short side is at least this many pixels: all points in [0, 1] there look like fractions.
FRACTIONS_MIN_SIDE = 16


def looks_like_fractions(coords, labels, original_size: Tuple[int, int]) -> bool:
    """Whether prompts look like fractions of the image rather than pixels: every point (padding
    excluded) within [0, 1] x [0, 1] on an image whose short side is at least FRACTIONS_MIN_SIDE.
    Such points click the image's top-left pixel, which is rarely what was meant."""
    pts = _real_points(coords, labels)
    return (min(int(v) for v in original_size) >= FRACTIONS_MIN_SIDE and pts.size > 0
            and bool(np.all((pts >= 0.0) & (pts <= 1.0))))


def fractions_message(original_size: Tuple[int, int], name: str = "point_coords") -> str:
    """What `looks_like_fractions` means, in words for a warning or an error."""
    h, w = (int(v) for v in original_size)
    return (f"{name}: coordinates look like fractions of the image (all within [0, 1]); samrt expects "
            f"pixels of the original image: x in [0, {w}), y in [0, {h}) for this {h}x{w} (HxW) image "
            "(multiply fractions by the width and height)")


def check_boxes(boxes, batch: Optional[int] = None) -> np.ndarray:
    """[P,4] XYXY boxes (P = `batch` when given), finite -> float64."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or (batch is not None and b.shape[0] != batch):
        want = f"[{batch},4]" if batch is not None else "[P,4]"
        raise InputError(f"boxes: got shape {list(b.shape)}, expected {want} XYXY")
    if not np.all(np.isfinite(b)):
        raise InputError("boxes: got non-finite values (NaN or inf), expected finite pixel coordinates")
    return b


# Largest |logit| a mask prompt may carry. SAM's own low-res logits stay within a few tens; values
# near float32's limit (3e38) overflow in the decoder's mask downscaling and answered NaN scores
# (found by the wire fuzz test). 1e4 is far above any logit SAM gives and far below overflow.
MAX_MASK_LOGIT = 1e4


def check_mask_input(mask_input, num_prompts: int, low_res_size: int) -> np.ndarray:
    """[P,1,m,m] finite low-res logits, |x| <= MAX_MASK_LOGIT -> float32."""
    mask = np.asarray(mask_input, dtype=np.float32)
    want = (num_prompts, 1, low_res_size, low_res_size)
    if mask.shape != want:
        raise InputError(f"mask_input: got shape {list(mask.shape)}, expected {list(want)}")
    if not np.all(np.isfinite(mask)):
        raise InputError("mask_input: got non-finite values, expected finite low-res logits")
    largest = float(np.abs(mask).max()) if mask.size else 0.0
    if largest > MAX_MASK_LOGIT:
        raise InputError(f"mask_input: got a logit of magnitude {largest:g}, expected at most {MAX_MASK_LOGIT:g} "
                         "(SAM's low-res logits, e.g. a previous answer's low_res_masks, stay within a few tens)")
    return mask


def assemble_prompts(point_coords, point_labels, boxes) -> Tuple[np.ndarray, np.ndarray]:
    """SamPredictor's prompt for P rows -> (coords [P,N',2] float64, labels [P,N'] int32), in
    original-image pixels: points, then one padding point when there is no box, then the box's
    corners (labels 2, 3). Rows of different point counts may be padded with -1 by the caller,
    as with `SamPredictor.predict_torch`."""
    if point_coords is None and boxes is None:
        raise InputError("prompt: got no points and no box, expected at least one point or a box")
    coords, labels = [], []
    batch = None
    if point_coords is not None:
        pc, pl = check_points(point_coords, point_labels)
        coords.append(pc)
        labels.append(pl)
        batch = pc.shape[0]
    if boxes is not None:
        b = check_boxes(boxes, batch)
        coords.append(b.reshape(-1, 2, 2))
        labels.append(np.tile(np.array([BOX_LABELS], dtype=np.int32), (b.shape[0], 1)))
    else:
        coords.append(np.zeros((batch, 1, 2)))
        labels.append(np.full((batch, 1), PAD_LABEL, dtype=np.int32))
    return np.concatenate(coords, axis=1), np.concatenate(labels, axis=1)


def complete_prompts(coords: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The wire's rule on checked [P,N,2] / [P,N] prompts: a row of padding only is refused; a
    request with no box corner and no padding label gets the padding point appended to every row
    (SamPredictor's rule for point prompts); any other request is used as given."""
    only_padding = np.all(labels == PAD_LABEL, axis=1)
    if only_padding.any():
        raise InputError(f"prompt {int(np.argmax(only_padding))}: got only padding labels (-1), expected a point or a box")
    if np.isin(labels, (PAD_LABEL,) + BOX_LABELS).any():
        return coords, labels
    p = coords.shape[0]
    return (np.concatenate([coords, np.zeros((p, 1, 2), coords.dtype)], axis=1),
            np.concatenate([labels, np.full((p, 1), PAD_LABEL, labels.dtype)], axis=1))


def decoder_prompts(coords: np.ndarray, labels: np.ndarray, original_size: Tuple[int, int],
                    image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Checked prompts in original pixels -> the decoder's `point_coords` [P,N,2] float32 in the
    resized frame and `point_labels` [P,N] float32 (the wire's padding rule applied). Padding
    points (label -1) go to (0, 0): SAM replaces their positional encoding (so the answer is the
    same), and a far one (3e38) made OpenVINO's AVX2 sin return NaN (found by the wire fuzz test)."""
    coords, labels = complete_prompts(coords, labels)
    return decoder_coords(coords, labels, original_size, image_size), labels.astype(np.float32)


def decoder_coords(coords: np.ndarray, labels: np.ndarray, original_size: Tuple[int, int],
                   image_size: int) -> np.ndarray:
    """`apply_coords` for the decoder: [P,N,2] original pixels -> float32 resized frame, with the
    padding points (label -1 in [P,N] `labels`) at (0, 0) (see `decoder_prompts`)."""
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[np.asarray(labels).reshape(coords.shape[:-1]) == PAD_LABEL] = 0.0  # before scaling: no overflow
    return apply_coords(coords, original_size, image_size)


def decoder_feeds(image_embeddings: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                  mask_input: Optional[np.ndarray], low_res_size: int,
                  has_mask_input: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """The decoder graph's inputs for P prompts (see `samrt.spec.decoder_spec`).

    `image_embeddings` [1,D,E,E] (one image for every prompt: broadcast, not copied) or [P,D,E,E];
    `point_coords` [P,N,2] and `point_labels` [P,N] from `decoder_prompts`; `mask_input`
    [P,1,m,m] or None (then zeros with `has_mask_input` 0); `has_mask_input` [P] per-row flags
    when only some rows carry a mask prompt (default: 1 for every row of a given `mask_input`)."""
    p = point_coords.shape[0]
    emb = np.asarray(image_embeddings, dtype=np.float32)
    if emb.shape[0] == 1 and p != 1:
        emb = np.broadcast_to(emb, (p,) + emb.shape[1:])
    elif emb.shape[0] != p:
        raise InputError(f"image_embeddings: got {emb.shape[0]} rows for {p} prompts, expected 1 or {p}")
    if mask_input is None:
        mask = np.broadcast_to(np.zeros((1, 1, low_res_size, low_res_size), np.float32), (p, 1, low_res_size, low_res_size))
        has = np.zeros((p,), dtype=np.float32)
    else:
        mask = check_mask_input(mask_input, p, low_res_size)
        has = np.ones((p,), np.float32) if has_mask_input is None else np.asarray(has_mask_input, np.float32).reshape(p)
    return {"image_embeddings": emb, "point_coords": np.asarray(point_coords, np.float32),
            "point_labels": np.asarray(point_labels, np.float32), "mask_input": mask, "has_mask_input": has}


def one_prompt_as_batch(point_coords, point_labels, box):
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
