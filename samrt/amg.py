"""Automatic mask generation in numpy, step for step as segment_anything's
SamAutomaticMaskGenerator: point grids per crop layer, batches of single-point prompts,
predicted-IoU and stability-score filters, box NMS within and across crops, optional removal
of small regions and holes, SA-1B style records (COCO RLE through pycocotools).

No torch: it runs inside the server (`sam_amg`) with a decoder callable, so a client gets
every mask of an image in one round trip, as RLE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import InputError, SamrtError
from .masks import mask_to_rle, masks_to_boxes, masks_to_rles, rle_area, rle_to_mask

__all__ = [
    "AmgOptions",
    "MAX_CROP_N_LAYERS",
    "MAX_POINTS_PER_SIDE",
    "MAX_POINTS_PER_BATCH",
    "build_point_grid",
    "generate_crop_boxes",
    "stability_score",
    "box_nms",
    "remove_small_regions",
    "uncompressed_rle",
    "generate_masks",
    "AmgCancelled",
    "UPSCALE_CHUNK",
    "LOW_RES_DECODE",
]

# decode(points [B,2] in crop pixels) -> (low-res logits [B,3,m,m], iou [B,3], upscale: [k,m,m] -> [k,h,w]),
# or (logits [B,3,h,w] at crop size, iou [B,3])
DecodeFn = Callable[[np.ndarray], tuple]
# Decode callbacks may hand back low-res logits with their upscale function (see generate_masks).
LOW_RES_DECODE = True
# set_crop(crop image) -> DecodeFn for that crop
CropFn = Callable[[np.ndarray], DecodeFn]


# segment_anything has no limit; a served request with n layers costs sum(4^i, i <= n) encoder
# passes (5 layers: 1365 per image, each also an entry in the shared embedding cache).
MAX_CROP_N_LAYERS = 4
# segment_anything has no limit either: n points per side is n^2 decoder prompts per crop (and
# a grid of n^2 points); 128 is 16 times the default's 1024 prompts. Refused above it.
MAX_POINTS_PER_SIDE = 128
# Points decoded at once, whatever points_per_batch asks: a batch's low-res logits take 1 MiB a
# point (4 masks of 256x256 float32), so 10^5 would take 100 GB. The records do not depend on it.
MAX_POINTS_PER_BATCH = 256


@dataclass
class AmgOptions:
    """SamAutomaticMaskGenerator's parameters, with its defaults."""

    points_per_side: Optional[int] = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def validate(self) -> "AmgOptions":
        """Checks the values and turns numbers of any kind (Python, numpy scalars, 0-d arrays)
        into Python int / float, as SamAutomaticMaskGenerator accepts them; returns self."""
        for name, kind in _OPTION_KINDS.items():
            setattr(self, name, _number(name, getattr(self, name), kind))
        if self.points_per_side is None or not 1 <= self.points_per_side <= MAX_POINTS_PER_SIDE:
            raise InputError(f"points_per_side: got {self.points_per_side}, expected 1..{MAX_POINTS_PER_SIDE} "
                             f"(n points per side are n^2 decoder prompts per crop; samrt refuses more than "
                             f"{MAX_POINTS_PER_SIDE})")
        if self.points_per_batch < 1:
            raise InputError(f"points_per_batch: got {self.points_per_batch}, expected >= 1")
        if self.crop_n_points_downscale_factor < 1:
            raise InputError(f"crop_n_points_downscale_factor: got {self.crop_n_points_downscale_factor}, expected >= 1")
        if self.crop_n_layers < 0 or self.crop_n_layers > MAX_CROP_N_LAYERS:
            n = self.crop_n_layers
            crops = sum(4 ** i for i in range(n + 1)) if 0 <= n <= 12 else "over 22 million"
            raise InputError(
                f"crop_n_layers: got {n}, expected 0..{MAX_CROP_N_LAYERS}: layer i adds 4^i crops, each one encoder pass "
                f"({crops} passes per image for {n} layers); samrt's server refuses more than {MAX_CROP_N_LAYERS} layers "
                f"(341 passes) so that one request cannot hold the encoder for hours")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_fields(cls, fields: dict) -> "AmgOptions":
        """Options from a mapping of parameter names (e.g. the JSON of `sam_amg`'s `options`), checked."""
        if not isinstance(fields, dict):
            raise InputError(f"options: got {type(fields).__name__}, expected a JSON object of parameters")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InputError(f"options: got unknown {unknown}, expected names from {sorted(known)}")
        return cls(**fields).validate()


_OPTION_KINDS = {"points_per_side": int, "points_per_batch": int, "pred_iou_thresh": float,
                 "stability_score_thresh": float, "stability_score_offset": float, "box_nms_thresh": float,
                 "crop_n_layers": int, "crop_nms_thresh": float, "crop_overlap_ratio": float,
                 "crop_n_points_downscale_factor": int, "min_mask_region_area": int}


def _number(name: str, value, kind: type):
    """`value` (a Python or numpy number, or a 0-d array; None passes) as a Python `kind`;
    InputError for anything else, and for a non-integral value where an integer is expected."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got {type(value).__name__} {value!r}, expected a number")
    v = arr.item()
    if kind is float:
        return float(v)
    if isinstance(v, float) and not (np.isfinite(v) and v == int(v)):
        raise InputError(f"{name}: got {value!r}, expected an integer")
    return int(v)


def build_point_grid(n: int) -> np.ndarray:
    """n x n points in [0, 1] x [0, 1], cell centres."""
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def generate_crop_boxes(size: Tuple[int, int], n_layers: int, overlap_ratio: float) -> Tuple[List[List[int]], List[int]]:
    """The full image, then 2^i x 2^i overlapping crops per layer i (XYXY)."""
    im_h, im_w = size
    short = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for i in range(n_layers):
        per_side = 2 ** (i + 1)
        overlap = int(overlap_ratio * short * (2 / per_side))
        cw = int(np.ceil((overlap * (per_side - 1) + im_w) / per_side))
        ch = int(np.ceil((overlap * (per_side - 1) + im_h) / per_side))
        for x0 in [int((cw - overlap) * k) for k in range(per_side)]:  # x outer, y inner, as SAM
            for y0 in [int((ch - overlap) * k) for k in range(per_side)]:
                boxes.append([x0, y0, min(x0 + cw, im_w), min(y0 + ch, im_h)])
                layers.append(i + 1)
    return boxes, layers


def stability_score(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
    """IoU between the masks thresholded at threshold +- offset: [..., H, W] -> [...]."""
    inter = (logits > threshold + offset).sum(axis=(-1, -2), dtype=np.int64)
    union = (logits > threshold - offset).sum(axis=(-1, -2), dtype=np.int64)
    return inter / np.maximum(union, 1) * (union > 0) + (union == 0) * 0.0


def _box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    return inter / np.maximum(area(box) + area(others) - inter, 1e-12)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (torchvision.ops.nms semantics): indices kept, by decreasing score."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= _box_iou(boxes[i], boxes) > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Remove disconnected islands ('islands') or fill small holes ('holes'); 8-connectivity."""
    from scipy import ndimage  # scipy: the client extra

    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    labels, n = ndimage.label(working, structure=np.ones((3, 3), int))
    sizes = np.bincount(labels.ravel())[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(n + 1) if i not in fill]
        if not fill:  # every region is small: keep the largest
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, fill), True


def uncompressed_rle(mask: np.ndarray) -> Dict:
    """Column-major run lengths starting with the count of zeros (segment_anything's format)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    idx = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(idx).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


class AmgCancelled(SamrtError):
    """generate_masks stopped because its `should_stop` callback said so (the client has gone)."""


# Masks upscaled to full resolution at once: bounds the job's memory to about
# UPSCALE_CHUNK x H x W x 4 bytes of logits (plus the kept masks as RLE), whatever points_per_batch is.
UPSCALE_CHUNK = 8


def _check_stop(should_stop: Optional[Callable[[], bool]]) -> None:
    if should_stop is not None and should_stop():
        raise AmgCancelled("automatic mask generation cancelled: the request was abandoned by its client")


def _process_crop(set_crop: CropFn, image, crop_box, grid, opts: AmgOptions, orig_size,
                  should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, list]:
    x0, y0, x1, y1 = crop_box
    crop = image[y0:y1, x0:x1]
    ch, cw = crop.shape[:2]
    decode = set_crop(crop)
    points_all = grid * np.array([[cw, ch]])
    out: Dict[str, list] = {"rles": [], "iou": [], "points": [], "stability": [], "boxes": []}
    step = min(opts.points_per_batch, MAX_POINTS_PER_BATCH)  # bounded memory; the same records
    for start in range(0, len(points_all), step):
        _check_stop(should_stop)
        points = points_all[start : start + step]
        decoded = decode(points)
        if len(decoded) == 3:  # low-res logits and how to upscale them
            low, iou, upscale = decoded
        else:  # logits at crop size already
            (low, iou), upscale = decoded, None
        low = low.reshape((-1,) + low.shape[-2:])
        iou = iou.reshape(-1)
        pts = np.repeat(points, low.shape[0] // len(points), axis=0)
        keep = iou > opts.pred_iou_thresh if opts.pred_iou_thresh > 0 else np.ones(len(iou), bool)
        low, iou, pts = low[keep], iou[keep], pts[keep]
        for c in range(0, len(low), UPSCALE_CHUNK):  # full-resolution logits for a few masks at a time
            logits = low[c : c + UPSCALE_CHUNK]
            if upscale is not None:
                logits = upscale(logits)
            c_iou, c_pts = iou[c : c + UPSCALE_CHUNK], pts[c : c + UPSCALE_CHUNK]
            stab = stability_score(logits, 0.0, opts.stability_score_offset)
            if opts.stability_score_thresh > 0:
                keep = stab >= opts.stability_score_thresh
                logits, c_iou, c_pts, stab = logits[keep], c_iou[keep], c_pts[keep], stab[keep]
            masks = logits > 0.0
            del logits
            boxes = masks_to_boxes(masks)
            keep = np.flatnonzero(~_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]]))
            out["rles"].extend(masks_to_rles(masks[keep]))
            for k in keep:
                out["iou"].append(float(c_iou[k]))
                out["points"].append(c_pts[k] + np.array([x0, y0]))
                out["stability"].append(float(stab[k]))
                out["boxes"].append(boxes[k])
    if not out["rles"]:
        return {"rles": [], "iou": [], "points": [], "stability": [], "boxes": [], "crop_boxes": []}
    boxes = np.stack(out["boxes"])
    keep = box_nms(boxes, np.asarray(out["iou"], np.float32), opts.box_nms_thresh)
    result = {k: [v[i] for i in keep] for k, v in out.items()}
    if (x0, y0, x1, y1) != (0, 0, orig_size[1], orig_size[0]):
        for j, rle in enumerate(result["rles"]):  # uncrop to the full image, one mask at a time
            canvas = np.zeros(orig_size, bool)
            canvas[y0:y1, x0:x1] = rle_to_mask(rle)
            result["rles"][j] = mask_to_rle(canvas)
    result["boxes"] = [boxes[i] + np.array([x0, y0, x0, y0], np.float32) for i in keep]
    result["crop_boxes"] = [list(crop_box) for _ in keep]
    return result


def _near_crop_edge(boxes: np.ndarray, crop_box, orig_box, atol: float = 20.0) -> np.ndarray:
    crop = np.asarray(crop_box, np.float32)
    orig = np.asarray(orig_box, np.float32)
    uncropped = boxes + np.array([crop[0], crop[1], crop[0], crop[1]], np.float32)
    near_crop = np.isclose(uncropped, crop[None], atol=atol, rtol=0)
    near_image = np.isclose(uncropped, orig[None], atol=atol, rtol=0)
    return np.any(near_crop & ~near_image, axis=1)


def generate_masks(image: np.ndarray, set_crop: CropFn, opts: AmgOptions, output_mode: str = "coco_rle",
                   should_stop: Optional[Callable[[], bool]] = None) -> List[Dict]:
    """All masks of `image` (HxWx3 uint8) as SamAutomaticMaskGenerator.generate's records.

    `set_crop(crop)` returns the crop's decode function: `decode(points [B,2] in crop pixels)` ->
    `(low_res_logits [B,3,m,m], iou [B,3], upscale)` where `upscale([k,m,m]) -> [k,h,w]` logits at
    crop size (or `(logits [B,3,h,w], iou)` already at crop size, which costs B x 3 x h x w x 4
    bytes at once). Memory: full-resolution logits exist for UPSCALE_CHUNK masks at a time and kept
    masks are held as COCO RLE, so a job's peak is bounded by the image size, not points_per_batch.
    `should_stop()` is asked before every batch of points; when it answers true, AmgCancelled is
    raised. Errors: InputError for bad options or output_mode."""
    if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
        raise InputError(f"output_mode: got {output_mode!r}, expected binary_mask, uncompressed_rle or coco_rle")
    opts.validate()
    orig_size = image.shape[:2]
    crop_boxes, layers = generate_crop_boxes(orig_size, opts.crop_n_layers, opts.crop_overlap_ratio)
    grids = [build_point_grid(int(opts.points_per_side / (opts.crop_n_points_downscale_factor ** i)))
             for i in range(opts.crop_n_layers + 1)]
    data: Dict[str, list] = {"rles": [], "iou": [], "points": [], "stability": [], "boxes": [], "crop_boxes": []}
    for box, layer in zip(crop_boxes, layers):
        _check_stop(should_stop)
        part = _process_crop(set_crop, image, box, grids[layer], opts, orig_size, should_stop)
        for k in data:
            data[k].extend(part[k])
    if len(crop_boxes) > 1 and data["rles"]:
        cb = np.asarray(data["crop_boxes"], np.float32)
        scores = 1 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))
        keep = box_nms(np.asarray(data["boxes"], np.float32), scores, opts.crop_nms_thresh)
        data = {k: [v[i] for i in keep] for k, v in data.items()}
    if opts.min_mask_region_area > 0 and data["rles"]:
        _check_stop(should_stop)
        data = _postprocess_small_regions(data, opts.min_mask_region_area, max(opts.box_nms_thresh, opts.crop_nms_thresh))
    records = []
    for i, rle in enumerate(data["rles"]):
        if output_mode == "coco_rle":
            seg = {"size": list(rle["size"]), "counts": rle["counts"]}
        elif output_mode == "uncompressed_rle":
            seg = uncompressed_rle(rle_to_mask(rle))
        else:
            seg = rle_to_mask(rle)
        b = data["boxes"][i]
        cb = data["crop_boxes"][i]
        records.append({
            "segmentation": seg,
            "area": rle_area(rle),
            # ints and floats exactly where segment_anything has them: boxes are pixel indices
            "bbox": [int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1])],
            "predicted_iou": float(data["iou"][i]),
            "point_coords": [[float(v) for v in data["points"][i]]],
            "stability_score": float(data["stability"][i]),
            "crop_box": [int(cb[0]), int(cb[1]), int(cb[2] - cb[0]), int(cb[3] - cb[1])],
        })
    return records


def _postprocess_small_regions(data, min_area: int, nms_thresh: float):
    """Fill small holes, remove small islands (one mask decoded at a time), then NMS preferring
    masks that needed no change."""
    new_rles, boxes, scores = [], [], []
    for rle in data["rles"]:
        m = rle_to_mask(rle)
        m, changed = remove_small_regions(m, min_area, "holes")
        unchanged = not changed
        m, changed = remove_small_regions(m, min_area, "islands")
        unchanged = unchanged and not changed
        new_rles.append(rle if unchanged else mask_to_rle(m))
        boxes.append(masks_to_boxes(m))
        scores.append(float(unchanged))  # prefer masks that needed no change
    keep = box_nms(np.stack(boxes), np.asarray(scores, np.float32), nms_thresh)
    out = {k: [v[i] for i in keep] for k, v in data.items()}
    for j, i in enumerate(keep):
        if scores[i] == 0.0:  # recompute what changed
            out["rles"][j] = new_rles[i]
            out["boxes"][j] = boxes[i]
    return out
