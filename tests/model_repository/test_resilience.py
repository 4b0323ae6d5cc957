"""What real users do to a server: a model process dies (killed for memory), a client abandons an
expensive automatic-mask job. Real tritonserver, tiny model."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from samrt.errors import ServerError, ServerTimeoutError

from ..conftest import random_image

pytestmark = pytest.mark.triton

POINT = (np.array([[[20.0, 30.0]]], np.float32), np.array([[1]], np.int32))


@pytest.fixture(scope="module")
def own_server(tiny_repo, tmp_path_factory):
    """A server of this module's own: its model processes get killed."""
    from samrt.model_repository.server import TritonServer

    with TritonServer(tiny_repo, work_dir=str(tmp_path_factory.mktemp("resilience")), watchdog_interval=0.5) as srv:
        yield srv


def _kill_model_process(server, model: str) -> int:
    stubs = server.model_processes()
    name = f"{model}_0_0"
    assert name in stubs, sorted(stubs)
    os.kill(stubs[name], signal.SIGKILL)  # a stub of this test's own server (its parent PID is checked)
    return stubs[name]


def _until(fn, seconds: float):
    """fn() until it returns without a ServerError; the seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            fn()
            return time.monotonic() - t0
        except ServerError:
            if time.monotonic() - t0 > seconds:
                raise
            time.sleep(0.25)


def test_dead_postprocessing_step_is_restarted_and_the_cache_survives(own_server):
    """A step of the click ensemble dies (sam_mask_upscale): it is reloaded, and the same image_id
    decodes again without a new encode (the cache lives in another process). The masks are asked
    of the server itself (`SamClient.infer`): the SDK's decode makes them on the client."""
    from samrt import wire
    from samrt.client import SamClient
    from samrt.client._requests import Prompts, pack_decode

    with SamClient(own_server.grpc_url, retries=0) as c:
        image_id = c.encode(random_image(64, 80, seed=1)).image_id
        inputs = pack_decode(image_id, Prompts.check(*POINT))
        server_masks = lambda: c.infer(wire.SAM_DECODE.name, inputs, ["masks"], headers={wire.IMAGE_ID_HEADER: image_id})
        server_masks()
        old = _kill_model_process(own_server, "sam_mask_upscale")
        took = _until(server_masks, 60.0)
        assert took < 60.0
        assert own_server.model_processes()["sam_mask_upscale_0_0"] != old
        assert any(m == "sam_mask_upscale" for m, _ in own_server.restarts)
        assert own_server.is_ready()


def test_dead_decoder_process_is_restarted_and_images_are_encoded_again(own_server):
    """sam_mask_decoder holds the embedding cache: when it dies, it is reloaded empty; an old id
    answers NOT_FOUND (ImageNotCachedError, a ServerError) until the image is encoded again."""
    from samrt.client import SamClient

    image = random_image(64, 80, seed=2)
    with SamClient(own_server.grpc_url, retries=0) as c:
        image_id = c.encode(image).image_id
        c.decode(image_id, *POINT)
        _kill_model_process(own_server, "sam_mask_decoder")

        def encode_then_decode():
            c.decode(c.encode(image).image_id, *POINT)

        assert _until(encode_then_decode, 60.0) < 60.0
        assert any(m == "sam_mask_decoder" for m, _ in own_server.restarts)
        # the restarted cache is empty: the old id is unknown until encoded again (done above)
        c.decode(image_id, *POINT)


def test_readiness_does_not_lie_while_a_model_reloads(own_server):
    """Between the death and the end of the reload the model reports not ready, at most the
    watchdog's interval late; afterwards it is ready again."""
    import urllib.request

    def model_ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{own_server.http_url}/v2/models/sam_segment/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    before = len(own_server.restarts)
    _kill_model_process(own_server, "sam_segment")
    t0 = time.monotonic()
    while len(own_server.restarts) == before and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    assert len(own_server.restarts) == before + 1
    assert model_ready() and own_server.is_ready()


def test_an_admins_unload_is_not_undone_by_the_watchdog(own_server):
    """An unload through the repository API ends the model's stub too; Triton then reports the model
    not ready, so the watchdog leaves it unloaded (it reloads only models Triton still serves)
    until the admin loads it again."""
    import tritonclient.http as httpclient

    from samrt import wire

    c = httpclient.InferenceServerClient(own_server.http_url)
    key = wire.admin_headers("http", own_server.admin_key)
    before = len(own_server.restarts)
    c.unload_model("sam_mask_rle", headers=key)
    t0 = time.monotonic()
    while "sam_mask_rle_0_0" in own_server.model_processes() and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    time.sleep(4 * own_server.watchdog_interval)  # the watchdog looked at least three times
    assert "sam_mask_rle_0_0" not in own_server.model_processes()
    assert not c.is_model_ready("sam_mask_rle")
    assert len(own_server.restarts) == before, own_server.restarts
    c.load_model("sam_mask_rle", headers=key)
    assert c.is_model_ready("sam_mask_rle") and own_server.is_ready()


# -- abandoned automatic-mask jobs --
# ~10 s to the end on a quiet 2-core CPU (18 batches of 8 points); minutes when the machine is shared
JOB = dict(points_per_side=12, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _amg(url: str, protocol: str, image, timeout: float, **options):
    from samrt.client import SamClient, TritonSamAutomaticMaskGenerator

    with SamClient(url, protocol, timeout=timeout, retries=0) as c:
        return TritonSamAutomaticMaskGenerator(c, output_mode="coco_rle", **options).generate(image)


def _queue_wait(url: str) -> float:
    """Seconds a tiny AMG job takes now: sam_amg has one instance, so it waits for the job before."""
    t0 = time.monotonic()
    _amg(url, "grpc", random_image(32, 32, seed=9), 900.0, points_per_side=1)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def full_job(server):
    """The job's image and how long it takes when run to the end (its embedding already cached)."""
    image = random_image(300, 400, seed=5)
    _amg(server.grpc_url, "grpc", image, 300.0, points_per_side=1)  # encode once
    t0 = time.monotonic()
    records = _amg(server.grpc_url, "grpc", image, 900.0, **JOB)
    seconds = time.monotonic() - t0
    assert len(records) > 0
    return image, seconds


def test_abandoned_grpc_amg_job_is_cancelled_on_the_server(server, full_job):
    """A gRPC deadline (the SDK's timeout) cancels the request on the server: sam_amg stops at the
    next batch of points instead of computing the job to the end. (Over HTTP it does not: Triton
    2.51's HTTP frontend does not cancel a request whose connection closed; measured, see README.)"""
    image, full = full_job
    assert full > 3.0, f"the job must be long enough to tell: {full:.1f} s"
    t0 = time.monotonic()
    with pytest.raises(ServerTimeoutError):
        _amg(server.grpc_url, "grpc", image, 0.5, **JOB)
    waited = _queue_wait(server.grpc_url)
    total = time.monotonic() - t0
    print(f"full job {full:.1f} s; abandoned at 0.5 s, the next job waited {waited:.1f} s")
    assert total < 0.5 * full, (full, total)
