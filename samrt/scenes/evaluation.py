"""Point- and box-prompt evaluation on the held-out generated scenes (no torch).

Works with any predictor that has SamPredictor's `set_image` / `predict` (the official
SamPredictor, samrt's OnnxSamPredictor, the Triton predictor). Reports what the SAM paper
reports for point prompts: mIoU from one centre point (the predicted-best mask and the oracle
best of 3), mIoU against the number of clicks (later clicks at the centre of the error region,
with the previous logits as mask prompt), and mIoU from the ground-truth box.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from samrt.masks import mask_iou, masks_to_boxes

from .generate import EVAL_SEED, Scene, scene_for_index

__all__ = ["eval_scenes", "centre_point", "next_click", "evaluate"]

CLICKS = (1, 2, 3, 5)


def eval_scenes(n: int = 60, stream: int = EVAL_SEED) -> List[Scene]:
    """The held-out evaluation set: scenes 0..n-1 of a stream that training never draws from."""
    return [scene_for_index(i, stream) for i in range(n)]


def centre_point(mask: np.ndarray) -> Tuple[float, float]:
    """(x, y) of the pixel farthest from the mask's boundary."""
    from scipy.ndimage import distance_transform_edt  # scipy: the client extra

    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def next_click(pred: np.ndarray, gt: np.ndarray) -> Optional[Tuple[Tuple[float, float], int]]:
    """The centre of the error region and its label (1 missed object, 0 false positive)."""
    err = pred ^ gt
    if not err.any():
        return None
    x, y = centre_point(err)
    return (x, y), int(gt[int(y), int(x)])


def evaluate(predictor, scenes: Iterable[Scene], clicks: Sequence[int] = CLICKS, progress: bool = False) -> Dict:
    """mIoU figures over every ground-truth instance of `scenes`."""
    from tqdm import tqdm  # tqdm: the client extra

    best, oracle, box_ious = [], [], []
    per_click: Dict[int, List[float]] = {k: [] for k in clicks}
    kinds: Dict[str, List[float]] = {}
    scenes = list(scenes)
    for scene in tqdm(scenes, desc="eval", disable=not progress):
        predictor.set_image(scene.image)
        for gt, kind in zip(scene.masks, scene.kinds):
            pts = [centre_point(gt)]
            labels = [1]
            masks, scores, low = predictor.predict(np.array(pts), np.array(labels), multimask_output=True)
            ious = [mask_iou(m, gt) for m in masks]
            i = int(np.argmax(scores))
            best.append(ious[i])
            oracle.append(max(ious))
            kinds.setdefault(kind, []).append(max(ious))
            pred, prev = masks[i], low[i : i + 1]
            for k in range(1, max(clicks) + 1):
                if k > 1:
                    nxt = next_click(pred, gt)
                    if nxt is not None:
                        pts.append(nxt[0])
                        labels.append(nxt[1])
                    m, _, low = predictor.predict(np.array(pts), np.array(labels), mask_input=prev, multimask_output=False)
                    pred, prev = m[0], low[0:1]
                if k in per_click:
                    per_click[k].append(mask_iou(pred, gt))
            m, _, _ = predictor.predict(box=masks_to_boxes(gt).astype(np.float64), multimask_output=False)
            box_ious.append(mask_iou(m[0], gt))
    return {
        "num_scenes": len(scenes),
        "num_objects": len(best),
        "miou_1pt_best": float(np.mean(best)),
        "miou_1pt_oracle": float(np.mean(oracle)),
        "miou_clicks": {str(k): float(np.mean(v)) for k, v in per_click.items()},
        "miou_box": float(np.mean(box_ious)),
        "miou_1pt_oracle_by_kind": {k: round(float(np.mean(v)), 4) for k, v in sorted(kinds.items())},
        "frac_objects_iou_ge_0.8_1pt_oracle": float(np.mean(np.array(oracle) >= 0.8)),
    }
