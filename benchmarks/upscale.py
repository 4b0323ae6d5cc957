"""Mask upscaling (Sam.postprocess_masks' values) per click: the banded matrix products of
`samrt.upscale`, the old numpy fancy-indexing path, and torch's F.interpolate.

Timed region of every row: one call that turns C low-res logits [1, C, m, m] float32 into logits
[1, C, H, W] float32 at the original size (thresholding not included).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from samrt import processing as P
from samrt import upscale as U

from .common import latency_stats, time_calls

__all__ = ["DEFAULT_SIZES", "bench_upscale"]

# (original (H, W), timed repeats): a VGA photo, SAM's notebook size, a 12 MP phone photo.
DEFAULT_SIZES: Tuple[Tuple[Tuple[int, int], int], ...] = (((480, 640), 100), ((1500, 2250), 20), ((3024, 4032), 8))
BUDGET_MS = 1.0  # the click issue's target (#23) for three 480x640 masks on the 2-core CPU (larger images take longer)


def _torch_upscale(image_size: int):
    """Sam.postprocess_masks' own code as a function of numpy logits (None without torch)."""
    try:
        import torch  # torch: the export extra (the reference; None without it)
        import torch.nn.functional as F
    except ImportError:
        return None, None

    def run(low: np.ndarray, input_size, original_size) -> np.ndarray:
        with torch.no_grad():
            x = F.interpolate(torch.from_numpy(low), (image_size, image_size), mode="bilinear", align_corners=False)
            x = x[..., : input_size[0], : input_size[1]]
            return F.interpolate(x, original_size, mode="bilinear", align_corners=False).numpy()

    return run, torch.get_num_threads()


def _old_numpy(low: np.ndarray, input_size, original_size, image_size: int) -> np.ndarray:
    padded = P.interpolate_bilinear(low, (image_size, image_size), keep_hw=input_size)
    return P.interpolate_bilinear(padded, original_size)


def _first_calls(low, input_size, original_size, image_size, repeats: int) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(first call with an empty cache, building the weight blocks alone), each over `repeats`."""
    first, build = [], []
    for _ in range(repeats):
        U.clear_cache()
        t = time.perf_counter()
        U.upscale_logits(low, input_size, original_size, image_size)
        first.append((time.perf_counter() - t) * 1e3)
        U.clear_cache()
        t = time.perf_counter()
        U._axis_plan(low.shape[-2], input_size[0], original_size[0], image_size)
        U._axis_plan(low.shape[-1], input_size[1], original_size[1], image_size)
        build.append((time.perf_counter() - t) * 1e3)
    return latency_stats(first), latency_stats(build)


def bench_upscale(sizes: Sequence[Tuple[Tuple[int, int], int]] = DEFAULT_SIZES, masks: int = 3,
                  image_size: int = 1024, low_res: int = 256, warmup: int = 3, old_repeats: Optional[int] = 5,
                  seed: int = 0) -> List[dict]:
    """Rows for each original size: banded (steady state), banded first call, old numpy, torch.

    `sizes` pairs an original (H, W) with the repeats of the steady-state rows; the old numpy
    path (slow at large sizes) runs min(repeats, old_repeats) times. Each row carries p50/p90 over
    the repeats after `warmup` calls and `max_abs_diff_vs_torch` of its output (None without torch).
    """
    torch_fn, torch_threads = _torch_upscale(image_size)
    rows: List[dict] = []
    for original_size, repeats in sizes:
        original_size = tuple(int(s) for s in original_size)
        input_size = tuple(max(1, s) for s in P.get_preprocess_shape(*original_size, image_size))
        rng = np.random.default_rng(seed)
        low = (rng.standard_normal((1, masks, low_res, low_res)) * 10).astype(np.float32)
        ref = torch_fn(low, input_size, original_size) if torch_fn else None

        def diff(out: np.ndarray) -> Optional[float]:
            return None if ref is None else float(np.abs(out - ref).max())

        base = {"bench": "upscale", "original_size": list(original_size), "input_size": list(input_size),
                "masks": masks, "low_res": low_res, "image_size": image_size, "budget_ms": BUDGET_MS,
                "numpy_blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "OpenBLAS default"),
                "load_average_1min": os.getloadavg()[0],  # other processes on the machine when it started
                "timed": f"one call: [1,{masks},{low_res},{low_res}] float32 logits -> [1,{masks},H,W] float32 logits"}
        first, build = _first_calls(low, input_size, original_size, image_size, repeats=min(repeats, 5))
        steady = time_calls(lambda: U.upscale_logits(low, input_size, original_size, image_size), repeats, warmup)
        out = U.upscale_logits(low, input_size, original_size, image_size)
        rows.append({**base, "method": "banded-matmul", "note": "samrt.upscale, cached weights (steady state)",
                     **steady, "max_abs_diff_vs_torch": diff(out), "budget_met_p50": steady["p50_ms"] <= BUDGET_MS})
        rows.append({**base, "method": "banded-matmul first call", **first, "build_weights_p50_ms": build["p50_ms"],
                     "note": "empty cache: builds both axes' weight blocks, then upscales; build_weights_p50_ms is "
                             "the build alone", "max_abs_diff_vs_torch": diff(out)})
        n_old = min(repeats, old_repeats) if old_repeats else repeats
        old = time_calls(lambda: _old_numpy(low, input_size, original_size, image_size), n_old, min(warmup, 1))
        rows.append({**base, "method": "numpy fancy indexing", "note": "processing.interpolate_bilinear twice "
                     "(the path before samrt.upscale)", **old,
                     "max_abs_diff_vs_torch": diff(_old_numpy(low, input_size, original_size, image_size))})
        if torch_fn is not None:
            tt = time_calls(lambda: torch_fn(low, input_size, original_size), repeats, warmup)
            rows.append({**base, "method": "torch F.interpolate", "torch_threads": torch_threads,
                         "note": "Sam.postprocess_masks' code, eager, no_grad", **tt, "max_abs_diff_vs_torch": 0.0})
        del ref
    return rows
