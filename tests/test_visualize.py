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


def test_overlay_fills_outlines_and_marks_clicks_by_shape():
    from samrt.visualize import STYLE, mask_outline

    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:40, 10:40] = True
    two = mask_outline(mask, 2)
    assert two.sum() == 30 * 30 - 26 * 26 and two[10, 20] and two[11, 20] and not two[12, 20]
    edge = mask_outline(mask, max(1, round(STYLE["outline_width"] * 64 / 512)))   # the width scales with the image
    out = overlay(image, mask, color=(0, 0, 255), alpha=0.5)
    np.testing.assert_array_equal(out[edge], np.tile([0, 0, 255], (int(edge.sum()), 1)))       # outline: the colour
    np.testing.assert_array_equal(out[25, 25], [50, 50, 177])                                   # fill: blended
    np.testing.assert_array_equal(out[~mask], image[~mask])                                     # the rest untouched
    # foreground and background differ in shape, not only in colour: a disc leaves the corners of its
    # square untouched, a square fills them
    r = max(4, round(STYLE["marker_radius"] * 64 / 512))
    fg = overlay(image, np.zeros_like(mask), np.array([[50, 50]]), np.array([1]), outline=False)
    bg = overlay(image, np.zeros_like(mask), np.array([[50, 50]]), np.array([0]), outline=False)
    corner = (50 + r, 50 + r)
    np.testing.assert_array_equal(fg[corner], image[corner])
    assert (bg[corner] != image[corner]).any()
    assert (fg[50, 50] != image[50, 50]).any() and (bg[50, 50] != image[50, 50]).any()
