"""samrt.processing (numpy, no torch) against segment_anything's torch code."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from samrt import processing as P
from samrt.errors import InputError
from samrt.spec import PIXEL_MEAN, PIXEL_STD

from .conftest import random_image

SIZES = [(333, 517), (480, 640), (1500, 2250), (1, 1), (1024, 3)]


@pytest.mark.parametrize("h,w", SIZES)
def test_preprocess_is_bit_identical_to_sam_predictor(h, w):
    image = random_image(h, w, seed=h)
    x, input_size = P.preprocess_image(image, 1024)
    resized = ResizeLongestSide(1024).apply_image(image)
    t = torch.as_tensor(resized).permute(2, 0, 1)[None]
    t = (t - torch.tensor(PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(PIXEL_STD).view(-1, 1, 1)
    t = F.pad(t, (0, 1024 - t.shape[-1], 0, 1024 - t.shape[-2]))
    assert input_size == resized.shape[:2]
    assert x.dtype == np.float32 and x.shape == (1, 3, 1024, 1024)
    np.testing.assert_array_equal(x, t.numpy())


@pytest.mark.parametrize("h,w", [(64, 64), (64, 1), (1, 64), (40, 64), (64, 23)])
def test_normalize_and_pad_is_the_whole_array_formula_with_zero_padding(h, w):
    # normalize_and_pad fills a np.empty array channel by channel: after arrays of garbage have been
    # freed, the padding must still be exact zeros and the image part the plain float32 formula
    for _ in range(3):
        np.full((3, 64, 64), np.nan, np.float32)
    resized = random_image(h, w, seed=w)
    x = P.normalize_and_pad(resized, 64)
    expected = np.zeros((3, 64, 64), np.float32)
    expected[:, :h, :w] = ((resized.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)).transpose(2, 0, 1)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("src,dst", [((256, 256), (1024, 1024)), ((683, 1024), (1500, 2250)), ((7, 5), (3, 11))])
def test_interpolate_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((2, 3) + src).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), dst, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(P.interpolate_bilinear(x, dst), ref, atol=1e-5, rtol=0)


def test_upscale_masks_matches_postprocess_masks():
    low = np.random.default_rng(1).standard_normal((1, 3, 256, 256)).astype(np.float32) * 5
    input_size, original = P.get_preprocess_shape(333, 517, 1024), (333, 517)
    t = F.interpolate(torch.from_numpy(low), (1024, 1024), mode="bilinear", align_corners=False)
    t = t[..., : input_size[0], : input_size[1]]
    ref = F.interpolate(t, original, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(P.upscale_masks(low, input_size, original), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 0, 3), np.uint8), "empty image of 0x0"),
        (np.zeros((10, 10, 2), np.uint8), r"got shape \(10, 10, 2\), expected HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "got dtype float32, expected uint8"),
        ([[1, 2, 3]], "got list"),
    ],
)
def test_bad_images(image, match):
    with pytest.raises(InputError, match=match):
        P.check_image(image)


def test_pixel_limit():
    with pytest.raises(InputError, match="got 20x20 = 400 pixels, expected at most 100"):
        P.check_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)
