"""client._routing without a server: the ring's choices, health, failover, merged statistics."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from samrt import wire
from samrt.client import (ImageNotCachedError, InvalidRequestError, ServerError, ServerTimeoutError,
                          ServerUnavailableError)
from samrt.client._routing import Ring, Route, acall, call, merge_statistics, routing_id, split_urls
from samrt.errors import InputError

from ..conftest import random_image

URLS = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
KEYS = [f"{i:032x}" for i in range(3000)]


def test_split_urls():
    assert split_urls("h1:8001") == ["h1:8001"]
    assert split_urls("http://h1:8000,h2:8000", "http") == ["h1:8000", "h2:8000"]   # its own scheme: dropped
    assert split_urls("grpc://h1:8001", "grpc") == ["h1:8001"]
    with pytest.raises(InputError, match="an http URL, expected host:port of the grpc endpoint"):
        split_urls("http://h1:8001", "grpc")
    assert split_urls(" h1:8001, h2:8001 ,") == ["h1:8001", "h2:8001"]
    assert split_urls(("h1:1", "h2:2")) == ["h1:1", "h2:2"]
    with pytest.raises(InputError, match="expected host:port"):
        split_urls(" , ")
    with pytest.raises(InputError, match="each replica once"):
        split_urls("h1:1,h1:1")


def test_ring_spreads_keys_and_ignores_url_order():
    ring = Ring(URLS)
    owners = [ring.pick(k) for k in KEYS]
    counts = np.bincount(owners, minlength=3)
    assert counts.min() > 0.28 * len(KEYS), counts  # about a third each
    shuffled = Ring(URLS[::-1])
    assert all(URLS[ring.pick(k)] == shuffled.urls[shuffled.pick(k)] for k in KEYS)


def test_a_replica_leaving_moves_only_its_keys():
    full, without = Ring(URLS), Ring(URLS[:1] + URLS[2:])
    for k in KEYS:
        owner = URLS[full.pick(k)]
        moved_to = without.urls[without.pick(k)]
        if owner != URLS[1]:
            assert moved_to == owner
        else:  # to the key's second choice
            assert moved_to == URLS[full.order(k)[1]]


def test_down_replica_is_skipped_then_tried_again():
    now = [0.0]
    ring = Ring(URLS, down_for=10.0, clock=lambda: now[0])
    key = next(k for k in KEYS if ring.pick(k) == 1)
    ring.mark_down(1)
    assert ring.pick(key) == ring.order(key)[1] and ring.down() == [URLS[1]]
    assert ring.candidates(key)[-1] == 1  # still a last resort
    now[0] = 10.0
    assert ring.pick(key) == 1 and ring.down() == []


class FakeReplica:
    def __init__(self, name, fail=None, ready=True):
        self.name, self.fail, self.calls, self.ready = name, fail, 0, ready

    def is_ready(self):
        return self.ready

    def answer(self):
        self.calls += 1
        if self.fail:
            raise self.fail
        return self.name


def test_call_fails_over_on_unavailable_only():
    ring = Ring(URLS, down_for=60.0)
    key = KEYS[0]
    first, second, third = ring.order(key)
    reps = [FakeReplica(u) for u in URLS]
    reps[first].fail = ServerUnavailableError("refused", "connection")
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[second]
    assert ring.down() == [URLS[first]]
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[second]
    assert reps[first].calls == 1  # marked down: not asked again
    reps[second].fail = ImageNotCachedError("unknown image", "StatusCode.NOT_FOUND")
    with pytest.raises(ImageNotCachedError):  # from a ready replica: its answer, as it is
        call(ring, reps, key, lambda i, c: c.answer())
    reps[second].fail = ServerError("Request for unknown model", "StatusCode.NOT_FOUND")
    reps[second].ready = False  # a replica shutting down: down, like one that refuses
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[third]
    assert set(ring.down()) == {URLS[first], URLS[second]}
    reps[third].fail = InvalidRequestError("bad prompt", "StatusCode.INVALID_ARGUMENT")
    reps[third].ready = False
    with pytest.raises(InvalidRequestError):  # the request's fault: no probe, no failover
        call(ring, reps, key, lambda i, c: c.answer())
    for r in reps:
        r.fail = ServerUnavailableError("refused", "connection")
    with pytest.raises(ServerUnavailableError, match="all 3 replicas unavailable"):
        call(ring, reps, key, lambda i, c: c.answer())


def test_acall_fails_over():
    ring = Ring(URLS)
    key = KEYS[1]
    reps = [FakeReplica(u) for u in URLS]
    reps[ring.pick(key)].fail = ServerUnavailableError("refused", "connection")

    async def answer(i, c):
        return c.answer()

    assert asyncio.run(acall(ring, reps, key, answer)) == URLS[ring.order(key)[1]]


UNAVAILABLE = ServerUnavailableError("refused", "connection")
NOT_CACHED = ImageNotCachedError("unknown image", "StatusCode.NOT_FOUND")
RELOADING = ServerError("Request for unknown model", "StatusCode.NOT_FOUND")
BAD = InvalidRequestError("bad prompt", "StatusCode.INVALID_ARGUMENT")
LATE = ServerTimeoutError("deadline", "StatusCode.DEADLINE_EXCEEDED")


@pytest.mark.parametrize("error,ready,outcome", [
    (UNAVAILABLE, None, "down"),      # no connection after its own retries: the next replica
    (BAD, None, "raise"),             # the request's fault: no probe, no failover
    (LATE, None, "raise"),            # the replica may still be computing: never sent again
    (NOT_CACHED, True, "raise"),      # a ready replica's answer stands (the predictor encodes again)
    (NOT_CACHED, False, "down"),      # from a replica that is not ready: it is stopping
    (RELOADING, False, "down"),
    (RELOADING, True, "raise"),
])
def test_route_decides_each_outcome_once(error, ready, outcome):
    """The decisions both clients share (call and acall only drive a Route)."""
    ring = Ring(URLS)
    route = Route(ring, KEYS[0])
    first = next(iter(route))
    try:
        probe = route.failed(first, error)
        if probe:
            assert ready is not None, "a probe where none is needed"
            route.probed(first, error, ready)
        else:
            assert ready is None, "no probe where readiness decides"
        got = "down"
    except ServerError as e:
        assert e is error
        got = "raise"
    assert got == outcome
    assert ring.down() == ([URLS[first]] if outcome == "down" else [])
    assert len(route.errors) == (outcome == "down")


def test_one_replica_gives_every_error_as_it_is():
    ring = Ring(URLS[:1])
    for error in (UNAVAILABLE, RELOADING, NOT_CACHED):
        rep = FakeReplica(URLS[0], fail=error, ready=False)
        with pytest.raises(type(error)) as e:
            call(ring, [rep], KEYS[0], lambda i, c: c.answer())
        assert e.value is error and rep.calls == 1
    assert ring.down() == []


def test_a_replica_rejoins_when_it_answers_after_down_for():
    now = [0.0]
    ring = Ring(URLS, down_for=10.0, clock=lambda: now[0])
    key = KEYS[2]
    first, second, _ = ring.order(key)
    reps = [FakeReplica(u) for u in URLS]
    reps[first].fail = UNAVAILABLE
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[second]
    reps[first].fail = None  # back, but not asked before down_for has passed
    now[0] = 5.0
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[second] and reps[first].calls == 1
    now[0] = 10.0
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[first] and ring.down() == []
    reps[first].fail = UNAVAILABLE  # gone again after it rejoined: down again, its keys move again
    assert call(ring, reps, key, lambda i, c: c.answer()) == URLS[second] and ring.down() == [URLS[first]]


def test_routing_id_is_the_servers_id_for_pixels_and_bytes():
    image = random_image(40, 30, seed=3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    assert routing_id(image) == wire.image_id_of(image)
    assert routing_id(image_bytes=buf.getvalue()) == wire.image_id_of(image)
    assert routing_id(image_bytes=b"not an image") is None  # the server says why


def test_merge_statistics_sums_counts():
    a = {"name": "m", "version": 1, "last_inference": 5, "inference_count": 3,
         "inference_stats": {"success": {"count": 3, "ns": 30}},
         "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 3, "ns": 9}}]}
    b = {"name": "m", "version": 1, "last_inference": 7, "inference_count": 2,
         "inference_stats": {"success": {"count": 2, "ns": 20}},
         "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 1}},
                         {"batch_size": 2, "compute_infer": {"count": 1, "ns": 4}}]}
    m = merge_statistics([a, b])
    assert m["name"] == "m" and m["version"] == 1 and m["last_inference"] == 7 and m["inference_count"] == 5
    assert m["inference_stats"]["success"] == {"count": 5, "ns": 50}
    assert m["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 4, "ns": 10}},
                                {"batch_size": 2, "compute_infer": {"count": 1, "ns": 4}}]
    with pytest.raises(ServerUnavailableError):
        merge_statistics([])
