"""Against the real tritonserver: parity with SamPredictor, dynamic batching, the embedding
cache, per-request errors, and a clean shutdown."""

import io
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from samrt.client import ImageNotCachedError, SamClient, ServerError

from ..conftest import random_image, settled_count
from ..conftest import CACHE_ENTRIES, MAX_PIXELS, MAX_PROMPTS

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def reference(tiny_sam):
    from segment_anything import SamPredictor

    return SamPredictor(tiny_sam)


def _assert_close(ref_masks, ref_scores, ref_low, out):
    assert out["masks"].dtype == np.bool_ and out["masks"].shape == ref_masks.shape
    assert (out["masks"] == ref_masks).mean() >= 0.9999
    np.testing.assert_allclose(out["iou_predictions"], ref_scores, atol=1e-4)
    np.testing.assert_allclose(out["low_res_masks"], ref_low, atol=1e-3)


@pytest.mark.parametrize("h,w", [(333, 517), (1500, 1250)])
def test_results_equal_sam_predictor(client, reference, h, w):
    image = random_image(h, w, seed=h + w)
    reference.set_image(image)
    image_id = client.encode(image).image_id
    pt, box = np.array([[w * 0.3, h * 0.6]]), np.array([w * 0.1, h * 0.1, w * 0.7, h * 0.8])
    # one point, multimask
    m, s, l = reference.predict(pt, np.array([1]), multimask_output=True)
    _assert_close(m[None], s[None], l[None], client.decode(image_id, pt, [1], multimask_output=True))
    # box + background point, single mask (box corners as labels 2 and 3, no padding)
    m, s, l = reference.predict(pt, np.array([0]), box=box, multimask_output=False)
    out = client.decode(image_id, np.concatenate([pt, box.reshape(2, 2)]), [0, 2, 3], multimask_output=False)
    _assert_close(m[None], s[None], l[None], out)
    # refinement with mask_input
    m, s, l2 = reference.predict(pt, np.array([1]), mask_input=l, multimask_output=False)
    _assert_close(m[None], s[None], l2[None], client.decode(image_id, pt, [1], mask_input=l, multimask_output=False))


def test_many_prompts_in_one_request(client, reference):
    image = random_image(480, 640, seed=3)
    reference.set_image(image)
    image_id = client.encode(image).image_id
    rng = np.random.default_rng(0)
    x0, y0 = rng.uniform(0, 400, 12), rng.uniform(0, 300, 12)
    boxes = np.stack([x0, y0, x0 + rng.uniform(10, 200, 12), y0 + rng.uniform(10, 150, 12)], 1)
    tb = reference.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (480, 640))
    with torch.no_grad():
        m, s, l = (t.numpy() for t in reference.predict_torch(None, None, tb, multimask_output=True))
    out = client.decode(image_id, boxes.reshape(-1, 2, 2), np.tile([2, 3], (12, 1)))
    _assert_close(m, s, l, out)


def _batches_by_size(stats: dict) -> dict:
    """Triton's batch_stats as {batch size: number of executions of that size}."""
    return {b["batch_size"]: int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_concurrent_clients_are_batched_and_get_their_own_answers(server, reference):
    images = [random_image(300, 400, seed=s) for s in (10, 11)]
    with SamClient(server.grpc_url) as c:
        ids = [c.encode(im).image_id for im in images]
        before = _batches_by_size(c.statistics("sam_mask_decoder"))  # the ensemble's decoder step
    rng = np.random.default_rng(1)
    jobs = [(i % 2, rng.uniform(20, 280, (1, 2))) for i in range(16)]
    results = [None] * 16
    start = threading.Barrier(16)

    def work(k):
        which, pt = jobs[k]
        with SamClient(server.grpc_url) as c:
            start.wait()
            results[k] = c.decode(ids[which], pt, [1], outputs=["iou_predictions", "low_res_masks"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with SamClient(server.grpc_url) as c:
        after = _batches_by_size(c.statistics("sam_mask_decoder"))  # the ensemble's decoder step
    # Batch sizes whose count grew during this test (earlier tests share the server): one above 1.
    grew = {size for size, n in after.items() if n > before.get(size, 0)}
    assert max(grew, default=1) > 1, f"no decoder batch larger than 1 in this test: before {before}, after {after}"
    for k, (which, pt) in enumerate(jobs):
        reference.set_image(images[which]) if k == 0 or jobs[k - 1][0] != which else None
        _, s, l = reference.predict(pt, np.array([1]))
        np.testing.assert_allclose(results[k]["iou_predictions"][0], s, atol=1e-4)
        np.testing.assert_allclose(results[k]["low_res_masks"][0], l, atol=1e-3)


def test_second_encode_runs_no_encoder(client):
    image = random_image(200, 300, seed=42 if client.protocol == "grpc" else 43)  # new to the cache in each run
    count = lambda: int(client.statistics("sam_image_encoder").get("inference_count", 0))
    before = settled_count(count, 0)  # the server is shared: earlier tests' last requests are counted first
    first = client.encode(image)
    n = settled_count(count, before + 1)  # Triton counts a request after its response has left
    second = client.encode(image)
    assert second == first and count() == n
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    assert client.encode(image_bytes=png.getvalue()) == first and count() == n  # same pixels, same id


def test_eviction_and_the_clear_error(client):
    images = [random_image(64, 64, seed=100 + i) for i in range(CACHE_ENTRIES + 1)]
    ids = [client.encode(im).image_id for im in images]
    with pytest.raises(ImageNotCachedError, match="not in the embedding cache.*encode the image again"):
        client.decode(ids[0], [[10, 10]], [1])
    client.decode(ids[-1], [[10, 10]], [1])  # the newest is still there
    assert client.encode(images[0]).image_id == ids[0]
    client.decode(ids[0], [[10, 10]], [1])


BAD_DECODES = [
    (dict(point_coords=[[np.nan, 1.0]], point_labels=[1]), "non-finite"),
    (dict(point_coords=[[np.inf, 1.0]], point_labels=[1]), "non-finite"),
    (dict(point_coords=[[1.0, 1.0]], point_labels=[5]), r"got \[5\], expected values in"),
    (dict(point_coords=[[1.0, 1.0]], point_labels=[-1]), "only padding labels"),
]


def raw_decode(client, image_id, point_coords, point_labels):
    """sam_decode with one prompt packed as given: SamClient.decode refuses bad prompts before
    sending them (with samrt.prompts, the server's own checks), so the server's answer is asked raw."""
    return client.infer("sam_decode", {"image_id": (np.array([[image_id.encode()]], dtype=object), "BYTES"),
                                       "point_coords": (np.asarray([point_coords], np.float32), "FP32"),
                                       "point_labels": (np.asarray([point_labels], np.int32), "INT32")}, ["masks"])


@pytest.mark.parametrize("kwargs,match", BAD_DECODES)
def test_bad_decode_gets_its_error_and_the_server_goes_on(client, kwargs, match):
    image_id = client.encode(random_image(100, 100, seed=7)).image_id
    with pytest.raises(ServerError, match=match):
        raw_decode(client, image_id, **kwargs)
    assert client.decode(image_id, [[50, 50]], [1])["masks"].shape == (1, 3, 100, 100)


def test_more_prompts_than_the_limit_in_one_request(client):
    """The server's own limit (the SDK's decode() splits such requests; a raw request meets it)."""
    image_id = client.encode(random_image(100, 100, seed=7)).image_id
    p = MAX_PROMPTS + 1
    with pytest.raises(ServerError, match="batch-size must be <="):
        client.infer("sam_decode", {"image_id": (np.full((p, 1), image_id.encode(), dtype=object), "BYTES"),
                                    "point_coords": (np.zeros((p, 1, 2), np.float32), "FP32"),
                                    "point_labels": (np.ones((p, 1), np.int32), "INT32")}, ["iou_predictions"])
    assert client.decode(image_id, [[50, 50]], [1])["masks"].shape == (1, 3, 100, 100)


def test_wrong_dtype_is_rejected(client):
    image_id = client.encode(random_image(100, 100, seed=7)).image_id
    with pytest.raises(ServerError, match="data-type is 'FP32', but model 'sam_decode' expects 'INT32'"):
        client.infer("sam_decode", {"image_id": (np.array([[image_id.encode()]], dtype=object), "BYTES"),
                                    "point_coords": (np.zeros((1, 1, 2), np.float32), "FP32"),
                                    "point_labels": (np.ones((1, 1), np.float32), "FP32")}, ["iou_predictions"])


BAD_ENCODES = [
    (np.zeros((0, 0, 3), np.uint8), "empty image of 0x0"),
    (np.zeros((10, 10, 2), np.uint8), r"got shape \(10, 10, 2\), expected HxWx3"),
    (np.zeros((2001, 2000, 3), np.uint8), f"expected at most {MAX_PIXELS}"),
    (b"this is not a png", "no image decoder reads"),
]


@pytest.mark.parametrize("payload,match", BAD_ENCODES)
def test_bad_encode_gets_its_error_and_the_server_goes_on(client, payload, match):
    if isinstance(payload, bytes):
        inputs = {"image_bytes": (np.array([payload], dtype=object), "BYTES")}
    else:
        inputs = {"image": (payload, "UINT8")}
    with pytest.raises(ServerError, match=match):
        client.infer("sam_encode", inputs, ["image_id"])
    assert client.encode(random_image(50, 60, seed=1)).original_size == (50, 60)


def test_bad_requests_in_a_batch_leave_the_others_alone(server):
    with SamClient(server.grpc_url) as c:
        image_id = c.encode(random_image(120, 160, seed=9)).image_id
    results = {}
    start = threading.Barrier(8)

    def work(k):
        with SamClient(server.grpc_url) as c:
            start.wait()
            try:
                coords = [[np.nan, 5.0]] if k % 2 else [[20.0 + k, 30.0]]
                results[k] = raw_decode(c, image_id, coords, [1])["masks"].shape
            except ServerError as e:
                results[k] = e

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for k in range(8):
        if k % 2:
            assert isinstance(results[k], ServerError) and "non-finite" in str(results[k])
        else:
            assert results[k] == (1, 3, 120, 160)


def test_segment_one_shot(client, reference):
    image = random_image(240, 320, seed=5)
    reference.set_image(image)
    m, s, l = reference.predict(np.array([[100, 120]]), np.array([1]))
    _assert_close(m, s, l, client.segment(image, [[100, 120]], [1]))


def test_rle_output_decodes_to_the_masks(client):
    from pycocotools import mask as mask_utils
    import json

    image_id = client.encode(random_image(90, 130, seed=8)).image_id
    out = client.decode(image_id, [[40, 40]], [1], outputs=["masks", "masks_rle"])
    for c in range(3):
        rle = json.loads(out["masks_rle"][0, c])
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), out["masks"][0, c])


def _processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_shutdown_leaves_no_process(tiny_repo, tmp_path):
    from samrt.model_repository.server import TritonServer

    srv = TritonServer(tiny_repo, work_dir=str(tmp_path / "work"))
    srv.remove_leftover_shm = lambda: None  # this test checks what Triton's own clean exit leaves
    srv.start()
    with SamClient(srv.grpc_url) as c:
        c.encode(random_image(32, 32))
    pid = srv.process.pid
    assert _processes_mentioning(str(tmp_path / "work"))  # the server is there while it runs
    srv.stop()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert _processes_mentioning(str(tmp_path / "work")) == []
    assert not [p for p in _processes_mentioning("triton_python_backend_stub") if os.getpgid(p) == pid]
    left = srv.leftover_shm()
    TritonServer.remove_leftover_shm(srv)
    assert left == []  # a clean exit: Triton unlinked its regions itself


def test_a_killed_server_leaves_no_shared_memory(tiny_repo, tmp_path):
    """A SIGKILLed server cannot unlink its python-backend regions (32 MiB of RAM each); stop() does."""
    import signal

    from samrt.model_repository.server import TritonServer

    srv = TritonServer(tiny_repo, work_dir=str(tmp_path / "work"))
    # names beside this server's prefix that are not its own: another server of this process, a
    # name the prefix is a prefix of without its separator
    decoys = [os.path.join("/dev/shm", srv.shm_prefix[:-1] + "X" + "0" * 8),
              os.path.join("/dev/shm", f"samrt_triton_{os.getpid()}_00000000_" + "0" * 8)]
    for d in decoys:
        open(d, "wb").close()
    srv.start()
    try:
        regions = srv.leftover_shm()
        assert regions and all(os.path.basename(r).startswith(srv.shm_prefix) for r in regions)  # the prefix is ours
        assert not set(decoys) & set(regions)
        os.killpg(srv.process.pid, signal.SIGKILL)
        srv.process.wait()
        assert srv.leftover_shm() == regions  # what a crash leaves
        srv.stop()
        assert srv.leftover_shm() == []
        assert all(os.path.exists(d) for d in decoys)  # nobody else's region was touched
    finally:
        srv.stop()
        for d in decoys:
            if os.path.exists(d):
                os.unlink(d)
