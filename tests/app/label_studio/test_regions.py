"""Label Studio's data as samrt reads and writes it, without any server: the labelling config,
a context's prompts in pixels, brush regions, image URLs."""

from __future__ import annotations

import base64
import json
import os
import re

import numpy as np
import pytest

from samrt.app.label_studio.regions import (LABEL_CONFIG, LABEL_TAGS, Prompt, context_prompt, image_value,
                                            parse_label_config)
from samrt.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_the_readme_shows_the_config_samrt_declares():
    readme = open(os.path.join(ROOT, "README.md")).read()
    (shown,) = re.findall(r"```xml\n(.*?)```", readme, re.S)
    assert shown.strip() == LABEL_CONFIG.strip()
    assert (LABEL_TAGS.image, LABEL_TAGS.image_key, LABEL_TAGS.brush, LABEL_TAGS.labels) == \
        ("image", "image", "mask", ("object",))


def test_the_first_brush_tag_on_an_image_answers():
    tags = parse_label_config('<View><Image name="img" value="$photo"/><Text name="t" value="$x"/>'
                              '<BrushLabels name="seg" toName="img"><Label value="cat"/><Label value="dog"/>'
                              '</BrushLabels></View>')
    assert (tags.image, tags.image_key, tags.brush, tags.labels) == ("img", "photo", "seg", ("cat", "dog"))
    with pytest.raises(InputError, match="expected a BrushLabels tag"):
        parse_label_config('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"/></View>')
    with pytest.raises(InputError, match="not XML"):
        parse_label_config("<View>")
    assert image_value({"data": {"photo": "/data/upload/1/a.png"}}, tags) == "/data/upload/1/a.png"
    with pytest.raises(InputError, match=r"data\['photo'\] is None"):
        image_value({"id": 3, "data": {}}, tags)


def _kp(x, y, positive=True, w=200, h=100, label="object"):
    return {"type": "keypointlabels", "original_width": w, "original_height": h, "is_positive": positive,
            "value": {"x": x, "y": y, "keypointlabels": [label]}}


def test_percent_positions_become_pixels_and_prompts_refine():
    one = context_prompt([_kp(25.0, 50.0, label="car")])
    assert one.points == ((50.0, 50.0, 1),) and one.box is None and one.label == "car" and one.size == (100, 200)
    assert one.multimask()
    coords, labels = one.wire()
    assert coords.tolist() == [[[50.0, 50.0]]] and labels.tolist() == [[1]] and coords.dtype == np.float32
    box = {"type": "rectanglelabels", "original_width": 200, "original_height": 100,
           "value": {"x": 10.0, "y": 20.0, "width": 50.0, "height": 30.0, "rectanglelabels": ["car"]}}
    two = context_prompt([_kp(25.0, 50.0, label="car"), _kp(90.0, 90.0, positive=False, label="car"), box])
    assert two.points[1] == (180.0, 90.0, 0) and two.box == (20.0, 20.0, 120.0, 50.0) and not two.multimask()
    coords, labels = two.wire()
    assert labels.tolist() == [[1, 0, 2, 3]] and coords[0, 2:].tolist() == [[20.0, 20.0], [120.0, 50.0]]
    assert two.extends(one) and not one.extends(two) and not one.extends(one)
    moved = context_prompt([_kp(30.0, 50.0), _kp(90.0, 90.0, positive=False)])
    assert not moved.extends(one)  # the first click moved: a new region, no mask_input
    assert isinstance(one, Prompt)


@pytest.mark.parametrize("results, match", [
    ([], "no keypoint or rectangle"),
    ([{"type": "polygonlabels"}], "got .*polygonlabels"),
    ([{**_kp(1, 1), "original_width": None}], "original_width is None"),
    ([{**_kp(1, 1), "value": {"x": "a", "y": 1}}], "value.x is 'a'"),
    ([{**_kp(1, 1), "original_width": 0}], "at least 1x1"),
])
def test_bad_contexts_say_what_was_received(results, match):
    with pytest.raises(InputError, match=match):
        context_prompt(results)


def test_brush_regions_round_trip_through_label_studios_rle():
    pytest.importorskip("label_studio_converter", reason="label-studio-converter (the label-studio extra)")
    from samrt.app.label_studio.regions import brush_region, decode_brush_rle

    mask = np.zeros((37, 53), bool)
    mask[5:20, 7:40] = True
    mask[30, 50] = True
    region = brush_region(mask, "mask", "image", "cat", 0.75)
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cat"] and region["score"] == 0.75
    assert (region["original_width"], region["original_height"]) == (53, 37)
    json.dumps(region)  # plain JSON
    np.testing.assert_array_equal(decode_brush_rle(region["value"]["rle"], 37, 53), mask)
    with pytest.raises(InputError, match="expected 36x53x4"):
        decode_brush_rle(region["value"]["rle"], 36, 53)


def _jwt(payload):
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.signature"


def test_image_urls_and_tokens():
    pytest.importorskip("aiohttp", reason="aiohttp (the label-studio extra)")
    from samrt.app.label_studio.images import ImageFetchError, ImageSource, _jwt_expiry

    src = ImageSource("http://ls.example:8080/", "key")
    assert src.resolve("/data/upload/3/a.png") == "http://ls.example:8080/data/upload/3/a.png"
    assert src.resolve("upload/3/a.png") == "http://ls.example:8080/data/upload/3/a.png"
    assert src.resolve("/data/local-files/?d=photos/a.png") == "http://ls.example:8080/data/local-files/?d=photos/a.png"
    assert src.resolve("https://cdn.example/a.png") == "https://cdn.example/a.png"
    assert src._is_label_studio("http://ls.example:8080/data/x") and not src._is_label_studio("http://ls.example:9/x")
    with pytest.raises(ImageFetchError, match="cloud storage"):
        src.resolve("s3://bucket/a.png")
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_URL is not set"):
        ImageSource("", "").resolve("/data/upload/3/a.png")
    with pytest.raises(InputError, match="LABEL_STUDIO_URL"):
        ImageSource("ls.example:8080", "")
    assert _jwt_expiry("0123456789abcdef") is None and _jwt_expiry("a.b.c") is None
    assert _jwt_expiry(_jwt({"exp": 1900000000, "token_type": "refresh"})) == 1900000000.0
