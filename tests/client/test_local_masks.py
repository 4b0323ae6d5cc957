"""The SDK makes `masks` itself from the low-res logits (`wire_outputs`, `masks_here`) instead of
downloading them: the same masks as the server's sam_mask_upscale step.

Tolerance: the low-res logits are the server's own bytes (equal); the masks are made by the same
function on them (`samrt.processing.upscaled_masks`), so they are expected equal; a pixel could
differ only if two numpy builds rounded one matrix product differently and a logit sat within
float rounding of 0 (`samrt.upscale`'s docstring), hence >= 99.99% of pixels, and seen: all."""

import asyncio

import numpy as np
import pytest

from samrt import processing, wire
from samrt.client import AsyncSamClient, SamClient
from samrt.client._requests import DEFAULT_OUTPUTS, Prompts, masks_here, pack_decode, wire_outputs

from ..conftest import random_image


def test_wire_outputs_asks_low_res_instead_of_masks():
    assert wire_outputs(DEFAULT_OUTPUTS) == ["low_res_masks", "iou_predictions"]
    assert wire_outputs(["masks"]) == ["low_res_masks"]
    assert wire_outputs(["iou_predictions", "masks"]) == ["iou_predictions", "low_res_masks"]
    assert wire_outputs(["masks_rle", "iou_predictions"]) == ["masks_rle", "iou_predictions"]


def test_masks_here_makes_the_masks_and_keeps_only_what_was_asked():
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((2, 3, 16, 16)) * 4).astype(np.float32)
    iou = rng.uniform(size=(2, 3)).astype(np.float32)
    answer = {"low_res_masks": low, "iou_predictions": iou}
    out = masks_here(answer, ["masks", "iou_predictions"], (30, 45), 64)
    assert list(out) == ["masks", "iou_predictions"]
    input_size = processing.get_preprocess_shape(30, 45, 64)
    np.testing.assert_array_equal(out["masks"], processing.upscale_masks(low, input_size, (30, 45), 64) > 0)
    assert out["masks"].dtype == np.bool_ and out["masks"].shape == (2, 3, 30, 45)
    assert list(masks_here(answer, DEFAULT_OUTPUTS, (30, 45), 64)) == list(DEFAULT_OUTPUTS)
    assert list(masks_here(answer, ["iou_predictions"], (30, 45), 64)) == ["iou_predictions"]


def _agree(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == np.bool_
    same = float(np.mean(a == b))
    assert same >= 0.9999, same
    return same


@pytest.mark.triton
@pytest.mark.parametrize("multimask", [True, False])
def test_decode_masks_equal_the_servers(client, multimask):
    """Odd image size, three prompts: decode's masks (made here) against the masks sam_decode's
    upscaling step answers for the same request."""
    image = random_image(333, 517, seed=21)
    image_id = client.encode(image).image_id
    coords = np.array([[[50, 60]], [[300, 100]], [[10, 320]]], np.float32)
    labels = np.ones((3, 1), np.float32)
    ours = client.decode(image_id, coords, labels, multimask_output=multimask)
    assert list(ours) == list(DEFAULT_OUTPUTS)
    inputs = pack_decode(image_id, Prompts.check(coords, labels, None, multimask))
    theirs = client.infer(wire.SAM_DECODE.name, inputs, list(DEFAULT_OUTPUTS),
                          headers={wire.IMAGE_ID_HEADER: image_id})
    np.testing.assert_array_equal(ours["low_res_masks"], theirs["low_res_masks"])
    np.testing.assert_array_equal(ours["iou_predictions"], theirs["iou_predictions"])
    print("\n[pixels equal]", _agree(ours["masks"], theirs["masks"]))
    only = client.decode(image_id, coords, labels, multimask_output=multimask, outputs=("masks",))
    assert list(only) == ["masks"]
    np.testing.assert_array_equal(only["masks"], ours["masks"])


@pytest.mark.triton
def test_async_decode_makes_the_same_masks(server):
    image = random_image(200, 260, seed=22)

    async def main():
        async with AsyncSamClient(server.grpc_url) as c:
            image_id = (await c.encode(image)).image_id
            return image_id, await c.decode(image_id, [[40, 50]], [1], outputs=("masks", "iou_predictions"))

    image_id, got = asyncio.run(main())
    assert list(got) == ["masks", "iou_predictions"]
    with SamClient(server.grpc_url) as c:
        theirs = c.infer(wire.SAM_DECODE.name, pack_decode(image_id, Prompts.check([[40, 50]], [1], None, True)),
                         ["masks"], headers={wire.IMAGE_ID_HEADER: image_id})
    _agree(got["masks"], theirs["masks"])


def test_decode_arguments_are_checked_before_anything_is_sent():
    """No server needed: these are refused by the client, naming what it got."""
    from samrt.client._requests import _outputs
    from samrt.errors import InputError
    from samrt.prompts import check_points

    with pytest.raises(InputError, match=r"outputs: got none, expected at least one of"):
        _outputs(())
    assert _outputs("masks") == ["masks"]
    with pytest.raises(InputError, match=r"point_coords: got values that are not numbers"):
        Prompts.check([["a", "b"]], [1])
    with pytest.raises(InputError, match=r"point_labels: got values that are not numbers"):
        Prompts.check([[10, 10]], ["a"])
    with pytest.raises(InputError, match=r"point_labels: got values that are not numbers"):
        check_points(np.zeros((1, 1, 2)), np.array([["a"]]))
