"""The annotation app's endpoints with aiohttp's test client, against a real tritonserver (tiny model)."""

import asyncio
import json
import os

import numpy as np
import pytest
from PIL import Image

from samrt.app.annotate.app import SERVICE, create_app
from samrt.app.annotate.masks import from_runs
from samrt.masks import rle_to_mask

from .conftest import with_client

pytestmark = pytest.mark.triton


async def _post(client, path, body=None, status=200):
    r = await client.post(path, json=body)
    data = await r.json()
    assert r.status == status, data
    return data


def test_click_refine_undo_accept_writes_the_image_json(server, scene_folder, tmp_path):
    folder, scenes = scene_folder
    out = str(tmp_path / "out")
    app = create_app(folder, out, server.grpc_url, prefetch=1)

    async def run(client):
        svc = app[SERVICE]
        sid = (await _post(client, "/api/sessions"))["session"]
        s = f"/api/sessions/{sid}"
        info = await _post(client, f"{s}/open", {"index": 0})
        assert info["name"] == "scene_00.png" and info["encoded_ahead"] is False and info["objects"] == []
        await svc.wait_prefetched()   # the next image was encoded in the background ...
        assert [im["encoded"] for im in (await (await client.get("/api/images")).json())["images"]] == [True, True, False]
        assert (await _post(client, f"{s}/open", {"index": 1}))["encoded_ahead"] is True   # ... so it opens at once
        await _post(client, f"{s}/open", {"index": 0})

        st = await _post(client, f"{s}/prompt", {"point": [100, 200, 1]})
        h, w = scenes["scene_00.png"].image.shape[:2]
        assert len(st["candidates"]) == 3 and st["refined"] is False and st["latency_ms"] > 0
        scores = [c["score"] for c in st["candidates"]]
        assert st["selected"] == int(np.argmax(scores))
        first = svc.session(sid).step.answer
        st = await _post(client, f"{s}/select", {"candidate": 2})
        assert st["selected"] == 2

        # a refinement click: the shown answer's low-res logits go back as mask_input, and (SAM's
        # protocol) a second prompt gets the single-mask output, token 0
        st = await _post(client, f"{s}/prompt", {"point": [20, 30, 0]})
        assert st["refined"] is True and st["points"] == [[100, 200, 1], [20, 30, 0]]
        image_id = await svc.image_id(0)
        single = await svc.client.decode(image_id, [[100, 200], [20, 30]], [1, 0], mask_input=first.logits[2][None],
                                         multimask_output=False)
        assert len(st["candidates"]) == 1 and st["selected"] == 0
        np.testing.assert_array_equal(from_runs(st["candidates"][0]["runs"], h, w), single["masks"][0, 0])
        # ... and its three candidates when the annotator asks (c): the same prompts and mask_input
        st = await _post(client, f"{s}/candidates")
        direct = await svc.client.decode(image_id, [[100, 200], [20, 30]], [1, 0], mask_input=first.logits[2][None])
        assert len(st["candidates"]) == 3 and st["selected"] == int(np.argmax(direct["iou_predictions"][0]))
        for k, c in enumerate(st["candidates"]):
            np.testing.assert_array_equal(from_runs(c["runs"], h, w), direct["masks"][0, k])

        st = await _post(client, f"{s}/undo")
        assert st["points"] == [[100, 200, 1]] and st["can_redo"] and st["selected"] == 2
        st = await _post(client, f"{s}/redo")
        assert len(st["points"]) == 2 and not st["can_redo"]
        st = await _post(client, f"{s}/prompt", {"box": [90, 150, 10, 300]})   # corners in any order
        assert st["box"] == [10, 150, 90, 300] and len(st["candidates"]) == 1   # a box: token 0
        chosen = from_runs(st["candidates"][st["selected"]]["runs"], h, w)

        r = await _post(client, f"{s}/accept")
        assert r["state"]["points"] == [] and r["state"]["clicks"] == 0   # the next object starts afresh
        with open(os.path.join(out, "scene_00.json")) as f:
            doc = json.load(f)
        assert doc["image"] == {"image_id": 0, "file_name": "scene_00.png", "width": w, "height": h}
        (a,) = doc["annotations"]
        np.testing.assert_array_equal(rle_to_mask(a["segmentation"]), chosen)
        assert a["area"] == int(chosen.sum()) and a["crop_box"] == [0, 0, w, h]
        assert a["point_coords"] == [[100, 200], [20, 30]]
        assert a["prompts"] == {"points": [[100, 200, 1], [20, 30, 0]], "box": [10, 150, 90, 300]}
        assert a["predicted_iou"] == st["candidates"][st["selected"]]["score"] and a["stability_score"] is None
        assert a["source"] == "manual" and a["clicks"] == 3 and a["seconds"] >= 0
        ys, xs = np.nonzero(chosen)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

        stats = await (await client.get("/api/stats")).json()
        assert stats["objects"] == 1 and stats["clicks_per_mask"] == 3 and stats["masks_per_image"] == 1
        r = await client.delete(f"{s}/objects/0")
        assert (await r.json())["objects"] == []
        with open(os.path.join(out, "scene_00.json")) as f:
            assert json.load(f)["annotations"] == []

        for body, message in [({"point": [1e6, 5, 1]}, "outside the image"), ({"point": [5, 5, 7]}, "point label"),
                              ({"point": [5, 5]}, "a list of 3 numbers"), ({}, "exactly one of 'point' or 'box'")]:
            assert message in (await _post(client, f"{s}/prompt", body, status=400))["error"]
        assert "no mask yet" in (await _post(client, f"{s}/accept", status=400))["error"]
        assert (await client.post("/api/sessions/nope/open", json={"index": 0})).status == 404

    with_client(app, run)


def test_prefill_offers_automatic_masks_to_keep_or_reject(server, scene_folder, tmp_path):
    folder, _ = scene_folder
    out = str(tmp_path / "out")
    # the tiny random-init model predicts nothing confident: no filters, no NMS, a small grid
    app = create_app(folder, out, server.grpc_url,
                     prefill_options={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                      "box_nms_thresh": 1.0})

    async def run(client):
        sid = (await _post(client, "/api/sessions"))["session"]
        s = f"/api/sessions/{sid}"
        await _post(client, f"{s}/open", {"index": 1})
        r = await _post(client, f"{s}/prefill")
        assert r["generated"] >= 2 and len(r["proposals"]) == r["generated"]
        keep, drop = r["proposals"][0], r["proposals"][1]
        r = await _post(client, f"{s}/proposals/{keep['pid']}/accept")
        assert keep["pid"] not in [p["pid"] for p in r["proposals"]] and len(r["objects"]) == 1
        r = await _post(client, f"{s}/proposals/{drop['pid']}/reject")
        assert drop["pid"] not in [p["pid"] for p in r["proposals"]]
        with open(os.path.join(out, "scene_01.json")) as f:
            (a,) = json.load(f)["annotations"]
        assert a["source"] == "prefill" and a["stability_score"] == keep["stability_score"]
        assert a["predicted_iou"] == keep["score"] and len(a["point_coords"]) == 1 and len(a["crop_box"]) == 4
        # prefilled again: what is already accepted is not offered twice
        r = await _post(client, f"{s}/prefill")
        assert len(r["proposals"]) < r["generated"]

    with_client(app, run)


def test_two_annotators_at_once_and_a_server_that_goes_away(server, scene_folder, tmp_path):
    folder, _ = scene_folder
    out = str(tmp_path / "out")
    app = create_app(folder, out, server.grpc_url)

    async def run(client):
        sids = [(await _post(client, "/api/sessions"))["session"] for _ in range(2)]
        await asyncio.gather(*[_post(client, f"/api/sessions/{sid}/open", {"index": i}) for i, sid in enumerate(sids)])
        states = await asyncio.gather(*[_post(client, f"/api/sessions/{sid}/prompt", {"point": [30 + 10 * i, 40, 1]})
                                        for i, sid in enumerate(sids) for _ in range(2)])
        # per session a lone click (three candidates), then two clicks (token 0, one mask)
        assert sorted(len(st["candidates"]) for st in states) == [1, 1, 3, 3]
        await _post(client, f"/api/sessions/{sids[0]}/accept")

        from samrt.client import AsyncSamClient
        from samrt.model_repository.server import free_port

        svc = app[SERVICE]
        live = svc.client
        svc.client = AsyncSamClient(f"127.0.0.1:{free_port()}", retries=0)   # nobody listens there
        r = await client.post(f"/api/sessions/{sids[1]}/prompt", json={"point": [5, 5, 1]})
        body = await r.json()
        assert r.status == 503 and "model server unreachable" in body["error"]
        with open(os.path.join(out, "scene_00.json")) as f:
            assert len(json.load(f)["annotations"]) == 1   # accepted work is on disk
        # the page never shows the old mask for the new prompts: the click is kept, with no mask
        stale = body["state"]
        assert stale["points"][-1] == [5, 5, 1] and stale["candidates"] == [] and stale["selected"] is None
        assert "no answer from the model server" in stale["stale"]
        assert "got no answer" in (await _post(client, f"/api/sessions/{sids[1]}/accept", status=400))["error"]
        assert (await client.get("/api/health")).status == 200
        assert (await (await client.get("/api/health")).json())["model_server"] == "unreachable"

        await svc.client.close()
        svc.client = live   # the server is back: asking again answers all three prompts
        st = await _post(client, f"/api/sessions/{sids[1]}/candidates")
        assert len(st["points"]) == 3 and len(st["candidates"]) == 3 and not st["stale"] and st["refined"]
        assert (await (await client.get("/api/health")).json())["model_server"] == "ready"
        r = await _post(client, f"/api/sessions/{sids[1]}/accept")
        assert r["object"]["clicks"] == 3   # the click that got no answer was a click

    with_client(app, run)


def test_the_pages_prompt_protocol_equals_samrt_eval(small_server, tmp_path):
    """The page's protocol (a lone click: best of three candidates; later clicks and boxes: token 0,
    the shown answer's logits as mask_input) through the app's own service, on held-out scenes,
    gives `samrt eval`'s figures for the same prompts (samrt.scenes.evaluate, here through the
    served model). Three scenes (14 objects) keep it short; the 60-scene figures are in
    docs/annotate.md."""
    from samrt.client import SamClient, TritonSamPredictor
    from samrt.masks import mask_iou
    from samrt.scenes import centre_point, eval_scenes, evaluate, next_click

    scenes = eval_scenes(3)
    folder = tmp_path / "held_out"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"scene_{i:02d}.png")
    app = create_app(str(folder), str(tmp_path / "out"), small_server.grpc_url, prefetch=0)
    clicks = (1, 2, 3, 5)

    async def run(client):
        svc = app[SERVICE]
        sid = (await _post(client, "/api/sessions"))["session"]
        s = svc.session(sid)
        best, per_click, boxes = [], {k: [] for k in clicks}, []
        for i, scene in enumerate(scenes):
            await _post(client, f"/api/sessions/{sid}/open", {"index": i})
            for gt in scene.masks:
                shown = lambda: s.step.answer.masks[s.step.selected]   # the mask the page draws
                x, y = centre_point(gt)
                await _post(client, f"/api/sessions/{sid}/prompt", {"point": [x, y, 1]})
                best.append(mask_iou(shown(), gt))
                for k in range(2, max(clicks) + 1):
                    nxt = next_click(shown(), gt)
                    if nxt is not None:
                        (x, y), label = nxt
                        await _post(client, f"/api/sessions/{sid}/prompt", {"point": [x, y, label]})
                    if k in per_click:
                        per_click[k].append(mask_iou(shown(), gt))
                per_click[1].append(best[-1])
                await _post(client, f"/api/sessions/{sid}/clear")
                ys, xs = np.nonzero(gt)
                await _post(client, f"/api/sessions/{sid}/prompt",
                            {"box": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]})
                boxes.append(mask_iou(shown(), gt))
                await _post(client, f"/api/sessions/{sid}/clear")
        return best, per_click, boxes

    best, per_click, boxes = with_client(app, run)
    with SamClient(small_server.grpc_url) as c:
        ref = evaluate(TritonSamPredictor(c), scenes, clicks)
    assert ref["num_objects"] == len(best) >= 10
    tol = 1e-6
    assert abs(np.mean(best) - ref["miou_1pt_best"]) <= tol
    assert abs(np.mean(boxes) - ref["miou_box"]) <= tol
    for k in clicks:
        assert abs(np.mean(per_click[k]) - ref["miou_clicks"][str(k)]) <= tol, (k, np.mean(per_click[k]), ref)
