"""samrt.upscale (banded matrix products) against segment_anything's Sam.postprocess_masks."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam

from samrt import processing as P
from samrt import upscale as U
from samrt.errors import InputError

# Stated tolerance: logits of magnitude ~10 differ from torch's by float32 rounding only.
ATOL = 1e-4
MASK_AGREEMENT = 0.9999


def _postprocess_masks(low: np.ndarray, input_size, original_size, image_size: int) -> np.ndarray:
    """segment_anything's own code (F.interpolate, crop, F.interpolate) on [B, C, m, m]."""
    owner = SimpleNamespace(image_encoder=SimpleNamespace(img_size=image_size))
    with torch.no_grad():
        return Sam.postprocess_masks(owner, torch.from_numpy(low), input_size, original_size).numpy()


def _input_size(original_size, image_size):
    # A 1-pixel strip resizes to 0 rows (get_preprocess_shape rounds 1024/3000 down), which SAM
    # cannot preprocess at all; its mask upscaling is still defined with one kept row.
    return tuple(max(1, s) for s in P.get_preprocess_shape(*original_size, image_size))


@pytest.mark.parametrize("original_size", [(333, 517), (1500, 2250), (480, 640), (1, 3000), (3000, 1)])
def test_matches_postprocess_masks(original_size):
    low = (np.random.default_rng(sum(original_size)).standard_normal((2, 3, 256, 256)) * 10).astype(np.float32)
    input_size = _input_size(original_size, 1024)
    ref = _postprocess_masks(low, input_size, original_size, 1024)
    got = U.upscale_logits(low, input_size, original_size, 1024)
    assert got.dtype == np.float32 and got.shape == ref.shape == (2, 3) + original_size
    assert np.abs(got - ref).max() <= ATOL
    assert np.mean((got > 0) == (ref > 0)) >= MASK_AGREEMENT
    np.testing.assert_array_equal(P.upscale_masks(low, input_size, original_size, 1024), got)


def test_other_image_size_and_low_res_grid():
    """samrt_small's 512 px input (128x128 low-res), no leading dims, and a non-square grid."""
    low = (np.random.default_rng(3).standard_normal((128, 128)) * 10).astype(np.float32)
    input_size = P.get_preprocess_shape(600, 401, 512)
    ref = _postprocess_masks(low[None, None], input_size, (600, 401), 512)[0, 0]
    got = U.upscale_logits(low, input_size, (600, 401), 512)
    assert got.shape == (600, 401) and np.abs(got - ref).max() <= ATOL
    rect = low[:, :100]
    ref = P.interpolate_bilinear(P.interpolate_bilinear(rect, (512, 512), keep_hw=(300, 77)), (91, 205))
    assert np.abs(U.upscale_logits(rect, (300, 77), (91, 205), 512) - ref).max() <= ATOL


def test_leading_dims_dtype_and_empty_batch():
    low = np.random.default_rng(4).standard_normal((2, 1, 3, 64, 64)).astype(np.float16)
    got = U.upscale_logits(low, (192, 256), (30, 40), 256)
    assert got.shape == (2, 1, 3, 30, 40) and got.dtype == np.float32
    ref = _postprocess_masks(low.astype(np.float32).reshape(6, 1, 64, 64), (192, 256), (30, 40), 256)
    assert np.abs(got.reshape(6, 1, 30, 40) - ref).max() <= ATOL
    empty = U.upscale_logits(np.zeros((0, 3, 64, 64), np.float32), (192, 256), (30, 40), 256)
    assert empty.shape == (0, 3, 30, 40) and empty.dtype == np.float32


def test_blocks_cover_the_composite_matrix_within_the_band():
    m, keep, out, size = 256, 683, 1500, 1024
    dense = U.axis_matrix(m, keep, out, size)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, atol=1e-6)  # bilinear weights sum to 1
    low0, low1, blocks = U._axis_plan(m, keep, out, size)
    rebuilt = np.zeros_like(dense)
    assert blocks[0][0] == 0 and blocks[-1][1] == out
    for (o0, o1, k0, k1, w), nxt in zip(blocks, blocks[1:] + (None,)):
        assert nxt is None or nxt[0] == o1  # contiguous runs of output rows
        assert k1 - k0 <= U._BAND or o1 - o0 == 1
        assert not w.flags.writeable
        rebuilt[o0:o1, low0 + k0:low0 + k1] = w
    np.testing.assert_array_equal(rebuilt, dense)
    assert not dense[:, :low0].any() and not dense[:, low1:].any()


def test_weights_are_cached_per_axis():
    U.clear_cache()
    low = np.ones((1, 3, 256, 256), np.float32)
    U.upscale_logits(low, (768, 1024), (480, 640))
    first = U.cache_info()
    assert (first.misses, first.hits) == (2, 0)  # rows and columns built once each
    plan = U._axis_plan(256, 768, 480, 1024)
    U.upscale_logits(low, (768, 1024), (480, 640))
    again = U.cache_info()
    assert again.misses == first.misses + 0 and again.hits == first.hits + 3  # the lookup above and two here
    assert U._axis_plan(256, 768, 480, 1024) is plan
    assert again.maxsize == 64


@pytest.mark.parametrize("args,match", [
    (((1, 3, 16, 16), (0, 1024), (1, 3000)), r"input_size: got \(0, 1024\), expected both in 1\.\.1024"),
    (((1, 3, 16, 16), (768, 1025), (480, 640)), r"input_size: got \(768, 1025\)"),
    (((1, 3, 16, 16), (768, 1024), (480, 0)), r"original_size: got \(480, 0\), expected both in >= 1"),
    (((16,), (768, 1024), (480, 640)), r"low_res: got shape \(16,\), expected \[\.\.\., m, m\]"),
    (((1, 0, 16), (768, 1024), (480, 640)), r"low_res: got shape \(1, 0, 16\)"),
])
def test_bad_sizes_raise_input_error(args, match):
    shape, input_size, original_size = args
    with pytest.raises(InputError, match=match):
        U.upscale_logits(np.zeros(shape, np.float32), input_size, original_size)
