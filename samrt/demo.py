"""`make demo`: export (cached), render the repository, start tritonserver, encode a generated
sample and decode one click through it, write the overlay, stop the server."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import numpy as np

from .visualize import candidates, overlay, sample_image, save_png


def ensure_export(out_dir: str, model_type: str, checkpoint: Optional[str] = None, seed: int = 0) -> dict:
    """Export unless `out_dir` already holds a passing export of the same source."""
    report_path = os.path.join(out_dir, "export_report.json")
    source = os.path.abspath(checkpoint) if checkpoint else None
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
        same_type = model_type in ("auto", None) or report["config"]["model_type"] == model_type
        if report.get("passed") and report.get("checkpoint") == source and same_type:
            return report
    from samrt.export import export_sam, load_sam, random_sam
    from samrt.spec import get_config

    if checkpoint:
        sam, cfg = load_sam(checkpoint, model_type)
    else:
        cfg = get_config(model_type)
        sam = random_sam(cfg, seed=seed)
    return export_sam(sam, cfg, out_dir, checkpoint=checkpoint, random_init=checkpoint is None, seed=seed).report


def run_demo(out_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto", random_init: bool = False) -> dict:
    from samrt.client import SamClient, TritonSamPredictor
    from samrt.model_repository.launch import default_checkpoint, prepare_repository
    from samrt.model_repository.server import TritonServer

    if checkpoint is None and not random_init and default_checkpoint() is None:
        print("no embedded model in this install: using RANDOM-INIT vit_b weights (the mask means nothing)",
              file=sys.stderr)
        random_init, model_type = True, "vit_b" if model_type == "auto" else model_type
    repo = prepare_repository(out_dir, checkpoint, model_type, random_init=random_init)
    with open(os.path.join(out_dir, "export", "export_report.json")) as f:
        report = json.load(f)
    image, click = sample_image()
    with TritonServer(repo, work_dir=os.path.join(out_dir, "triton_work")) as server:
        with SamClient(server.grpc_url) as client:
            predictor = TritonSamPredictor(client)
            t0 = time.perf_counter()
            predictor.set_image(image)
            t1 = time.perf_counter()
            points, labels = np.array([click], dtype=np.float32), np.array([1])
            masks, scores, _ = predictor.predict(points, labels, multimask_output=True)
            t2 = time.perf_counter()
    best = int(np.argmax(scores))
    save_png(os.path.join(out_dir, "sample.png"), image)
    path = save_png(os.path.join(out_dir, "overlay.png"), overlay(image, masks[best], points, labels))
    sheet = save_png(os.path.join(out_dir, "candidates.png"), candidates(image, masks, scores, points, labels))
    return {
        "model": report["name"],
        "checkpoint": report["checkpoint"],
        "random_init": report["random_init"],
        "served_by": f"tritonserver at {server.grpc_url} (gRPC), stopped",
        "click": list(click),
        "scores": [round(float(s), 4) for s in scores],
        "mask_pixels": int(masks[best].sum()),
        "encode_ms": round((t1 - t0) * 1e3, 1),
        "click_to_mask_ms": round((t2 - t1) * 1e3, 1),
        "overlay": os.path.abspath(path),
        "candidates": os.path.abspath(sheet),
    }
