"""TritonSamAutomaticMaskGenerator against segment_anything.SamAutomaticMaskGenerator."""

import numpy as np
import pytest

from samrt.amg import box_nms, masks_to_boxes, remove_small_regions, uncompressed_rle
from samrt.client import SamClient, TritonSamAutomaticMaskGenerator

from ..conftest import random_image

# Thresholds that let masks of a random-init model through the filters.
PARAMS = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
              box_nms_thresh=0.7)


def _match(ref, ours):
    assert len(ours) == len(ref) > 0
    assert all(set(r) == set(o) for r, o in zip(ref, ours))
    used = set()
    for r in ref:
        m = r["segmentation"]
        ious = [np.logical_and(m, o["segmentation"]).sum() / max(np.logical_or(m, o["segmentation"]).sum(), 1)
                for o in ours]
        j = int(np.argmax(ious))
        assert ious[j] >= 0.99 and j not in used
        used.add(j)
        o = ours[j]
        assert abs(o["predicted_iou"] - r["predicted_iou"]) < 1e-3 and o["area"] == pytest.approx(r["area"], rel=0.01)
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-6)
        np.testing.assert_allclose(o["crop_box"], r["crop_box"], atol=1e-6)
        np.testing.assert_allclose(o["bbox"], r["bbox"], atol=1.0)
        assert abs(o["stability_score"] - r["stability_score"]) < 0.01


@pytest.mark.triton
@pytest.mark.parametrize("extra", [dict(), dict(crop_n_layers=1)])
def test_equals_sam_automatic_mask_generator(server, tiny_sam, extra):
    from segment_anything import SamAutomaticMaskGenerator

    image = random_image(240, 320, seed=77)
    ref = SamAutomaticMaskGenerator(tiny_sam, **PARAMS, **extra).generate(image)
    ours = TritonSamAutomaticMaskGenerator(SamClient(server.grpc_url), **PARAMS, **extra).generate(image)
    _match(ref, ours)


@pytest.mark.triton
def test_output_modes(server):
    client = SamClient(server.grpc_url)
    image = random_image(100, 120, seed=3)
    binary = TritonSamAutomaticMaskGenerator(client, **PARAMS).generate(image)
    coco = TritonSamAutomaticMaskGenerator(client, **PARAMS, output_mode="coco_rle").generate(image)
    unc = TritonSamAutomaticMaskGenerator(client, **PARAMS, output_mode="uncompressed_rle").generate(image)
    assert binary[0]["segmentation"].shape == (100, 120) and binary[0]["segmentation"].dtype == bool
    assert isinstance(coco[0]["segmentation"]["counts"], str)
    assert sum(unc[0]["segmentation"]["counts"][1::2]) == binary[0]["area"]


def test_uncompressed_rle_matches_segment_anything():
    import torch
    from segment_anything.utils.amg import mask_to_rle_pytorch

    rng = np.random.default_rng(0)
    for shape in [(5, 7), (16, 3)]:
        m = rng.uniform(size=shape) > 0.5
        m[0, 0] = bool(rng.integers(2))
        assert uncompressed_rle(m) == mask_to_rle_pytorch(torch.from_numpy(m)[None])[0]


def test_boxes_and_nms_match_torchvision():
    import torch
    from segment_anything.utils.amg import batched_mask_to_box
    from torchvision.ops import nms

    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(30, 20, 25)) > 0.97
    masks[3] = False
    np.testing.assert_array_equal(masks_to_boxes(masks), batched_mask_to_box(torch.from_numpy(masks)).numpy())
    boxes = np.sort(rng.uniform(0, 50, (40, 2, 2)), axis=1).reshape(40, 4).astype(np.float32)[:, [0, 2, 1, 3]]
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    scores = rng.uniform(size=40).astype(np.float32)
    np.testing.assert_array_equal(box_nms(boxes, scores, 0.5), nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy())


def test_remove_small_regions():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # a hole of 1 pixel
    m[17, 17] = True  # an island of 1 pixel
    filled, changed = remove_small_regions(m, 4, "holes")
    assert changed and filled[5, 5]
    cleaned, changed = remove_small_regions(filled, 4, "islands")
    assert changed and not cleaned[17, 17] and cleaned[2:12, 2:12].all()
