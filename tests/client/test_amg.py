"""TritonSamAutomaticMaskGenerator against segment_anything.SamAutomaticMaskGenerator."""

import numpy as np
import pytest

from samrt.amg import MAX_CROP_N_LAYERS, MAX_POINTS_PER_SIDE, AmgOptions, box_nms, remove_small_regions, uncompressed_rle
from samrt.client import SamClient, TritonSamAutomaticMaskGenerator
from samrt.errors import InputError
from samrt.masks import masks_to_boxes

from ..conftest import random_image

# sam_amg with crops encodes every crop: minutes on a loaded 2-core machine, beyond SamClient's default
AMG_TIMEOUT = 900.0
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
    ours = TritonSamAutomaticMaskGenerator(SamClient(server.grpc_url, timeout=AMG_TIMEOUT), **PARAMS, **extra).generate(image)
    _match(ref, ours)


def structure(value):
    """A record's value as its Python types, recursively: what code that indexes or draws with it sees."""
    if isinstance(value, dict):
        return {k: structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [structure(v) for v in value]
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.ndim)
    return type(value).__name__


@pytest.mark.triton
def test_records_have_the_official_types(server, tiny_sam):
    """Every field of every record has segment_anything's type and structure (bbox and crop_box ints:
    `img[y:y+h, x:x+w]` and OpenCV need them), in every output mode; coco_rle is the server's JSON
    as `samrt amg` writes it (ints stay ints through JSON)."""
    from segment_anything import SamAutomaticMaskGenerator

    image = random_image(100, 120, seed=3)
    client = SamClient(server.grpc_url, timeout=AMG_TIMEOUT)
    for output_mode in ["binary_mask", "uncompressed_rle", "coco_rle"]:
        kw = dict(PARAMS, output_mode=output_mode)
        ref = SamAutomaticMaskGenerator(tiny_sam, **kw).generate(image)
        ours = TritonSamAutomaticMaskGenerator(client, **kw).generate(image)
        assert len(ours) == len(ref) > 0
        want = structure(ref[0])
        assert all(structure(r) == want for r in ref)  # one structure per mode, whatever the mask
        for o in ours:
            assert structure(o) == want, output_mode
            x, y, w, h = o["bbox"]
            assert image[y:y + h, x:x + w].shape == (h, w, 3)


# every kind of number SamAutomaticMaskGenerator takes: Python, numpy ints and floats, 0-d arrays
NUMPY_KINDS = [np.int64, np.int32, np.uint16, np.float32, np.float64, np.array]
OPTIONS = dict(points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
               stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=1, crop_nms_thresh=0.7,
               crop_overlap_ratio=0.25, crop_n_points_downscale_factor=2, min_mask_region_area=5)


def test_numpy_numbers_for_every_option_are_python_numbers():
    assert set(OPTIONS) == set(AmgOptions.__dataclass_fields__)  # every option is covered
    want = AmgOptions(**OPTIONS).validate().to_dict()
    for kind in NUMPY_KINDS:
        for name, value in OPTIONS.items():
            if isinstance(value, float) and kind in (np.int64, np.int32, np.uint16):
                continue  # a fraction as an integer type is another value
            number = kind(value)
            got = AmgOptions(**dict(OPTIONS, **{name: number})).validate().to_dict()
            # the same value as a Python number (np.float32(0.7) is 0.699999988...: its value, not 0.7)
            assert got == dict(want, **{name: type(want[name])(np.asarray(number).item())}), (kind, name)
            assert type(got[name]) is type(want[name]), (kind, name)


@pytest.mark.triton
def test_numpy_numbers_for_every_option(server):
    """TritonSamAutomaticMaskGenerator with numpy numbers (one kind per option, all kinds used) gives
    the answer of the Python numbers."""
    client = SamClient(server.grpc_url, timeout=AMG_TIMEOUT)
    image = random_image(80, 96, seed=8)
    want = TritonSamAutomaticMaskGenerator(client, **OPTIONS).generate(image)
    assert want
    kinds = [np.float32, np.float64, lambda v: np.array(v, np.float32)]
    as_numpy = {k: (NUMPY_KINDS[i % 3] if isinstance(v, int) else kinds[i % 3])(v) for i, (k, v) in enumerate(OPTIONS.items())}
    got = TritonSamAutomaticMaskGenerator(client, **as_numpy).generate(image)
    assert [r["bbox"] for r in got] == [r["bbox"] for r in want]
    np.testing.assert_allclose([r["predicted_iou"] for r in got], [r["predicted_iou"] for r in want], atol=1e-6)


def test_option_values_are_checked():
    opts = AmgOptions(points_per_side=np.float64(4.0), pred_iou_thresh=np.array(0.5, np.float32)).validate()
    assert type(opts.points_per_side) is int and type(opts.pred_iou_thresh) is float
    with pytest.raises(InputError, match=r"points_per_side: got 4.5, expected an integer"):
        AmgOptions(points_per_side=4.5).validate()
    with pytest.raises(InputError, match=r"box_nms_thresh: got str '0.7', expected a number"):
        AmgOptions(box_nms_thresh="0.7").validate()
    with pytest.raises(InputError, match=r"crop_n_layers: got ndarray"):
        AmgOptions(crop_n_layers=np.array([1, 2])).validate()
    with pytest.raises(InputError, match=rf"crop_n_layers: got {MAX_CROP_N_LAYERS + 1}, expected 0..{MAX_CROP_N_LAYERS}: "
                                         r"layer i adds 4\^i crops.*1365 passes"):
        AmgOptions(crop_n_layers=MAX_CROP_N_LAYERS + 1).validate()
    AmgOptions(points_per_side=MAX_POINTS_PER_SIDE).validate()
    for n in (0, MAX_POINTS_PER_SIDE + 1, 10 ** 9):  # 10^9 per side: 10^18 prompts and a grid no memory holds
        with pytest.raises(InputError, match=rf"points_per_side: got {n}, expected 1..{MAX_POINTS_PER_SIDE} "):
            AmgOptions(points_per_side=n).validate()


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
