"""Prompts that cannot be what the user meant (issue "Shared safely", section 5): points given as
fractions of the image get a UserWarning from the SDK that names the likely cause, points far
outside the image are refused before they are sent, and `samrt segment` refuses both."""

import asyncio
import warnings

import numpy as np
import pytest
from PIL import Image

from samrt.app.cli import main
from samrt.client import AsyncSamClient, SamClient, TritonSamPredictor
from samrt.client.cli import check_pixel_prompt, segment_file
from samrt.errors import InputError

from ..conftest import random_image

FAR = r"point_coords: got \(5000, 10\), more than the image's size outside a 120x160 \(HxW\) image"


def test_segment_refuses_fractions_and_far_points(tmp_path, capsys):
    """No server needed: `samrt segment` refuses before it connects."""
    path = tmp_path / "im.png"
    Image.fromarray(random_image(120, 160, seed=1)).save(path)
    with pytest.raises(InputError, match=r"--point/--box: coordinates look like fractions of the image .* "
                                         r"samrt expects pixels"):
        segment_file(None, str(path), ["0.5,0.4"], None, str(tmp_path / "m.png"))
    with pytest.raises(InputError, match=r"--point/--box: coordinates look like fractions"):
        segment_file(None, str(path), [], "0.1,0.1,0.9,0.8", str(tmp_path / "m.png"))
    with pytest.raises(InputError, match=r"--point/--box: got \(5000, 10\), more than the image's size outside"):
        segment_file(None, str(path), ["20,30", "5000,10:0"], None, str(tmp_path / "m.png"))
    assert main(["segment", str(path), "--point", "0.5,0.5", "--out", str(tmp_path / "m.png"),
                 "--url", "127.0.0.1:9"]) == 2  # nothing listens there: refused before any connection
    assert "look like fractions of the image" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
    check_pixel_prompt(np.array([[1.0, 1.0], [0.5, 0.5]]), None, (8, 8))  # a tiny image: [0, 1] may be meant
    check_pixel_prompt(np.array([[0.5, 0.5]]), np.array([10, 10, 100, 90]), (120, 160))  # one real box corner


def _fraction_warnings(record):
    return [w for w in record if issubclass(w.category, UserWarning) and "look like fractions" in str(w.message)]


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_sdk_warns_on_fractions_and_refuses_far_points(server, protocol):
    image = random_image(120, 160, seed=2)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with SamClient(url, protocol) as c:
        image_id = c.encode(image).image_id
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            out = c.decode(image_id, [[0.5, 0.5]], [1])  # answered: fractions may be meant, the SDK only warns
        (w,) = _fraction_warnings(record)
        assert w.filename == __file__  # the warning names the caller's line, not samrt's
        assert "samrt expects pixels of the original image: x in [0, 160), y in [0, 120)" in str(w.message)
        assert out["masks"].shape == (1, 3, 120, 160)
        with pytest.raises(InputError, match=FAR):  # refused before it is sent (InputError, not the server's error)
            c.decode(image_id, [[5000, 10]], [1])
        with pytest.raises(InputError, match=FAR):
            c.segment(image, [[5000, 10]], [1])
        with pytest.warns(UserWarning, match="look like fractions"):
            c.segment(image, [[0.2, 0.3]], [1])
        predictor = TritonSamPredictor(c)
        predictor.set_image(image)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            predictor.predict(point_coords=np.array([[0.3, 0.6]]), point_labels=np.array([1]))
        (w,) = _fraction_warnings(record)
        assert w.filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pixels: no warning
            predictor.predict(point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
            predictor.predict(box=np.array([0.0, 0.0, 1.0, 1.0 + 10]))  # one corner outside [0, 1]
        with pytest.raises(InputError, match=r"point_coords: got \(-1000, 5\)"):
            predictor.predict(point_coords=np.array([[-1000, 5]]), point_labels=np.array([1]))


@pytest.mark.triton
def test_the_async_client_checks_the_same(server):
    image = random_image(120, 160, seed=3)

    async def main_():
        async with AsyncSamClient(server.grpc_url) as c:
            image_id = (await c.encode(image)).image_id
            with pytest.warns(UserWarning, match="look like fractions"):
                await c.decode(image_id, [[0.5, 0.5]], [1])
            with pytest.raises(InputError, match=FAR):
                await c.decode(image_id, [[5000, 10]], [1])

    asyncio.run(main_())
