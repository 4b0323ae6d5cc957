"""SAM's mask upscaling (`Sam.postprocess_masks`) as two banded matrix products, in numpy.

`segment_anything.modeling.Sam.postprocess_masks` resizes the decoder's low-res logits with
`torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` to the padded square
image_size x image_size, crops the top-left input_size (the resized (h, w) before padding), and
resizes bilinearly again to original_size (H, W). Each step is linear and separable, so per axis
the whole chain is one matrix: rows `R` [H, m_h] and columns `C` [W, m_w], and

    out[..., :, :] = R @ low_res[..., :, :] @ C.T

Both resizes follow torch's source-index rule for align_corners=False: output i reads the input
at `src = max(scale * (i + 0.5) - 0.5, 0)` with `scale = in / out` (computed as torch's CPU
kernel rounds it, see `_source_index`), taps floor(src) and floor(src) + 1
(clamped to the last row) with weights 1 - frac and frac. A composite row therefore has at most
four nonzero taps on consecutive low-res rows: the matrices are banded. They are built once per
(m, input_size, original_size, image_size) and kept in a bounded LRU cache as a list of blocks:
a run of output rows and the few low-res rows their band covers, so the products touch the band
only (a block's band is at most `_BAND` low-res rows wide) instead of the dense m x m grid.

Order of work: the column product first on the low-res rows that `R` uses (small), then the row
product block by block, each block writing a contiguous run of output rows.

Tolerance: the composite weights are computed in float64 and rounded once to float32, while
torch rounds after each resize, so the two differ by float32 rounding only: against
`Sam.postprocess_masks` the max abs difference is <= 1e-4 for logits of magnitude ~10 (seen
<= 8e-6 for standard deviation 10, peaks ~36), and the thresholded masks (> 0) agree on >= 99.99%
of pixels: they can differ only where a logit lies within that distance of 0
(tests/test_upscale.py checks both on odd sizes and 1-pixel strips).
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Sequence, Tuple

import numpy as np

from .errors import InputError

__all__ = ["upscale_logits", "axis_matrix", "clear_cache", "cache_info"]

# A block of output rows covers at most this many low-res rows (a block always takes at least
# one output row). Measured on the 2-core Xeon: 8 balances the per-call cost of numpy's matmul
# against the zeros multiplied inside a block (benchmarks/upscale.py).
_BAND = 8

def _source_index(in_size: int, out_size: int, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First `n` outputs of torch's bilinear (align_corners=False) resampling along one axis:
    (index0 int64, index1 int64, frac float32), output i = (1 - frac) * x[index0] + frac * x[index1]."""
    scale = np.float32(in_size / out_size)
    # torch's CPU kernel computes scale * (i + 0.5) - 0.5 with one rounding (a fused
    # multiply-add): computing it in float64 and rounding once reproduces its indices.
    src = (np.float64(scale) * (np.arange(n) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, lam1


_Block = Tuple[int, int, int, int, np.ndarray]  # (out0, out1, low0, low1, weights [out1-out0, low1-low0])


def _taps(in_size: int, out_size: int, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first `n` outputs of torch's bilinear resize in_size -> out_size along one axis:
    (index0, index1, weight0, weight1), weights float64 holding torch's float32 values."""
    i0, i1, lam1 = _source_index(in_size, out_size, n)
    lam0 = np.float32(1) - lam1
    return i0, i1, lam0.astype(np.float64), lam1.astype(np.float64)


def axis_matrix(m: int, keep: int, out: int, image_size: int) -> np.ndarray:
    """The composite resize along one axis as a dense float32 matrix [out, m].

    Bilinear m -> image_size, keep the first `keep` outputs (the crop to input_size), bilinear
    keep -> out; weights computed in float64 and rounded once. Not cached (the upscaling itself
    uses the cached blocks of `_axis_plan`).
    """
    a0, a1, w0, w1 = _taps(m, image_size, keep)  # padded square grid (first `keep`) <- low-res
    b0, b1, v0, v1 = _taps(keep, out, out)  # original size <- cropped grid
    mat = np.zeros((out, m), dtype=np.float64)
    rows = np.arange(out)
    for idx, v in ((b0, v0), (b1, v1)):
        np.add.at(mat, (rows, a0[idx]), v * w0[idx])
        np.add.at(mat, (rows, a1[idx]), v * w1[idx])
    return mat.astype(np.float32)


@lru_cache(maxsize=64)
def _axis_plan(m: int, keep: int, out: int, image_size: int) -> Tuple[int, int, Tuple[_Block, ...]]:
    """(low0, low1, blocks): the low-res range [low0, low1) the axis uses, and its banded blocks
    with low-res indices relative to low0. Arrays are read-only (shared through the cache)."""
    mat = axis_matrix(m, keep, out, image_size)
    nz = mat != 0
    # Every output has at least one nonzero tap (weights of a row sum to 1): lo/hi are defined,
    # and both are non-decreasing along the output axis.
    lo = nz.argmax(axis=1)
    hi = m - nz[:, ::-1].argmax(axis=1)
    low0, low1 = int(lo.min()), int(hi.max())
    blocks: List[_Block] = []
    o0 = 0
    while o0 < out:
        k0 = int(lo[o0])
        # Extend while the band stays within _BAND low-res rows (hi is non-decreasing).
        o1 = o0 + 1 + int(np.searchsorted(hi[o0 + 1:], k0 + _BAND, side="right"))
        k1 = int(hi[o0:o1].max())
        w = np.ascontiguousarray(mat[o0:o1, k0:k1])
        w.setflags(write=False)
        blocks.append((o0, o1, k0 - low0, k1 - low0, w))
        o0 = o1
    return low0, low1, tuple(blocks)


def clear_cache() -> None:
    """Drop the cached weight blocks (they are rebuilt on the next call)."""
    _axis_plan.cache_clear()


def cache_info():
    """functools' cache statistics of the per-axis weight blocks (hits, misses, maxsize, currsize)."""
    return _axis_plan.cache_info()


def _check_sizes(name: str, size: Sequence[int], upper: int = 0) -> Tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"{name}: got {size!r}, expected two integers (h, w)") from None
    if h < 1 or w < 1 or (upper and (h > upper or w > upper)):
        want = f"1..{upper}" if upper else ">= 1"
        raise InputError(f"{name}: got ({h}, {w}), expected both in {want}")
    return h, w


def upscale_logits(
    low_res: np.ndarray, input_size: Sequence[int], original_size: Sequence[int], image_size: int = 1024
) -> np.ndarray:
    """Low-res mask logits [..., m_h, m_w] -> logits at original_size [..., H, W], float32.

    The values of `Sam.postprocess_masks` (see the module docstring for the method and the
    tolerance). `input_size` is the resized (h, w) before padding (`get_preprocess_shape` of
    original_size), `image_size` the padded square side the encoder takes (1024 for SAM).
    Any leading dims, including empty ones. Raises InputError for fewer than 2 dims, an empty
    low-res grid, or sizes outside 1..image_size (input_size) or below 1 (original_size).
    """
    x = np.asarray(low_res, dtype=np.float32)
    if x.ndim < 2 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise InputError(f"low_res: got shape {x.shape}, expected [..., m, m] with m >= 1")
    image_size = int(image_size)
    if image_size < 1:
        raise InputError(f"image_size: got {image_size}, expected >= 1")
    keep_h, keep_w = _check_sizes("input_size", input_size, image_size)
    out_h, out_w = _check_sizes("original_size", original_size)
    lead, (m_h, m_w) = x.shape[:-2], x.shape[-2:]
    r0, r1, row_blocks = _axis_plan(m_h, keep_h, out_h, image_size)
    c0, _, col_blocks = _axis_plan(m_w, keep_w, out_w, image_size)
    n = int(np.prod(lead, dtype=np.int64))
    out = np.empty((n, out_h, out_w), dtype=np.float32)
    if n == 0:
        return out.reshape(lead + (out_h, out_w))
    # Columns first, on the low-res rows that R uses: [n * (r1 - r0), m_w] @ C.T, block by block.
    rows = np.ascontiguousarray(x.reshape(n, m_h, m_w)[:, r0:r1]).reshape(-1, m_w)
    t = np.empty((rows.shape[0], out_w), dtype=np.float32)
    for o0, o1, k0, k1, w in col_blocks:
        np.matmul(rows[:, c0 + k0:c0 + k1], w.T, out=t[:, o0:o1])
    t = t.reshape(n, r1 - r0, out_w)
    # Then rows: each block writes out[:, o0:o1, :] (contiguous per mask) from its band of t.
    for o0, o1, k0, k1, w in row_blocks:
        np.matmul(w, t[:, k0:k1], out=out[:, o0:o1])
    return out.reshape(lead + (out_h, out_w))
