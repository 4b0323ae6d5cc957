"""SAM's prompt rules (samrt.prompts) against segment_anything's, and the wire's padding rule."""

import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from samrt import prompts
from samrt.errors import InputError


def build_prompt(point_coords, point_labels, box, original_size, image_size=1024):
    """One SamPredictor.predict prompt -> decoder coords [N,2] and labels [N]."""
    c, l = prompts.assemble_prompts(*prompts.one_prompt_as_batch(point_coords, point_labels, box))
    c, l = prompts.decoder_prompts(c, l, original_size, image_size)
    return c[0], l[0]


def test_coords_and_boxes_match_resize_longest_side():
    rng = np.random.default_rng(2)
    coords, boxes = rng.uniform(0, 500, (7, 2)), rng.uniform(0, 500, (4, 4))
    t = ResizeLongestSide(1024)
    np.testing.assert_allclose(prompts.apply_coords(coords, (333, 517), 1024), t.apply_coords(coords, (333, 517)), rtol=1e-6)
    np.testing.assert_allclose(prompts.apply_boxes(boxes, (333, 517), 1024), t.apply_boxes(boxes, (333, 517)), rtol=1e-6)


def test_build_prompt_conventions():
    c, l = build_prompt(np.array([[10, 20]]), np.array([1]), None, (1024, 1024))
    np.testing.assert_array_equal(l, [1, -1])  # padding point appended without a box
    np.testing.assert_array_equal(c, [[10, 20], [0, 0]])
    c, l = build_prompt(np.array([[10, 20]]), np.array([0]), np.array([1, 2, 30, 40]), (1024, 1024))
    np.testing.assert_array_equal(l, [0, 2, 3])  # points first, then the box corners, no padding
    np.testing.assert_array_equal(c, [[10, 20], [1, 2], [30, 40]])
    c, l = prompts.assemble_prompts(None, None, np.array([[1, 2, 3, 4]] * 5))
    assert c.shape == (5, 2, 2) and l.shape == (5, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(point_coords=np.array([[np.nan, 1.0]]), point_labels=np.array([1])), "non-finite"),
        (dict(point_coords=np.array([[1.0, np.inf]]), point_labels=np.array([1])), "non-finite"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([7])), r"got \[7\], expected values in"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([0.5])), "non-integer values"),
        (dict(point_coords=None, point_labels=None), "got no points and no box"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=None), "point_labels: got None"),
        (dict(point_coords=np.array([1.0, 2.0, 3.0]), point_labels=np.array([1])), r"point_coords: got shape \(3,\)"),
        (dict(point_coords=None, point_labels=None, box=np.array([1, 2, 3])), r"box: got shape \(3,\)"),
        (dict(point_coords=None, point_labels=None, box=np.array([1, 2, np.nan, 3])), "boxes: got non-finite"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([2])),
         r"prompt 0 has 1 box top-left corner\(s\) \(label 2\) and 0 bottom-right"),
    ],
)
def test_bad_prompts_name_what_was_received(kwargs, match):
    kwargs.setdefault("box", None)
    with pytest.raises(InputError, match=match):
        build_prompt(original_size=(100, 100), **kwargs)


def test_the_wire_padding_rule():
    coords, labels = np.zeros((2, 1, 2)), np.ones((2, 1), np.int32)
    _, l = prompts.complete_prompts(coords, labels)  # points only: padding appended to every row
    np.testing.assert_array_equal(l, [[1, -1], [1, -1]])
    ragged = np.array([[1, 1], [1, -1]], np.int32)  # rows of 2 and 1 points, padded: used as given
    assert prompts.complete_prompts(np.zeros((2, 2, 2)), ragged)[1].shape == (2, 2)
    with pytest.raises(InputError, match="prompt 1: got only padding labels"):
        prompts.complete_prompts(np.zeros((2, 1, 2)), np.array([[1], [-1]], np.int32))


def test_assembled_prompts_are_complete_on_the_wire():
    """What the in-process predictor builds is exactly what the server decodes when it is sent."""
    rng = np.random.default_rng(0)
    cases = [
        (rng.uniform(0, 99, (3, 2, 2)), np.array([[1, 1], [1, -1], [0, 1]]), None),  # ragged rows, -1 filler
        (rng.uniform(0, 99, (2, 1, 2)), np.array([[1], [0]]), rng.uniform(0, 99, (2, 4))),  # points + box
        (None, None, rng.uniform(0, 99, (4, 4))),  # box-only rows
    ]
    for pc, pl, boxes in cases:
        c, l = prompts.assemble_prompts(pc, pl, boxes)
        c2, l2 = prompts.complete_prompts(*prompts.check_points(c, l))
        np.testing.assert_array_equal(c, c2)
        np.testing.assert_array_equal(l, l2)


def test_decoder_feeds_broadcast_one_embedding():
    emb = np.ones((1, 4, 2, 2), np.float32)
    feeds = prompts.decoder_feeds(emb, np.zeros((3, 2, 2), np.float32), np.ones((3, 2), np.float32), None, 8)
    assert feeds["image_embeddings"].shape == (3, 4, 2, 2) and feeds["image_embeddings"].base is not None
    np.testing.assert_array_equal(feeds["has_mask_input"], [0, 0, 0])
    feeds = prompts.decoder_feeds(emb, np.zeros((2, 1, 2), np.float32), np.ones((2, 1), np.float32),
                                  np.zeros((2, 1, 8, 8)), 8, has_mask_input=np.array([1, 0]))
    np.testing.assert_array_equal(feeds["has_mask_input"], [1, 0])
    with pytest.raises(InputError, match=r"mask_input: got shape \[2, 1, 4, 4\], expected \[2, 1, 8, 8\]"):
        prompts.decoder_feeds(emb, np.zeros((2, 1, 2), np.float32), np.ones((2, 1), np.float32), np.zeros((2, 1, 4, 4)), 8)


@pytest.mark.parametrize("x,y", [(-641, 10), (1281, 10), (10, -481), (10, 961), (5000, 5000)])
def test_points_far_outside_the_image_are_refused(x, y):
    """More than one image width / height outside a 480x640 image: refused, naming the point and the range."""
    with pytest.raises(InputError, match=rf"point_coords: got \({x:g}, {y:g}\), more than the image's size outside "
                                         r"a 480x640 \(HxW\) image, expected x in \[-640, 1280\] and y in \[-480, 960\]"):
        prompts.check_points_in_image(np.array([[[100, 100], [x, y]]], np.float32), np.array([[1, 1]]), (480, 640))


def test_points_near_the_image_and_padding_pass():
    near = np.array([[[-640, -480], [1280, 960], [320, 240]]], np.float32)  # the bounds themselves pass
    prompts.check_points_in_image(near, np.array([[1, 0, 1]]), (480, 640))
    padded = np.array([[[10, 10], [1e6, -1e6]]], np.float32)  # the decoder ignores a padding point's position
    prompts.check_points_in_image(padded, np.array([[1, -1]]), (480, 640))
    with pytest.raises(InputError, match=r"--point/--box: got \(1e\+06, -1e\+06\)"):  # no labels: every point counts
        prompts.check_points_in_image(padded, None, (480, 640), name="--point/--box")


def test_fractions_of_the_image_are_recognised():
    frac = np.array([[[0.5, 0.25], [1.0, 0.0]]])
    assert prompts.looks_like_fractions(frac, np.array([[1, 0]]), (480, 640))
    assert prompts.looks_like_fractions(np.array([[[0.5, 0.5], [700.0, 9.0]]]), np.array([[1, -1]]), (480, 640))
    assert not prompts.looks_like_fractions(frac, None, (10, 640))  # a tiny image: [0, 1] may be meant
    assert not prompts.looks_like_fractions(np.array([[[0.5, 0.5], [2.0, 1.0]]]), None, (480, 640))  # one pixel point
    assert not prompts.looks_like_fractions(np.array([[[0.5, 0.5]]]), np.array([[-1]]), (480, 640))  # padding only
    assert prompts.fractions_message((480, 640)) == (
        "point_coords: coordinates look like fractions of the image (all within [0, 1]); samrt expects pixels of the "
        "original image: x in [0, 640), y in [0, 480) for this 480x640 (HxW) image (multiply fractions by the width "
        "and height)")


def test_at_most_max_points_per_prompt():
    n = prompts.MAX_POINTS_PER_PROMPT
    prompts.check_points(np.zeros((2, n, 2)), np.ones((2, n)))
    with pytest.raises(InputError, match=rf"point_coords: got {n + 1} points per prompt, expected at most {n}"):
        prompts.check_points(np.zeros((2, n + 1, 2)), np.ones((2, n + 1)))


def test_coordinates_that_are_not_numbers_are_an_input_error():
    with pytest.raises(InputError, match=r"point_coords: got values that are not numbers .*'a'.*expected \[P,N,2\]"):
        prompts.check_points([[["a", "b"]]], [[1]])


def test_mask_logits_near_float_limits_are_refused():
    """3e38 in a mask prompt overflowed in the decoder and answered NaN scores (the wire fuzz test)."""
    ok = np.full((1, 1, 4, 4), -prompts.MAX_MASK_LOGIT, np.float32)
    assert prompts.check_mask_input(ok, 1, 4).shape == (1, 1, 4, 4)
    with pytest.raises(InputError, match=r"mask_input: got a logit of magnitude 3e\+38, expected at most 10000"):
        prompts.check_mask_input(np.full((1, 1, 4, 4), 3e38, np.float32), 1, 4)


def test_padding_points_reach_the_decoder_at_the_origin():
    """A padding point's position does not change SAM's answer (its encoding is replaced); a far
    one gave NaN scores on OpenVINO's AVX2 kernels (wire fuzz test), so it goes to (0, 0)."""
    from samrt.prompts import decoder_prompts

    coords = np.array([[[10.0, 20.0], [3e38, -3e38]]])
    labels = np.array([[1, -1]])
    got, lab = decoder_prompts(coords, labels, (100, 200), 1024)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[0, 1], [0.0, 0.0])
    np.testing.assert_allclose(got[0, 0], [10.0 * 1024 / 200, 20.0 * 1024 / 200], rtol=1e-6)
    assert lab.tolist() == [[1.0, -1.0]]
