"""Against the real tritonserver: images as cameras and instruments send them (`image_bytes`)
are decoded by samrt.imageio: EXIF orientation, 16-bit grey, degenerate shapes."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from samrt.client import ServerError

from ..conftest import random_image

pytestmark = pytest.mark.triton


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _image_bytes(data: bytes):
    return {"image_bytes": (np.array([data], dtype=object), "BYTES")}


def test_exif_rotated_jpeg_is_encoded_as_displayed(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise: stored 160 wide x 120 high, shown 120 wide x 160 high
    data = _bytes(Image.fromarray(random_image(120, 160, seed=11)), "JPEG", exif=exif, quality=95)
    displayed = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert displayed.shape == (160, 120, 3)
    from_bytes = client.encode(image_bytes=data)
    assert from_bytes.original_size == (160, 120)
    assert from_bytes.image_id == client.encode(displayed).image_id  # the same pixels, the same id
    # a click in the viewer's frame (x 100, y 150) lies inside; masks come out in that frame
    out = client.infer("sam_segment", {**_image_bytes(data),
                                       "point_coords": (np.array([[100.0, 150.0]], np.float32), "FP32"),
                                       "point_labels": (np.array([1], np.int32), "INT32")}, ["masks"])
    assert out["masks"].shape == (3, 160, 120)


def test_16bit_grey_png_is_not_encoded_as_white(client):
    yy, xx = np.mgrid[0:120, 0:160]
    values = (4000 + (xx * 120 + yy) * (56000 / (160 * 120 - 1))).astype(np.uint16)
    result = client.encode(image_bytes=_bytes(Image.fromarray(values), "PNG"))
    assert result.original_size == (120, 160)
    high_byte = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)  # what cv2.imread gives
    assert result.image_id == client.encode(high_byte).image_id
    assert result.image_id != client.encode(np.full((120, 160, 3), 255, np.uint8)).image_id


@pytest.mark.parametrize("h,w", [(1, 3000), (3000, 1)])
def test_degenerate_shape_gets_an_input_error(client, h, w):
    # the tiny model's input size is 1024: 1 * 1024 / 3000 = 0.34 rounds to 0
    side = "height" if h < w else "width"
    match = rf"got {h}x{w} pixels .*its {side} would be .* rounds to 0 pixels"
    for model, extra in [("sam_encode", {}), ("sam_amg", {})]:
        for inputs in ({"image": (np.zeros((h, w, 3), np.uint8), "UINT8")},
                       _image_bytes(_bytes(Image.new("RGB", (w, h)), "PNG"))):
            with pytest.raises(ServerError, match=match) as e:
                client.infer(model, {**inputs, **extra}, ["image_id"] if model == "sam_encode" else ["records"])
            assert "internal error" not in str(e.value)
    assert client.encode(np.zeros((2, 3000, 3), np.uint8)).original_size == (2, 3000)  # 0.68 rounds to 1: admitted


def test_cli_segment_and_amg_work_in_the_displayed_frame(server, tmp_path):
    import json

    from samrt.app.cli import main

    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 counter-clockwise: stored 128 wide x 96 high, shown 96 x 128
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(random_image(96, 128, seed=12)).save(folder / "phone.jpg", exif=exif, quality=95)
    url = ["--url", server.grpc_url]
    # (x 80, y 110) is inside the displayed 96x128 image, outside the stored one's height
    assert main(["segment", str(folder / "phone.jpg"), "--point", "80,110", "--out", str(tmp_path / "mask.png")] + url) == 0
    assert np.asarray(Image.open(tmp_path / "mask.png")).shape == (128, 96)
    assert main(["amg", str(folder), "--out", str(tmp_path / "masks"), "--points-per-side", "4",
                 "--pred-iou-thresh", "0", "--stability-score-thresh", "0"] + url) == 0
    doc = json.load(open(tmp_path / "masks" / "phone.json"))
    assert (doc["image"]["height"], doc["image"]["width"]) == (128, 96)
    assert doc["annotations"] and all(a["segmentation"]["size"] == [128, 96] for a in doc["annotations"])
