"""samrt.amg without a server: bounded memory (chunked upscaling, masks kept as RLE) gives the
same records as upscaling whole batches, and `should_stop` cancels between batches."""

import numpy as np
import pytest

from samrt import amg
from samrt import processing as P

M = 64  # low-res mask size of the fake decoder


def _fake_set_crop(image_size=256, calls=None, low_res=True, upscaled=None):
    """A decoder stand-in: for each point, three discs of growing radius (plus a seeded ripple) as
    low-res logits, and a predicted IoU from the point; deterministic."""

    def set_crop(crop):
        size = crop.shape[:2]
        input_size = P.get_preprocess_shape(size[0], size[1], image_size)
        scale = np.array(input_size[::-1], np.float64) / np.array(size[::-1]) * M / image_size
        yy, xx = np.mgrid[0:M, 0:M].astype(np.float32)

        def upscale(low):
            if upscaled is not None:
                upscaled.append(len(low))
            return P.upscale_masks(low, input_size, size, image_size)

        def decode(points):
            if calls is not None:
                calls.append(len(points))
            low = np.empty((len(points), 3, M, M), np.float32)
            iou = np.empty((len(points), 3), np.float32)
            for i, (x, y) in enumerate(points * scale):
                rng = np.random.default_rng(int(x * 1000 + y))
                d = np.hypot(xx - x, yy - y)
                for j, r in enumerate((3.0, 7.0, 12.0)):
                    low[i, j] = (r - d) + 0.5 * np.sin(xx * rng.uniform(0.2, 1.0))
                iou[i] = rng.uniform(0.6, 1.0, 3)
            return (low, iou, upscale) if low_res else (upscale(low.reshape(-1, M, M)).reshape(
                len(points), 3, *size), iou)

        return decode

    return set_crop


def _image(h=180, w=260):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("extra", [dict(), dict(crop_n_layers=1), dict(min_mask_region_area=200)])
@pytest.mark.parametrize("mode", ["coco_rle", "binary_mask", "uncompressed_rle"])
def test_chunked_low_res_path_gives_the_same_records(extra, mode):
    opts = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.7, stability_score_thresh=0.6, **extra)
    full = amg.generate_masks(_image(), _fake_set_crop(low_res=False), amg.AmgOptions(**opts), mode)
    chunked = amg.generate_masks(_image(), _fake_set_crop(), amg.AmgOptions(**opts), mode)
    assert len(full) > 3
    assert len(chunked) == len(full)
    for a, b in zip(full, chunked):
        assert set(a) == set(b)
        for k in a:
            if k == "segmentation" and mode == "binary_mask":
                np.testing.assert_array_equal(a[k], b[k])
            else:
                assert a[k] == b[k], k


def test_at_most_upscale_chunk_masks_at_full_resolution():
    upscaled = []
    opts = amg.AmgOptions(points_per_side=8, points_per_batch=64, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    records = amg.generate_masks(_image(), _fake_set_crop(upscaled=upscaled), opts)
    assert len(records) > 0
    assert sum(upscaled) == 64 * 3  # every candidate upscaled once
    assert max(upscaled) <= amg.UPSCALE_CHUNK


def test_should_stop_cancels_between_batches():
    calls, asked = [], []

    def should_stop():
        asked.append(1)
        return len(calls) >= 2  # the client goes away after two batches

    opts = amg.AmgOptions(points_per_side=8, points_per_batch=8)  # 8 batches for the whole job
    with pytest.raises(amg.AmgCancelled, match="cancelled"):
        amg.generate_masks(_image(), _fake_set_crop(calls=calls), opts, should_stop=should_stop)
    assert len(calls) == 2
    # never asked: runs to the end
    calls.clear()
    amg.generate_masks(_image(), _fake_set_crop(calls=calls), opts, should_stop=lambda: False)
    assert len(calls) == 8


def test_at_most_max_points_per_batch_decoded_at_once(monkeypatch):
    """points_per_batch beyond the bound is decoded in batches of the bound, with the same records."""
    monkeypatch.setattr(amg, "MAX_POINTS_PER_BATCH", 10)
    calls = []
    opts = dict(points_per_side=6, pred_iou_thresh=0.7, stability_score_thresh=0.6)
    big = amg.generate_masks(_image(), _fake_set_crop(calls=calls), amg.AmgOptions(points_per_batch=10 ** 6, **opts))
    assert calls == [10, 10, 10, 6]  # 36 points
    small = amg.generate_masks(_image(), _fake_set_crop(), amg.AmgOptions(points_per_batch=10, **opts))
    assert big == small and len(big) > 3
