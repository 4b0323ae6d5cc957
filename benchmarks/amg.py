"""Automatic mask generation through the server on new images (not cached before), against the
official `SamAutomaticMaskGenerator` in one process on the same checkpoint, same parameters, same
run: images per second and masks per image."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import numpy as np

from samrt.client import SamClient, TritonSamAutomaticMaskGenerator

from .common import latency_stats

__all__ = ["bench_amg"]


def bench_amg(url: str, images: Sequence[np.ndarray], protocol: str = "grpc", points_per_side: int = 32,
              base: Optional[dict] = None, warmup: Optional[np.ndarray] = None, reference_checkpoint: Optional[str] = None,
              **params) -> List[dict]:
    """`images` must be new to the server (each is encoded inside the timed request); `warmup`, a
    further image, runs first, untimed. With `reference_checkpoint`, the official generator runs
    the same images in this process (PyTorch, SAM's own code) and the row gives the speedup."""
    with SamClient(url, protocol, timeout=3600) as client:
        gen = TritonSamAutomaticMaskGenerator(client, points_per_side=points_per_side, output_mode="coco_rle", **params)
        gen.generate(warmup if warmup is not None else images[0])  # warm-up, not timed
        times, counts = [], []
        for im in images:
            t = time.perf_counter()
            counts.append(len(gen.generate(im)))
            times.append((time.perf_counter() - t) * 1e3)
    row = {**(base or {}), "bench": "amg", "points_per_side": points_per_side, "params": params,
           "image": list(images[0].shape[:2]),
           "timed": "client side: one sam_amg request per new image (the encode on the server included)",
           "images": len(images), "images_per_s": len(images) / (sum(times) / 1e3),
           "masks_per_image": float(np.mean(counts)), **latency_stats(times)}
    if reference_checkpoint:
        ref = reference_amg(reference_checkpoint, images, points_per_side, **params)
        row.update(reference=ref, speedup_p50=ref["p50_ms"] / row["p50_ms"], target_speedup=TARGET_AMG_SPEEDUP,
                   met_speedup=ref["p50_ms"] / row["p50_ms"] >= TARGET_AMG_SPEEDUP)
    return [row]


TARGET_AMG_SPEEDUP = 5.0  # issue #23: >= 5x the official generator in-process


def reference_amg(checkpoint: str, images: Sequence[np.ndarray], points_per_side: int, **params) -> dict:
    """segment_anything's SamAutomaticMaskGenerator in this process on `checkpoint`: the whole
    generate() per image (set_image included), after one untimed call."""
    import torch  # torch: the export extra
    from segment_anything import SamAutomaticMaskGenerator

    from samrt.export import load_sam  # torch: the export extra

    sam, _ = load_sam(checkpoint)
    gen = SamAutomaticMaskGenerator(sam.eval(), points_per_side=points_per_side, output_mode="coco_rle", **params)
    times, counts = [], []
    with torch.no_grad():
        gen.generate(images[0][:64, :64].copy())  # warm-up on a small crop, not timed
        for im in images:
            t = time.perf_counter()
            counts.append(len(gen.generate(im)))
            times.append((time.perf_counter() - t) * 1e3)
    return {"generator": "segment_anything.SamAutomaticMaskGenerator (PyTorch, in-process)",
            "torch_threads": torch.get_num_threads(), "masks_per_image": float(np.mean(counts)),
            "images_per_s": len(images) / (sum(times) / 1e3), **latency_stats(times)}
