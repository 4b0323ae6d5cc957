"""`make demo`: export (cached), render the repository, start tritonserver, encode a generated
sample and decode one click through it, write the overlay, stop the server."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import numpy as np

from samrt.artifacts import ExportManifest, default_checkpoint, prepare_output_dir
from samrt.client import SamClient, TritonSamPredictor
from samrt.model_repository.server import TritonServer
from samrt.visualize import candidates, overlay, sample_image, save_png

from .pipeline import build_repository


def run_demo(out_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto", random_init: bool = False,
             memory_check: bool = True) -> dict:
    if checkpoint is None and not random_init and default_checkpoint() is None:
        print("no embedded model in this install: using RANDOM-INIT vit_b weights (the mask means nothing)",
              file=sys.stderr)
        random_init, model_type = True, "vit_b" if model_type == "auto" else model_type
    prepare_output_dir(out_dir, "demo")
    repo = build_repository(out_dir, checkpoint, model_type, random_init=random_init, memory_check=memory_check)
    manifest = ExportManifest.read(os.path.join(out_dir, "export"))
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
        "model": manifest.name,
        "checkpoint": manifest.checkpoint,
        "random_init": manifest.random_init,
        "served_by": f"tritonserver at {server.grpc_url} (gRPC), stopped",
        "click": list(click),
        "scores": [round(float(s), 4) for s in scores],
        "mask_pixels": int(masks[best].sum()),
        "encode_ms": round((t1 - t0) * 1e3, 1),
        "click_to_mask_ms": round((t2 - t1) * 1e3, 1),
        "overlay": os.path.abspath(path),
        "candidates": os.path.abspath(sheet),
    }
