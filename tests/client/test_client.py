"""SamClient and AsyncSamClient: shared memory, asyncio, retries across a restart, the CLI."""

import asyncio
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from samrt.client import AsyncSamClient, SamClient, ServerUnavailableError
from samrt.client._endpoints import ServerShm

from ..conftest import random_image, settled_count

pytestmark = pytest.mark.triton


def test_shared_memory_gives_the_same_answers(server):
    image = random_image(300, 200, seed=12)
    with SamClient(server.grpc_url) as plain, SamClient(server.grpc_url, shared_memory=True, admin_key=server.admin_key) as shm:
        a, b = plain.encode(image), shm.encode(image)
        assert a == b
        x = plain.decode(a.image_id, [[50, 60]], [1])
        y = shm.decode(b.image_id, [[50, 60]], [1])
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
        pool = shm.replicas[0].pool
        assert len(pool._idle) == 1  # a region really was used
        name = pool._idle[0].name
        assert name in {n for n, _ in ServerShm(shm.replicas[0].conn, server.admin_key).status()}
    assert pool._idle == []  # and released on close
    with SamClient(server.grpc_url) as plain:
        assert name not in {n for n, _ in ServerShm(plain.replicas[0].conn, server.admin_key).status()}


def test_async_client(server):
    image = random_image(120, 90, seed=13)

    async def main():
        async with AsyncSamClient(server.grpc_url) as c:
            enc = await c.encode(image)
            outs = await asyncio.gather(*[c.decode(enc.image_id, [[10 + i, 20]], [1]) for i in range(4)])
            stats = await c.statistics("sam_decode")
            return enc, outs, stats

    enc, outs, stats = asyncio.run(main())
    with SamClient(server.grpc_url) as c:
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out["masks"], c.decode(enc.image_id, [[10 + i, 20]], [1])["masks"])
    assert stats["inference_count"] >= 4


def test_unreachable_server_is_a_typed_error():
    from samrt.model_repository.server import free_port

    url = f"127.0.0.1:{free_port()}"
    with SamClient(url, retries=1, backoff=0.05) as c:
        with pytest.raises(ServerUnavailableError, match=f"nothing listens at {url}"):
            c.encode(random_image(8, 8))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_wrong_protocol_on_a_port_is_named(server, protocol):
    """gRPC sent to Triton's HTTP port, or HTTP to its gRPC port: the error says which it is."""
    url = server.http_url if protocol == "grpc" else server.grpc_url
    other = "HTTP/1.1" if protocol == "grpc" else "gRPC"
    with SamClient(url, protocol, retries=0) as c:
        with pytest.raises(ServerUnavailableError, match=f"answers {other}, not .*use protocol"):
            c.encode(random_image(8, 8))


def test_retries_across_a_server_restart(tiny_repo, tmp_path):
    from samrt.model_repository.server import TritonServer, free_port

    ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    srv = TritonServer(tiny_repo, work_dir=str(tmp_path / "w"), **ports).start()
    key = srv.admin_key  # the restarted server is given the same admin key
    client = SamClient(srv.grpc_url, retries=6, backoff=0.5)
    image_id = client.encode(random_image(64, 64, seed=1)).image_id
    # a shared-memory client too: the restarted server knows none of its regions
    shm_client = SamClient(srv.http_url, "http", retries=6, backoff=0.5, shared_memory=True, admin_key=key)
    assert shm_client.encode(random_image(64, 64, seed=1)).image_id == image_id
    srv.stop()
    restarted = {}

    def restart():
        time.sleep(1.0)
        restarted["server"] = TritonServer(tiny_repo, work_dir=str(tmp_path / "w"), admin_key=key, **ports).start()

    t = threading.Thread(target=restart)
    t.start()
    try:
        result = client.encode(random_image(64, 64, seed=1))  # retried until the new server answers
        assert result.image_id == image_id
        assert client.decode(image_id, [[5, 5]], [1])["masks"].shape == (1, 3, 64, 64)
        # registered again (the server answered that it did not know the region), then sent once more
        assert shm_client.encode(random_image(64, 64, seed=1)).image_id == image_id
        assert shm_client.decode(image_id, [[5, 5]], [1])["masks"].shape == (1, 3, 64, 64)
        assert shm_client.replicas[0].pool._idle[0].name in {n for n, _ in ServerShm(shm_client.replicas[0].conn, key).status()}
    finally:
        t.join()
        client.close()
        shm_client.close()
        restarted["server"].stop()


def test_cli_segment_and_amg(server, tmp_path, capsys):
    from samrt.app.cli import main

    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in range(2):
        Image.fromarray(random_image(96, 128, seed=40 + i)).save(img_dir / f"im{i}.png")
    url = ["--url", server.grpc_url]
    assert main(["segment", str(img_dir / "im0.png"), "--point", "40,50", "--point", "90,20:0", "--box", "5,5,100,80",
                 "--out", str(tmp_path / "mask.png"), "--overlay", str(tmp_path / "ov.png")] + url) == 0
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (96, 128) and set(np.unique(mask)) <= {0, 255}
    from samrt.visualize import STYLE

    ov = np.asarray(Image.open(tmp_path / "ov.png"))   # the box it was given is drawn
    top_edge = ov[5, 20:90]
    assert (top_edge == STYLE["box_color"]).all(axis=1).mean() >= 0.9
    (img_dir / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)   # not decodable: skipped, the rest goes on
    capsys.readouterr()
    assert main(["amg", str(img_dir), "--out", str(tmp_path / "masks"), "--points-per-side", "4",
                 "--pred-iou-thresh", "0", "--stability-score-thresh", "0"] + url) == 1  # an image was skipped
    printed = capsys.readouterr()
    docs = sorted(n for n in os.listdir(tmp_path / "masks") if n.endswith(".json"))
    assert docs == ["im0.json", "im1.json"]
    counts = {n: len(json.load(open(tmp_path / "masks" / f"{n}.json"))["annotations"]) for n in ("im0", "im1")}
    assert f"im0.png: {counts['im0']} masks" in printed.err and "cut.jpg: skipped (" in printed.err
    assert f"wrote 2 files to {tmp_path / 'masks'}: {sum(counts.values())} masks in all; skipped 1: cut.jpg" in printed.out
    doc = json.load(open(tmp_path / "masks" / "im0.json"))
    assert doc["image"]["height"] == 96 and doc["annotations"]
    assert set(doc["annotations"][0]) >= {"segmentation", "area", "bbox", "predicted_iou", "stability_score"}
    assert main(["segment", str(img_dir / "im0.png"), "--point", "oops", "--out", str(tmp_path / "m.png")] + url) == 2
    assert "--point: got 'oops'" in capsys.readouterr().err


def test_cli_amg_exports_for_training_tools(server, tmp_path):
    from samrt.app.cli import main

    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.fromarray(random_image(96, 128, seed=42)).save(img_dir / "im0.png")
    out = tmp_path / "masks"
    assert main(["amg", str(img_dir), "--out", str(out), "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", "--format", "coco,yolo,label-studio", "--url", server.grpc_url]) == 0
    n = len(json.load(open(out / "im0.json"))["annotations"])
    coco = json.load(open(out / "coco" / "instances.json"))
    assert n and len(coco["annotations"]) + coco["info"]["objects_without_polygon"] == n
    assert len((out / "yolo" / "labels" / "im0.txt").read_text().splitlines()) <= n
    assert (out / "yolo" / "data.yaml").is_file() and (out / "yolo" / "images" / "im0.png").is_file()
    (task,) = json.load(open(out / "label-studio" / "tasks.json"))
    assert task["data"]["image"] == "/data/local-files/?d=images/im0.png" and len(task["predictions"][0]["result"]) == n
    assert main(["amg", str(img_dir), "--out", str(out), "--format", "pascal", "--url", server.grpc_url]) == 2
    # another folder into the same --out: its exports hold its own images, not the earlier run's
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(random_image(64, 64, seed=43)).save(other / "im9.png")
    assert main(["amg", str(other), "--out", str(out), "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", "--format", "coco", "--url", server.grpc_url]) == 0
    assert [i["file_name"] for i in json.load(open(out / "coco" / "instances.json"))["images"]] == ["im9.png"]
    # a folder of the user's own files is refused, and nothing in it changes
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "im0.json").write_text('{"mine": 1}')
    assert main(["amg", str(img_dir), "--out", str(mine), "--url", server.grpc_url]) == 2
    assert sorted(os.listdir(mine)) == ["im0.json"] and (mine / "im0.json").read_text() == '{"mine": 1}'


def test_cli_encode_a_folder_ahead_resumes_and_lists_failures(server, tmp_path, capsys):
    """`samrt encode`: every image embedded; a rerun finds them held and encodes nothing (the
    server's cache holds 3 embeddings: 3 images); a file that is no image is listed, not fatal."""
    from samrt.app.cli import main
    from samrt.client import SamClient

    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in range(3):
        Image.fromarray(random_image(40 + 8 * i, 56, seed=60 + i)).save(img_dir / f"im{i}.png")
    (img_dir / "broken.jpg").write_bytes(b"not an image")
    count = lambda c: int(c.statistics("sam_image_encoder").get("inference_count", 0))
    with SamClient(server.grpc_url) as c:
        before = count(c)
        assert main(["encode", str(img_dir), "--url", server.grpc_url, "--workers", "3"]) == 1  # 1: a failure
        summary = json.loads(capsys.readouterr().out)
        assert (summary["images"], summary["encoded"], summary["held"]) == (4, 3, 0)
        assert [f["file_name"] for f in summary["failed"]] == ["broken.jpg"]
        assert settled_count(lambda: count(c), before + 3) == before + 3
        (img_dir / "broken.jpg").unlink()
        assert main(["encode", str(img_dir), "--url", server.grpc_url]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert (summary["encoded"], summary["held"], summary["failed"]) == (0, 3, [])
        assert settled_count(lambda: count(c), before + 3) == before + 3  # nothing encoded again
