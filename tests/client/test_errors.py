"""Errors cross the wire as codes: the server answers INVALID_ARG / NOT_FOUND, the SDK maps the
code (not the message) to its typed errors over gRPC and HTTP; a deadline is a timeout, never
retried."""

import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from samrt.client import (AccessDeniedError, ImageNotCachedError, InvalidRequestError, SamClient, ServerError, ServerTimeoutError,
                          ServerUnavailableError, TritonSamAutomaticMaskGenerator)
from samrt.client._transport import Retry, error_from_exception
from samrt.errors import InputError

from ..conftest import CACHE_ENTRIES, random_image


@pytest.mark.parametrize("status,cls", [
    ("StatusCode.INVALID_ARGUMENT", InvalidRequestError), ("400", InvalidRequestError),
    ("StatusCode.UNAVAILABLE", ServerUnavailableError), ("503", ServerUnavailableError),
    ("StatusCode.DEADLINE_EXCEEDED", ServerTimeoutError), ("StatusCode.INTERNAL", ServerError),
])
def test_codes_map_to_typed_errors(status, cls):
    err = error_from_exception(InferenceServerException("whatever the text says: not in the embedding cache",
                                                        status=status), "here")
    assert type(err) is cls and err.code == status
    assert type(error_from_exception(InferenceServerException("x", status="404"), "here", ImageNotCachedError)) \
        is ImageNotCachedError
    assert type(error_from_exception(InferenceServerException("x", status="404"), "here")) is ServerError


@pytest.mark.parametrize("message,status", [
    ("Request for unknown model: 'sam_decode' has no available versions", "StatusCode.NOT_FOUND"),
    ("Request for unknown model: 'sam_decode' has no available versions", "404"),
    ("Failed to process the request(s) for model 'sam_mask_upscale_0_0', message: Stub process "
     "'sam_mask_upscale_0_0' is not healthy.", "StatusCode.INTERNAL"),
])
def test_a_reloading_model_is_unavailable_not_an_evicted_image(message, status):
    """Measured while the launcher's watchdog reloads a dead step of the click ensemble: Triton's
    own texts, retried as unavailable (not ImageNotCachedError, which would re-encode)."""
    err = error_from_exception(InferenceServerException(message, status=status), "here", ImageNotCachedError)
    assert type(err) is ServerUnavailableError


@pytest.mark.parametrize("message,status", [
    ("This protocol is restricted, expecting header 'triton-grpc-protocol-samrt-admin-key'", "StatusCode.UNAVAILABLE"),
    ("This API is restricted, expecting header 'samrt-admin-key'", "403"),
])
def test_a_restricted_api_is_access_denied_not_unavailable(message, status):
    """Triton 2.51's answers to an administrative API without the admin key (measured): gRPC says
    UNAVAILABLE, which must not be retried as a server that is down."""
    err = error_from_exception(InferenceServerException(message, status=status), "here")
    assert type(err) is AccessDeniedError and "admin_key=" in str(err) and "SAMRT_ADMIN_KEY" in str(err)
    with pytest.raises(AccessDeniedError):
        Retry(5, 0.1, "here").failed(InferenceServerException(message, status=status))


def test_retry_policy():
    lost = ConnectionRefusedError("refused")
    retry = Retry(retries=2, backoff=0.1, where="here")
    assert [retry.failed(lost), retry.failed(lost)] == [0.1, 0.2]
    with pytest.raises(ServerUnavailableError):
        retry.failed(lost)
    with pytest.raises(ServerTimeoutError):  # a deadline is never retried
        Retry(5, 0.1, "here").failed(InferenceServerException("deadline", status="StatusCode.DEADLINE_EXCEEDED"))
    with pytest.raises(ServerUnavailableError):  # not idempotent: no retry at all
        Retry(5, 0.1, "here", idempotent=False).failed(lost)


pytestmark_server = pytest.mark.triton


@pytest.mark.triton
def test_server_codes_arrive_over_both_protocols(client):
    image_id = client.encode(random_image(64, 64, seed=70)).image_id
    with pytest.raises(InputError, match=r"point_labels: got \[5\], expected values in"):
        client.decode(image_id, [[1.0, 1.0]], [5])  # refused before it is sent, in the server's words
    with pytest.raises(InvalidRequestError) as bad:  # sent anyway, the server refuses it with its code
        client.infer("sam_decode", {"image_id": (np.array([[image_id.encode()]], dtype=object), "BYTES"),
                                    "point_coords": (np.ones((1, 1, 2), np.float32), "FP32"),
                                    "point_labels": (np.array([[5]], np.int32), "INT32")}, ["iou_predictions"])
    assert bad.value.code in ("StatusCode.INVALID_ARGUMENT", "400")
    with pytest.raises(InvalidRequestError):
        client.infer("sam_encode", {"image": (np.zeros((0, 0, 3), np.uint8), "UINT8")}, ["image_id"])
    ids = [client.encode(random_image(32, 32, seed=700 + i)).image_id for i in range(CACHE_ENTRIES + 1)]
    with pytest.raises(ImageNotCachedError) as gone:
        client.decode(ids[0], [[5, 5]], [1])
    assert gone.value.code in ("StatusCode.NOT_FOUND", "404")


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_timeout_is_not_retried(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    image = random_image(200, 200, seed=71)
    with SamClient(server.grpc_url) as c:
        c.encode(image)  # embedded already: the request below is decode work only
        before = c.statistics("sam_amg")["inference_stats"]
    slow = SamClient(url, protocol, timeout=0.3, retries=3, backoff=0.01)
    t0 = time.perf_counter()
    with pytest.raises(ServerTimeoutError):
        TritonSamAutomaticMaskGenerator(slow, points_per_side=24, pred_iou_thresh=0, stability_score_thresh=0).generate(image)
    assert time.perf_counter() - t0 < 5
    slow.close()
    with SamClient(server.grpc_url) as c:  # wait for the abandoned job, then count what the server ran
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = c.statistics("sam_amg")["inference_stats"]
            done = lambda s: s.get("success", {}).get("count", 0) + s.get("fail", {}).get("count", 0)
            if done(after) > done(before):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        after = c.statistics("sam_amg")["inference_stats"]
    ran = done(after) - done(before)
    assert ran == 1, f"the server ran the abandoned job {ran} times, expected once (no retries)"
