"""TritonSamPredictor against segment_anything.SamPredictor (same weights), through the server."""

import numpy as np
import pytest
import torch

from samrt.client import ImageNotCachedError, SamClient, TritonSamPredictor
from samrt.errors import InputError

from ..conftest import CACHE_ENTRIES, random_image

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def reference(tiny_sam):
    from segment_anything import SamPredictor

    return SamPredictor(tiny_sam)


def same(ref, ours, logits=False):
    ref = [a.numpy() if torch.is_tensor(a) else a for a in ref]
    for a, b in zip(ref, ours):
        assert a.shape == b.shape and a.dtype == b.dtype
    if logits:
        np.testing.assert_allclose(ours[0], ref[0], atol=1e-3)
    else:
        assert (ours[0] == ref[0]).mean() >= 0.9999
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-4)
    np.testing.assert_allclose(ours[2], ref[2], atol=1e-3)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_drop_in_for_sam_predictor(server, reference, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    predictor = TritonSamPredictor(SamClient(url, protocol))
    h, w = 375, 500
    image = random_image(h, w, seed=21)
    reference.set_image(image)
    predictor.set_image(image)
    assert predictor.is_image_set and predictor.original_size == reference.original_size
    assert predictor.input_size == reference.input_size
    pts, box = np.array([[120, 200], [300, 90]]), np.array([50, 40, 400, 300])
    cases = [
        dict(point_coords=pts[:1], point_labels=np.array([1]), multimask_output=True),
        dict(point_coords=pts, point_labels=np.array([1, 0]), multimask_output=False),
        dict(box=box, multimask_output=False),
        dict(point_coords=pts[:1], point_labels=np.array([1]), box=box, multimask_output=True),
    ]
    for kw in cases:
        same(reference.predict(**kw), predictor.predict(**kw))
    _, s, low = reference.predict(**cases[0])
    kw = dict(point_coords=pts, point_labels=np.array([1, 0]), mask_input=low[np.argmax(s)][None], multimask_output=False)
    same(reference.predict(**kw), predictor.predict(**kw))
    kw = dict(point_coords=pts[:1], point_labels=np.array([1]), return_logits=True)
    same(reference.predict(**kw), predictor.predict(**kw), logits=True)
    # many boxes in one request, against predict_torch
    rng = np.random.default_rng(4)
    x0, y0 = rng.uniform(0, 300, 20), rng.uniform(0, 200, 20)
    boxes = np.stack([x0, y0, x0 + rng.uniform(10, 150, 20), y0 + rng.uniform(10, 150, 20)], 1)
    tb = reference.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    with torch.no_grad():
        ref = reference.predict_torch(None, None, tb, multimask_output=True)
    same(ref, predictor.predict_batch(boxes=boxes))
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="must be set"):
        predictor.predict(point_coords=pts[:1], point_labels=np.array([1]))


def test_evicted_image_is_encoded_again_transparently(server, reference):
    predictor = TritonSamPredictor(SamClient(server.grpc_url))
    image = random_image(128, 96, seed=31)
    predictor.set_image(image)
    first_id = predictor.image_id
    with SamClient(server.grpc_url) as other:  # push it out of the cache
        for i in range(CACHE_ENTRIES + 1):
            other.encode(random_image(40, 40, seed=500 + i))
        with pytest.raises(ImageNotCachedError):
            other.decode(first_id, [[10, 10]], [1])
    reference.set_image(image)
    kw = dict(point_coords=np.array([[40, 60]]), point_labels=np.array([1]))
    same(reference.predict(**kw), predictor.predict(**kw))
    assert predictor.image_id == first_id


def test_client_side_checks_name_what_was_wrong(server):
    predictor = TritonSamPredictor(SamClient(server.grpc_url))
    predictor.set_image(random_image(50, 50))
    with pytest.raises(InputError, match="got no points and no box"):
        predictor.predict()
    with pytest.raises(InputError, match=r"box: got shape \(3,\)"):
        predictor.predict(box=np.array([1, 2, 3]))
    with pytest.raises(InputError, match="image: got dtype float32"):
        predictor.set_image(np.zeros((4, 4, 3), np.float32))


def test_in_process_and_served_predictors_agree(server, tiny_predictor):
    """One set of prompt rules: the same prompts give the same answers in process and through the server,
    including rows of different point counts padded with -1, rows with boxes and points, and box-only rows."""
    served = TritonSamPredictor(SamClient(server.grpc_url))
    image = random_image(240, 320, seed=77)
    served.set_image(image)
    tiny_predictor.set_image(image)
    rng = np.random.default_rng(5)
    cases = [
        dict(point_coords=rng.uniform(0, 230, (3, 3, 2)), point_labels=np.array([[1, 1, 0], [1, -1, -1], [0, 1, -1]])),
        dict(point_coords=rng.uniform(0, 230, (2, 2, 2)), point_labels=np.array([[1, 0], [1, -1]]),
             boxes=np.array([[10, 20, 200, 180], [50, 60, 300, 230]])),
        dict(boxes=np.array([[10, 20, 200, 180], [5, 5, 40, 60], [0, 0, 319, 239]])),
        dict(point_coords=rng.uniform(0, 230, (2, 1, 2)), point_labels=np.array([[1], [1]]), multimask_output=False),
    ]
    for kw in cases:
        ours, theirs = tiny_predictor.predict_batch(**kw), served.predict_batch(**kw)
        assert (ours[0] == theirs[0]).mean() >= 0.9999, kw
        np.testing.assert_allclose(theirs[1], ours[1], atol=1e-5)
        np.testing.assert_allclose(theirs[2], ours[2], atol=1e-4)
