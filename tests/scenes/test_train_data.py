"""Training samples: scenes at their own size, resized to the input, with scaled prompts and soft targets."""

import numpy as np
import pytest

from samrt.scenes.train_data import SceneSampling, _coverage, noisy_box, training_sample


def _spec(**kw):
    return SceneSampling(**{"image_size": 64, "prompts_per_image": 5, "size_range": (0.1, 0.8),
                            "long_side": (96, 200), "aspect_range": (0.5, 2.0), **kw})


def test_a_sample_is_reproducible_from_its_seed():
    a = training_sample(np.random.SeedSequence([3, 7, 1]), _spec())
    b = training_sample(np.random.SeedSequence([3, 7, 1]), _spec())
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.coords, b.coords)
    c = training_sample(np.random.SeedSequence([3, 7, 2]), _spec())
    assert not np.array_equal(a.targets, c.targets)


def test_image_resized_to_the_input_and_targets_padded():
    for i in range(6):
        s = training_sample(np.random.SeedSequence([0, i]), _spec())
        h, w = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and max(h, w) == 64 and s.image.shape[2] == 3
        assert s.targets.shape == (5, 64, 64) and s.targets.dtype == np.uint8
        assert not s.targets[:, h:, :].any() and not s.targets[:, :, w:].any()  # zero padding
        assert (s.targets.reshape(5, -1).max(1) > 127).all()  # every target is visible at the input size


def test_prompts_land_on_their_target_in_the_input_frame():
    seen = {"point": 0, "box": 0}
    for i in range(8):
        s = training_sample(np.random.SeedSequence([1, i]), _spec())
        for t, c, lab in zip(s.targets, s.coords, s.labels):
            if lab[0] == 1:  # a point: (x, y) scaled from a pixel of the instance
                assert lab[1] == -1
                x, y = c[0]
                near = t[max(0, int(y) - 1): int(y) + 2, max(0, int(x) - 1): int(x) + 2]
                assert near.max() > 0, "the scaled click is not on (or next to) its target"
                seen["point"] += 1
            else:  # a noisy box around the target: corners (2, 3), top-left before bottom-right
                assert tuple(lab) == (2.0, 3.0) and (c[0] <= c[1]).all()
                ys, xs = np.nonzero(t > 127)
                cx, cy = xs.mean(), ys.mean()
                assert c[0, 0] - 2 <= cx <= c[1, 0] + 2 and c[0, 1] - 2 <= cy <= c[1, 1] + 2
                seen["box"] += 1
    assert seen["point"] > 0 and seen["box"] > 0


def test_coverage_keeps_a_thin_line_that_nearest_resizing_would_drop():
    m = np.zeros((400, 400), bool)
    m[:, 201] = True  # one pixel wide, shrunk 4x
    cov = _coverage(m, 100, 100)
    assert cov.shape == (100, 100) and cov[:, 50].min() == pytest.approx(255 / 4, abs=1)
    assert cov.sum() == pytest.approx(m.sum() / 16 * 255, rel=0.01)
    same = _coverage(m[:100, :100], 100, 100)
    assert set(np.unique(same)) <= {0, 255}


def test_noisy_box_moves_each_side_by_at_most_20_px():
    m = np.zeros((600, 600), bool)
    m[100:500, 50:550] = True  # 500 x 400: 10% sigma would exceed 20 px
    rng = np.random.default_rng(0)
    boxes = np.array([noisy_box(rng, m) for _ in range(200)])
    exact = np.array([50, 100, 549, 499])
    assert np.abs(boxes - exact).max() <= 20 + 1e-9
    assert np.abs(boxes - exact).std() > 5  # it is noisy
