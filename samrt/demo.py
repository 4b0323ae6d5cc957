"""`make demo`: export (cached), segment a generated sample from one click, write the overlay."""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np

from .visualize import overlay, sample_image, save_png


def ensure_export(out_dir: str, model_type: str, checkpoint: Optional[str] = None, seed: int = 0) -> dict:
    """Export unless `out_dir` already holds a passing export of the same source."""
    report_path = os.path.join(out_dir, "export_report.json")
    source = os.path.abspath(checkpoint) if checkpoint else None
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
        if report.get("passed") and report.get("checkpoint") == source and report["config"]["model_type"] == model_type:
            return report
    from samrt.export import export_sam, load_sam, random_sam
    from samrt.spec import get_config

    if checkpoint:
        sam, cfg = load_sam(checkpoint, model_type)
    else:
        cfg = get_config(model_type)
        sam = random_sam(cfg, seed=seed)
    return export_sam(sam, cfg, out_dir, checkpoint=checkpoint, random_init=checkpoint is None, seed=seed).report


def run_local_demo(out_dir: str, model_type: str = "vit_b", checkpoint: Optional[str] = None) -> dict:
    from samrt.engines import OnnxSamPredictor

    export_dir = os.path.join(out_dir, model_type)
    report = ensure_export(export_dir, model_type, checkpoint)
    predictor = OnnxSamPredictor.from_onnx(
        os.path.join(export_dir, report["encoder"]["path"]), os.path.join(export_dir, report["decoder"]["path"])
    )
    image, click = sample_image()
    t0 = time.perf_counter()
    predictor.set_image(image)
    t1 = time.perf_counter()
    points, labels = np.array([click], dtype=np.float32), np.array([1])
    masks, scores, _ = predictor.predict(points, labels, multimask_output=True)
    t2 = time.perf_counter()
    best = int(np.argmax(scores))
    save_png(os.path.join(out_dir, "sample.png"), image)
    path = save_png(os.path.join(out_dir, "overlay.png"), overlay(image, masks[best], points, labels))
    return {
        "model": report["name"],
        "random_init": report["random_init"],
        "click": list(click),
        "scores": [round(float(s), 4) for s in scores],
        "mask_pixels": int(masks[best].sum()),
        "encode_ms": round((t1 - t0) * 1e3, 1),
        "decode_ms": round((t2 - t1) * 1e3, 1),
        "overlay": path,
    }
