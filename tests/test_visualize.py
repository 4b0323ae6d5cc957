"""samrt.visualize: the demo's pictures."""

import numpy as np
import pytest

from samrt.visualize import candidates, overlay, sample_image


def test_candidates_shows_each_mask_beside_the_others():
    image, click = sample_image(height=60, width=80)
    masks = np.zeros((3, 60, 80), bool)
    masks[0, 30:40, 10:20] = True
    masks[1, 20:50, 5:60] = True
    masks[2, 25:35, 30:70] = True
    pts, labels = np.array([click]), np.array([1])
    sheet = candidates(image, masks, np.array([0.5, 0.9, 0.7]), pts, labels, gap=4)
    assert sheet.shape == (60, 3 * 80 + 2 * 4, 3)
    for i in range(3):
        panel = sheet[:, i * 84: i * 84 + 80]
        below_caption = slice(18, None)  # the caption box covers the top 17 rows
        np.testing.assert_array_equal(panel[below_caption], overlay(image, masks[i], pts, labels)[below_caption])
    with pytest.raises(ValueError, match="got 3 masks and 2 scores"):
        candidates(image, masks, np.array([0.5, 0.9]))
