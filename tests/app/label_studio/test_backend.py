"""`samrt label-studio` against its protocol (Label Studio's `label_studio_ml` requests, as Label
Studio sends them) with aiohttp's test client, a real tritonserver (tiny model) and a small image
host standing in for Label Studio's file serving. Every mask is compared with the SDK's own
answer to the same prompts."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from samrt.imageio import decode_image_bytes

from ...conftest import random_image

pytest.importorskip("label_studio_converter", reason="label-studio-converter (the label-studio extra) is not installed")

from samrt.app.label_studio.app import BACKEND, create_app  # noqa: E402
from samrt.app.label_studio.regions import LABEL_CONFIG, decode_brush_rle  # noqa: E402

pytestmark = pytest.mark.triton
TOKEN = "test-token-0123456789"


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _exif_jpeg(image: np.ndarray) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6: shown rotated 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


class Hosts:
    """Two image hosts on loopback: `ls` stands for Label Studio (its /data/upload/ paths need
    the token), `other` for any web server; each records the Authorization headers it saw."""

    def __init__(self, files):
        self.files, self.seen = files, {"ls": [], "other": []}

    def app(self, name):
        async def serve(request):
            self.seen[name].append(request.headers.get("Authorization"))
            if name == "ls" and request.headers.get("Authorization") != f"Token {TOKEN}":
                return web.Response(status=401)
            data = self.files.get(request.match_info["path"])
            return web.Response(body=data, content_type="image/png") if data else web.Response(status=404)

        app = web.Application()
        app.router.add_get("/{path:.*}", serve)
        return app


def _keypoint(x, y, w, h, positive=True, label="object"):
    return {"type": "keypointlabels", "original_width": w, "original_height": h, "is_positive": positive,
            "value": {"x": 100.0 * x / w, "y": 100.0 * y / h, "width": 0.5, "keypointlabels": [label]},
            "from_name": "click", "to_name": "image", "origin": "manual"}


def _rectangle(x0, y0, x1, y1, w, h, label="object"):
    return {"type": "rectanglelabels", "original_width": w, "original_height": h,
            "value": {"x": 100.0 * x0 / w, "y": 100.0 * y0 / h, "width": 100.0 * (x1 - x0) / w,
                      "height": 100.0 * (y1 - y0) / h, "rotation": 0, "rectanglelabels": [label]},
            "from_name": "box", "to_name": "image"}


def _predict_body(task, results, project="7.1700000000"):
    return {"tasks": [task], "label_config": LABEL_CONFIG, "project": project,
            "params": {"login": None, "password": None, "context": {"result": results} if results else None}}


def _region_mask(prediction):
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and (region["from_name"], region["to_name"]) == ("mask", "image")
    assert region["value"]["format"] == "rle"
    return region, decode_brush_rle(region["value"]["rle"], region["original_height"], region["original_width"])


def run_with_hosts(server, files, fn, **app_options):
    """`await fn(client, hosts, urls)` with the backend on `server` and the two image hosts up."""
    hosts = Hosts(files)

    async def main():
        async with TestServer(hosts.app("ls")) as ls, TestServer(hosts.app("other")) as other:
            urls = {"ls": str(ls.make_url("")).rstrip("/"), "other": str(other.make_url("")).rstrip("/")}
            app = create_app(server.grpc_url, ls_url=urls["ls"], api_key=TOKEN, **app_options)
            async with TestClient(TestServer(app)) as client:
                return await fn(client, hosts, urls)

    return asyncio.run(main())


async def _post(client, path, body, status=200, **kw):
    r = await client.post(path, json=body, **kw)
    data = await r.json()
    assert r.status == status, data
    return data


def test_health_setup_webhook_and_basic_auth(server):
    async def fn(client, hosts, urls):
        for path in ("/", "/health"):
            r = await client.get(path, headers=_auth())
            assert r.status == 200 and (await r.json())["status"] == "UP"
        assert (await client.get("/health")).status == 401  # no credentials
        assert (await client.get("/health", headers={"Authorization": "Basic " + base64.b64encode(
            b"annotator:wrong").decode()})).status == 401
        setup = await _post(client, "/setup", {"project": "7.1700000000", "schema": LABEL_CONFIG,
                                               "extra_params": {"preannotate": True, "points_per_side": 4}},
                            headers=_auth())
        assert setup == {"model_version": "samrt"}
        bad = await _post(client, "/setup", {"project": "7.1", "extra_params": {"points_per_sid": 4}}, 400, headers=_auth())
        assert "points_per_sid" in bad["error"]
        assert await _post(client, "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 7}},
                           headers=_auth()) == {"status": "Unknown event"}

    run_with_hosts(server, {}, fn, basic_auth_user="annotator", basic_auth_pass="secret")


def _auth():
    return {"Authorization": "Basic " + base64.b64encode(b"annotator:secret").decode()}


def test_clicks_and_boxes_answer_the_sdks_masks_with_refinement(server):
    """A lone click: SAM's three masks, the best answered; a second click on the same region: one
    mask, with the first answer's logits as mask_input; a box: one mask. Each equals the SDK's."""
    image = random_image(96, 128, seed=71)
    h, w = image.shape[:2]

    async def fn(client, hosts, urls):
        backend, sdk = client.app[BACKEND], client.app[BACKEND].client
        task = {"id": 1, "data": {"image": "/data/upload/7/photo.png"}}
        image_id = (await sdk.encode(image)).image_id

        first = (await _post(client, "/predict", _predict_body(task, [_keypoint(60, 40, w, h, label="car")])))["results"]
        region, mask = _region_mask(first[0])
        direct = await sdk.decode(image_id, [[[60, 40]]], [[1]], multimask_output=True,
                                  outputs=("masks", "iou_predictions", "low_res_masks"))
        best = int(np.argmax(direct["iou_predictions"][0]))
        np.testing.assert_array_equal(mask, direct["masks"][0, best])
        assert region["value"]["brushlabels"] == ["car"] and (region["original_width"], region["original_height"]) == (w, h)
        assert region["score"] == pytest.approx(float(direct["iou_predictions"][0, best]), abs=1e-6)

        both = [_keypoint(60, 40, w, h, label="car"), _keypoint(10, 80, w, h, positive=False, label="car")]
        second = (await _post(client, "/predict", _predict_body(task, both)))["results"]
        _, mask = _region_mask(second[0])
        refined = await sdk.decode(image_id, [[[60, 40], [10, 80]]], [[1, 0]], multimask_output=False,
                                   mask_input=direct["low_res_masks"][0, best][None])
        np.testing.assert_array_equal(mask, refined["masks"][0, 0])

        other_task = {"id": 2, "data": {"image": "/data/upload/7/photo.png"}}  # another region: no mask_input
        box = (await _post(client, "/predict", _predict_body(other_task, [_rectangle(20, 10, 90, 70, w, h)])))["results"]
        _, mask = _region_mask(box[0])
        plain = await sdk.decode(image_id, [[[20, 10], [90, 70]]], [[2, 3]], multimask_output=False)
        np.testing.assert_array_equal(mask, plain["masks"][0, 0])
        assert hosts.seen["ls"] == [f"Token {TOKEN}"]  # fetched once, with the key; every click after is a decode
        assert len(backend._known) == 1

    run_with_hosts(server, {"data/upload/7/photo.png": _png(image)}, fn)


def test_exif_orientation_and_absolute_urls_without_the_key(server):
    stored = random_image(60, 80, seed=72)  # stored 80 wide, 60 high; shown 60 wide, 80 high
    data = _exif_jpeg(stored)
    shown = decode_image_bytes(data)
    assert shown.shape[:2] == (80, 60)

    async def fn(client, hosts, urls):
        sdk = client.app[BACKEND].client
        task = {"id": 3, "data": {"image": urls["other"] + "/pics/sideways.jpg"}}
        out = (await _post(client, "/predict", _predict_body(task, [_keypoint(30, 60, 60, 80)])))["results"]
        region, mask = _region_mask(out[0])
        assert (region["original_height"], region["original_width"]) == (80, 60) and mask.shape == (80, 60)
        direct = await sdk.decode((await sdk.encode(shown)).image_id, [[[30, 60]]], [[1]])
        np.testing.assert_array_equal(mask, direct["masks"][0, int(np.argmax(direct["iou_predictions"][0]))])
        assert hosts.seen["other"] == [None]  # Label Studio's key never goes to another host

        missing = {"id": 4, "data": {"image": "/data/upload/7/nothing.png"}}
        err = await _post(client, "/predict", _predict_body(missing, [_keypoint(1, 1, 9, 9)]), 502)
        assert "HTTP 404" in err["error"]
        bad = await _post(client, "/predict", {**_predict_body(task, [{"type": "polygonlabels"}])}, 400)
        assert "polygonlabels" in bad["error"]
        no_brush = {**_predict_body(task, [_keypoint(1, 1, 9, 9)]), "label_config": "<View><Image name='i' value='$image'/></View>"}
        assert "BrushLabels" in (await _post(client, "/predict", no_brush, 400))["error"]

    run_with_hosts(server, {"pics/sideways.jpg": data}, fn)


def test_many_annotators_at_once_encode_each_image_once(server):
    images = [random_image(64 + 8 * i, 72, seed=80 + i) for i in range(3)]
    files = {f"data/upload/7/im{i}.png": _png(im) for i, im in enumerate(images)}

    async def encoder_runs(sdk) -> int:
        return int((await sdk.statistics("sam_image_encoder")).get("inference_count", 0))

    async def fn(client, hosts, urls):
        sdk = client.app[BACKEND].client
        before = await encoder_runs(sdk)
        bodies = [_predict_body({"id": 10 + k, "data": {"image": f"/data/upload/7/im{k % 3}.png"}},
                                [_keypoint(20 + k, 30, 72, 64 + 8 * (k % 3))]) for k in range(9)]
        answers = await asyncio.gather(*[_post(client, "/predict", b) for b in bodies])  # nine annotators at once
        assert len(hosts.seen["ls"]) == 3  # each image fetched and encoded once, however many clicks came at once
        for _ in range(40):  # Triton counts a request after its response has left
            if await encoder_runs(sdk) >= before + 3:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.3)
        assert await encoder_runs(sdk) == before + 3
        for k, answer in enumerate(answers):
            _, mask = _region_mask(answer["results"][0])
            direct = await sdk.decode((await sdk.encode(images[k % 3])).image_id, [[[20 + k, 30]]], [[1]])
            np.testing.assert_array_equal(mask, direct["masks"][0, int(np.argmax(direct["iou_predictions"][0]))])

    run_with_hosts(server, files, fn)


def test_preannotation_when_the_project_asks_bounded_in_time(server):
    image = random_image(64, 80, seed=90)

    async def fn(client, hosts, urls):
        task = {"id": 20, "data": {"image": "/data/upload/7/pre.png"}}
        assert (await _post(client, "/predict", _predict_body(task, None)))["results"] == []  # not asked for
        await _post(client, "/setup", {"project": "7.1700000000", "schema": LABEL_CONFIG, "extra_params": {
            "preannotate": True, "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}})
        (pred,) = (await _post(client, "/predict", _predict_body(task, None)))["results"]
        records = await client.app[BACKEND].amg_client.amg(image, {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                                   "stability_score_thresh": 0.0})
        assert len(pred["result"]) == len(records) > 0 and pred["model_version"] == "samrt"
        from samrt.app.exports import rle_mask

        for region, record in zip(pred["result"], records):
            back = decode_brush_rle(region["value"]["rle"], region["original_height"], region["original_width"])
            np.testing.assert_array_equal(back, rle_mask(record["segmentation"]))
            assert region["value"]["brushlabels"] == ["object"]
        other = _predict_body(task, None, project="8.1700000000")  # another project did not ask
        assert (await _post(client, "/predict", other))["results"] == []

    run_with_hosts(server, {"data/upload/7/pre.png": _png(image)}, fn)

    async def slow(client, hosts, urls):  # a bound far below one job: the task gets no result, the call returns
        await _post(client, "/setup", {"project": "9.1", "extra_params": {"points_per_side": 16}})
        (pred,) = (await _post(client, "/predict", _predict_body({"id": 21, "data": {"image": "/data/upload/7/pre.png"}},
                                                                 None, project="9.1")))["results"]
        assert "result" not in pred and "Timeout" in pred["error"]

    run_with_hosts(server, {"data/upload/7/pre.png": _png(image)}, slow, preannotate=True, preannotate_timeout=0.05)
