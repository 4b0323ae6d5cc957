"""samrt.masks: COCO RLE against pycocotools (and segment_anything's encoder), mask IoU and its
edge cases, mask -> box against segment_anything and pycocotools."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from samrt.errors import InputError
from samrt.masks import coco_bbox, mask_iou, mask_to_rle, masks_to_boxes, masks_to_rles, rle_area, rle_to_mask

ODD_SHAPES = [(1, 1), (1, 7), (7, 1), (13, 5), (5, 13), (31, 17)]


def _masks(shape, seed=0):
    """Random, empty, full, first-pixel-only and last-pixel-only masks of `shape`."""
    rng = np.random.default_rng(seed)
    first, last = np.zeros(shape, bool), np.zeros(shape, bool)
    first[0, 0] = True
    last[-1, -1] = True
    return [rng.uniform(size=shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool), first, last]


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_rle_is_what_pycocotools_writes_and_round_trips(shape):
    masks = np.stack(_masks(shape))
    rles = masks_to_rles(masks)
    assert len(rles) == len(masks)
    for m, r in zip(masks, rles):
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert r == {"size": list(shape), "counts": ref["counts"].decode("ascii")}
        assert isinstance(r["counts"], str) and all(type(s) is int for s in r["size"])
        assert mask_to_rle(m) == r
        back = rle_to_mask(r)
        assert back.dtype == bool and back.shape == shape
        np.testing.assert_array_equal(back, m)
        np.testing.assert_array_equal(rle_to_mask({**r, "counts": r["counts"].encode()}), m)  # bytes counts too
        assert rle_area(r) == int(m.sum()) and isinstance(rle_area(r), int)


def test_rle_matches_segment_anythings_coco_encoder():
    torch = pytest.importorskip("torch", reason="segment_anything's encoder needs torch (the export extra)")
    from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

    for shape in ODD_SHAPES:
        for m in _masks(shape, seed=1):
            want = coco_encode_rle(mask_to_rle_pytorch(torch.from_numpy(m)[None])[0])
            assert mask_to_rle(m) == want


def test_rle_edge_cases_and_errors():
    assert masks_to_rles(np.zeros((0, 4, 5), bool)) == []
    assert mask_to_rle(np.zeros((4, 5), np.uint8)) == mask_to_rle(np.zeros((4, 5), bool))  # 0/1 arrays as bool
    with pytest.raises(InputError, match=r"masks: got shape \(4, 5\), expected \[N, H, W\]"):
        masks_to_rles(np.zeros((4, 5), bool))
    with pytest.raises(InputError, match=r"mask: got shape \(1, 4, 5\), expected \[H, W\]"):
        mask_to_rle(np.zeros((1, 4, 5), bool))
    with pytest.raises(InputError, match="expected a COCO RLE"):
        rle_to_mask({"counts": "abc"})
    with pytest.raises(InputError, match="expected a COCO RLE"):
        rle_area([1, 2])


def test_mask_iou_values_and_edge_cases():
    a = np.zeros((4, 6), bool)
    b = np.zeros((4, 6), bool)
    a[0, 0:4] = True          # 4 pixels
    b[0, 2:6] = True          # 4 pixels, 2 shared: union 6
    assert mask_iou(a, b) == pytest.approx(2 / 6, abs=1e-12) and mask_iou(b, a) == mask_iou(a, b)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(a, np.zeros_like(a)) == 0.0          # nothing found where there is something
    empty = np.zeros((4, 6), bool)
    assert mask_iou(empty, empty) == 1.0                 # both agree there is nothing: decided, see the docstring
    assert mask_iou(a.astype(np.uint8), b.astype(np.uint8)) == mask_iou(a, b)
    assert isinstance(mask_iou(a, b), float)
    with pytest.raises(InputError, match=r"got shapes \(4, 6\) and \(6, 4\), expected equal shapes"):
        mask_iou(a, a.T)


def test_mask_iou_agrees_with_pycocotools_except_two_empty_masks():
    rng = np.random.default_rng(3)
    for shape in ODD_SHAPES[2:]:
        x, y = rng.uniform(size=shape) > 0.4, rng.uniform(size=shape) > 0.6
        ref = mask_utils.iou([mask_to_rle(x)], [mask_to_rle(y)], [0])[0, 0]
        assert mask_iou(x, y) == pytest.approx(ref, abs=1e-12)
    e = mask_to_rle(np.zeros((5, 5), bool))
    assert mask_utils.iou([e], [e], [0])[0, 0] == 0.0 and mask_iou(np.zeros((5, 5)), np.zeros((5, 5))) == 1.0


def test_masks_to_boxes_edge_cases():
    m = np.zeros((3, 6, 8), bool)
    m[0, 2:4, 3:7] = True
    m[1, 5, 7] = True                        # one pixel, the last one
    boxes = masks_to_boxes(m)                 # m[2]: empty
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[3, 2, 6, 3], [7, 5, 7, 5], [0, 0, 0, 0]])
    np.testing.assert_array_equal(masks_to_boxes(m[0]), [3, 2, 6, 3])                   # [H, W] -> [4]
    assert masks_to_boxes(np.stack([m, m])).shape == (2, 3, 4)                           # [..., H, W]
    assert masks_to_boxes(np.zeros((0, 6, 8), bool)).shape == (0, 4)
    np.testing.assert_array_equal(masks_to_boxes(np.zeros((2, 0, 8), bool)), np.zeros((2, 4)))  # no pixels
    with pytest.raises(InputError, match=r"expected \[\.\.\., H, W\]"):
        masks_to_boxes(np.zeros(5, bool))


def test_masks_to_boxes_matches_segment_anything():
    torch = pytest.importorskip("torch", reason="segment_anything's batched_mask_to_box needs torch (the export extra)")
    from segment_anything.utils.amg import batched_mask_to_box

    for shape in ODD_SHAPES:
        masks = np.stack(_masks(shape, seed=2))[None].repeat(2, axis=0)
        np.testing.assert_array_equal(masks_to_boxes(masks), batched_mask_to_box(torch.from_numpy(masks)).numpy())


def test_coco_bbox_is_pycocotools_tobbox():
    for shape in ODD_SHAPES:
        for m in _masks(shape, seed=4):
            assert coco_bbox(m) == mask_utils.toBbox(mask_to_rle(m)).tolist()
    one = np.zeros((6, 8), bool)
    one[4, 5] = True
    assert coco_bbox(one) == [5.0, 4.0, 1.0, 1.0]
    assert coco_bbox(np.zeros((6, 8), bool)) == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(InputError, match=r"mask: got shape \(1, 6, 8\), expected \[H, W\]"):
        coco_bbox(one[None])
