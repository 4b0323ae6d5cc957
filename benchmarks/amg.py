"""Automatic mask generation through the server: images per second and masks per image."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import numpy as np

from samrt.client import SamClient, TritonSamAutomaticMaskGenerator

from .common import latency_stats

__all__ = ["bench_amg"]


def bench_amg(url: str, images: Sequence[np.ndarray], protocol: str = "grpc", points_per_side: int = 32,
              base: Optional[dict] = None, **params) -> List[dict]:
    with SamClient(url, protocol, timeout=3600) as client:
        gen = TritonSamAutomaticMaskGenerator(client, points_per_side=points_per_side, output_mode="coco_rle", **params)
        gen.generate(images[0])  # warm-up (also caches the first embedding), not timed
        times, counts = [], []
        for im in images:
            t = time.perf_counter()
            counts.append(len(gen.generate(im)))
            times.append((time.perf_counter() - t) * 1e3)
    return [{**(base or {}), "bench": "amg", "points_per_side": points_per_side, "params": params,
             "timed": "client side: one sam_amg request per image (encode on the server included)",
             "images": len(images), "images_per_s": len(images) / (sum(times) / 1e3),
             "masks_per_image": float(np.mean(counts)), **latency_stats(times)}]
