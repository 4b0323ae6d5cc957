"""Against the real tritonserver: what a client from outside may and may not do (issue "Shared
safely"). The embedding cache cannot be written from outside and an entry damaged inside is
repaired by encoding the image again; Triton's administrative APIs need the server's admin key;
points far outside the image are refused by the server."""

import os
import re
import stat
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from samrt import wire
from samrt.client import SamClient
from samrt.client._transport import error_from_exception
from samrt.errors import AccessDeniedError, InvalidRequestError

from ..conftest import random_image, settled_count

pytestmark = pytest.mark.triton

MODULES = {"grpc": grpcclient, "http": httpclient}


def _client(server, protocol):
    return MODULES[protocol].InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)


def _tensor(mod, name, array, dtype):
    t = mod.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def _typed(call):
    """What the SDK makes of the server's answer to `call()`: the typed error, or None."""
    try:
        call()
    except InferenceServerException as e:
        return error_from_exception(e, "test")
    return None


def _put(client, mod, image_id, embeddings, size, key=None):
    """A plain tritonclient put to the cache's owner, as the issue's attacker sent it."""
    inputs = [_tensor(mod, "image_id", np.array([[image_id.encode()]], dtype=object), "BYTES"),
              _tensor(mod, "image_embeddings", embeddings, "FP32"),
              _tensor(mod, "original_size", np.array([size], np.int32), "INT32")]
    if key is not None:
        inputs.append(_tensor(mod, "cache_key", np.array([[key.encode()]], dtype=object), "BYTES"))
    return client.infer(wire.SAM_MASK_DECODER.name, inputs, outputs=[mod.InferRequestedOutput("found")])


def _click(c, image_id):
    return c.decode(image_id, [[300, 200]], [1])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_client_can_write_the_cache(server, protocol):
    """The issue's attack: a put with a random embedding and a 10x10 size, without the internal
    key or with a guessed one, is refused (INVALID_ARG); the same click answers the same masks."""
    image = random_image(480, 640, seed=2501)
    with SamClient(server.grpc_url) as c:
        image_id = c.encode(image).image_id
        before = _click(c, image_id)
        poison = np.random.default_rng(0).normal(size=(1, 256, 64, 64)).astype(np.float32)
        client, mod = _client(server, protocol), MODULES[protocol]
        for key, how in [(None, "without"), ("0" * 32, "with a wrong")]:
            err = _typed(lambda: _put(client, mod, image_id, poison, (10, 10), key))
            assert isinstance(err, InvalidRequestError), err
            assert f"got a write to the embedding cache (image_embeddings) {how} internal key" in str(err)
        after = _click(c, image_id)
        assert after["masks"].shape == (1, 3, 480, 640)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k])
        assert c.image_size(image_id) == (480, 640)


def test_an_entry_is_not_replaced_and_a_damaged_one_is_repaired_by_encoding(server):
    """With the server's own key (what a bug inside the server could do): a second embedding for
    a cached image does not replace it; an entry whose size is wrong (the issue's 10x10 for a
    480x640 image) is found by the next encode of the image, which runs the encoder once and
    replaces it, and clicks answer as before."""
    image = random_image(480, 640, seed=2502)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with SamClient(server.grpc_url) as c:
        image_id = c.encode(image).image_id
        before = _click(c, image_id)
        other = np.random.default_rng(1).normal(size=(1, 256, 64, 64)).astype(np.float32)
        _put(client, grpcclient, image_id, other, (480, 640), server.cache_key)  # same image again: kept
        for k, v in _click(c, image_id).items():
            np.testing.assert_array_equal(v, before[k])
        _put(client, grpcclient, image_id, other, (10, 10), server.cache_key)  # damaged
        with SamClient(server.grpc_url) as fresh:  # the damage is real: the server holds 10x10
            assert fresh.image_size(image_id) == (10, 10)
            assert fresh.decode(image_id, [[5, 5]], [1])["masks"].shape == (1, 3, 10, 10)
        count = lambda: int(c.statistics("sam_image_encoder").get("inference_count", 0))
        encoded = settled_count(count, 0)
        assert c.encode(image).original_size == (480, 640)
        assert settled_count(count, encoded + 1) == encoded + 1  # the encoder ran again: repaired
        with SamClient(server.grpc_url) as fresh:  # a client that does not know the size asks the server
            assert fresh.image_size(image_id) == (480, 640)
            after = _click(fresh, image_id)
        assert after["masks"].shape == (1, 3, 480, 640)
        np.testing.assert_array_equal(after["masks"], before["masks"])
        np.testing.assert_allclose(after["iou_predictions"], before["iou_predictions"], atol=1e-6)


# Administrative calls of tritonclient, each with the API group it belongs to (Triton's names).
ADMIN_CALLS = {
    "model-repository": lambda c, h: c.get_model_repository_index(headers=h),
    "shared-memory": lambda c, h: c.get_system_shared_memory_status(headers=h),
    "trace": lambda c, h: c.get_trace_settings(headers=h),
    "logging": lambda c, h: c.get_log_settings(headers=h),
}
OPEN_CALLS = {
    "health": lambda c: c.is_server_ready(),
    "metadata": lambda c: c.get_model_metadata(wire.SAM_DECODE.name),
    "model-config": lambda c: c.get_model_config(wire.SAM_DECODE.name),
    "statistics": lambda c: c.get_inference_statistics(wire.SAM_DECODE.name),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_administrative_apis_need_the_admin_key(server, protocol):
    client = _client(server, protocol)
    assert set(ADMIN_CALLS) == set(wire.RESTRICTED_APIS)
    for api, call in ADMIN_CALLS.items():
        for headers in (None, wire.admin_headers(protocol, "0" * 32)):
            err = _typed(lambda: call(client, headers))
            assert isinstance(err, AccessDeniedError), (api, headers, err)
        call(client, wire.admin_headers(protocol, server.admin_key))  # answers with the key
    mod = MODULES[protocol]
    load = lambda h: client.load_model(wire.SAM_MASK_UPSCALE.name, headers=h)  # the model as it is: allowed with the key
    assert isinstance(_typed(lambda: load(None)), AccessDeniedError)
    # a name the server does not serve: refused for the key before the name is looked at, harmless otherwise
    assert isinstance(_typed(lambda: client.unload_model("no_such_model")), AccessDeniedError)
    load(wire.admin_headers(protocol, server.admin_key))
    # the load re-checks the ensembles that use the model: sam_decode can answer "no available
    # versions" for a moment after it (seen once in a full run)
    deadline = time.monotonic() + 30
    while not client.is_model_ready(wire.SAM_DECODE.name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.is_model_ready(wire.SAM_DECODE.name), "sam_decode not ready 30 s after the load"
    for api, call in OPEN_CALLS.items():  # what every client needs stays open
        assert call(client) is not None, api
    image = np.zeros((32, 32, 3), np.uint8)
    assert client.infer(wire.SAM_ENCODE.name, [_tensor(mod, "image", image, "UINT8")]).as_numpy("image_id") is not None
    with SamClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol) as c:
        assert c.model_info()["max_prompts"] > 0 and c.is_ready()


def test_the_admin_key_file_is_the_users_alone(server):
    mode = os.stat(server.admin_key_path).st_mode
    assert stat.S_IMODE(mode) == 0o600
    with open(server.admin_key_path) as f:
        assert f.read().strip() == server.admin_key


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_without_the_admin_key_is_access_denied(server, protocol, monkeypatch):
    monkeypatch.delenv(wire.ADMIN_KEY_ENV, raising=False)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with SamClient(url, protocol, shared_memory=True, retries=3, backoff=5.0) as c:
        with pytest.raises(AccessDeniedError, match="admin_key="):  # at once: never retried (backoff 5 s)
            c.encode(random_image(40, 50, seed=2503))
    monkeypatch.setenv(wire.ADMIN_KEY_ENV, server.admin_key)  # the environment gives the key too
    with SamClient(url, protocol, shared_memory=True) as c:
        assert c.encode(random_image(40, 50, seed=2503)).original_size == (40, 50)


def _raw_decode(c, image_id, point):
    return c.infer(wire.SAM_DECODE.name, {"image_id": (np.array([[image_id.encode()]], dtype=object), "BYTES"),
                                          "point_coords": (np.asarray([[point]], np.float32), "FP32"),
                                          "point_labels": (np.asarray([[1]], np.int32), "INT32")}, ["masks"])


@pytest.mark.parametrize("point", [(5000.0, 10.0), (-641.0, 10.0), (10.0, 961.0)])
def test_points_far_outside_the_image_are_refused_by_the_server(client, point):
    image_id = client.encode(random_image(480, 640, seed=2504)).image_id
    want = (rf"point_coords: got \({point[0]:g}, {point[1]:g}\), more than the image's size outside a 480x640 "
            r"\(HxW\) image, expected x in \[-640, 1280\] and y in \[-480, 960\]")
    with pytest.raises(InvalidRequestError, match=want):
        _raw_decode(client, image_id, point)  # raw: the SDK refuses it before sending
    with pytest.raises(InvalidRequestError, match=want):  # sam_segment knows the size from its image
        client.infer(wire.SAM_SEGMENT.name, {"image": (random_image(480, 640, seed=2504), "UINT8"),
                                             "point_coords": (np.asarray([point], np.float32), "FP32"),
                                             "point_labels": (np.asarray([1], np.int32), "INT32")}, ["masks"])
    assert _raw_decode(client, image_id, (1279.0, -479.0))["masks"].shape == (1, 3, 480, 640)  # near: answered
    assert _raw_decode(client, image_id, (0.5, 0.5))["masks"].shape == (1, 3, 480, 640)  # the server never guesses


def test_a_bad_put_from_inside_gets_its_error_and_the_server_goes_on(server, client):
    """Puts with the server's own key but malformed tensors: each refused with INVALID_ARG (the
    owner checks them against the served model), and the server goes on."""
    mod = MODULES[client.protocol]
    raw = mod.InferenceServerClient(client.url)
    cases = [(np.zeros((1, 3, 4, 4), np.float32), (4, 4), "unexpected shape"),  # Triton's own check
             (np.zeros((1, 256, 64, 64), np.float32), (0, 7), r"original_size: got \[0, 7\], expected \(H, W\)"),
             (np.full((1, 256, 64, 64), np.nan, np.float32), (4, 4), "image_embeddings: got non-finite values")]
    for emb, size, match in cases:
        err = _typed(lambda: _put(raw, mod, "x" * 32, emb, size, server.cache_key))
        assert isinstance(err, InvalidRequestError) and re.search(match, str(err)), err
    assert client.encode(random_image(30, 40, seed=2505)).original_size == (30, 40)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sam_segment_checks_the_mask_prompt_itself(server, protocol):
    """A mask_input with a logit of 1e9 through sam_segment: INVALID_ARG naming the bound (the fuzz
    test found it arriving untyped, from sam_decode behind BLS), and the server goes on."""
    from samrt.errors import InvalidRequestError

    client, mod = _client(server, protocol), MODULES[protocol]
    image = random_image(40, 30, seed=3)
    mask = np.zeros((1, 256, 256), np.float32)
    mask[0, 5, 5] = 1e9
    inputs = [_tensor(mod, "image", image, "UINT8"),
              _tensor(mod, "point_coords", np.array([[10.0, 10.0]], np.float32), "FP32"),
              _tensor(mod, "point_labels", np.array([1], np.int32), "INT32"),
              _tensor(mod, "mask_input", mask, "FP32")]
    err = _typed(lambda: client.infer(wire.SAM_SEGMENT.name, inputs))
    assert isinstance(err, InvalidRequestError) and "mask_input: got a logit of magnitude 1e+09" in str(err), err
    mask[0, 5, 5] = 3.0  # the same request within the bound is answered
    inputs[3] = _tensor(mod, "mask_input", mask, "FP32")
    assert client.infer(wire.SAM_SEGMENT.name, inputs).as_numpy("masks").shape == (3, 40, 30)  # multimask by default
