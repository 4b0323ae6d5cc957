"""The encode path under load, against the real tritonserver: encodes that arrive together run in
encoder batches (Triton's batch statistics), and a foreground encode is served before the
background ones already queued (Triton's request priorities, the SDK's `background=True`).

These use the embedded model's server (`small_server`): its encoder takes about a second here,
the tiny model's (1024 px input) several; the behaviour under test is the same for both."""

import threading
import time

import numpy as np
import pytest

from samrt.client import SamClient
from samrt.model_repository.render import RepoOptions

from ..conftest import random_image
from .test_server import _batches_by_size

pytestmark = pytest.mark.triton

ENCODER_BATCH = RepoOptions().encoder_max_batch  # also the number of sam_encode instances


def _concurrently(n, fn):
    """fn(k) for k in 0..n-1, each in its own thread, released together; returns their results."""
    results, start = [None] * n, threading.Barrier(n)

    def run(k):
        start.wait()
        results[k] = fn(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_encodes_that_arrive_together_run_in_batches(small_server):
    images = [random_image(240 + 8 * k, 320, seed=500 + k) for k in range(8)]   # new to the cache
    with SamClient(small_server.grpc_url) as c:
        before = _batches_by_size(c.statistics("sam_image_encoder"))
        clients = [SamClient(small_server.grpc_url) for _ in images]
        ids = _concurrently(8, lambda k: clients[k].encode(images[k]).image_id)
        after = _batches_by_size(c.statistics("sam_image_encoder"))
    grew = {size: after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    assert sum(size * n for size, n in grew.items()) == 8, grew          # every image encoded once, nothing else
    assert max(grew) > 1 and sum(grew.values()) < 8, f"encoder executions by batch size: {grew}"
    assert len(set(ids)) == 8
    for client in clients:
        client.close()


def test_a_foreground_encode_is_not_queued_behind_background_ones(small_server):
    """N background encodes in flight, then a foreground one: it waits for the encodes already
    running (at most one encoder batch, ENCODER_BATCH images) and shares its own batch with at most
    ENCODER_BATCH - 1 others; in first-come order it would finish after all N."""
    n = 6 * ENCODER_BATCH  # the OpenVINO bf16 encoder of the default path encodes this model in ~0.1 s
    background = [random_image(200, 260, seed=600 + k) for k in range(n)]
    foreground = random_image(200, 260, seed=699)
    finished = {}
    clients = [SamClient(small_server.grpc_url) for _ in range(n + 1)]

    def encode(k, image, background_work):
        clients[k].encode(image, background=background_work)
        finished[k] = time.monotonic()

    threads = [threading.Thread(target=encode, args=(k, background[k], True)) for k in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.2)   # all N queued (or running) before the foreground one is sent
    sent = time.monotonic()
    encode(n, foreground, False)
    for t in threads:
        t.join()
    done_before = sum(1 for k in range(n) if finished[k] < sent)  # finished before it was sent: not ahead of it
    waiting = n - done_before
    assert waiting > 2 * ENCODER_BATCH, f"only {waiting} background encodes were queued: the test shows nothing"
    ahead = sum(1 for k in range(n) if sent <= finished[k] < finished[n])
    assert ahead <= 2 * ENCODER_BATCH - 1, f"{ahead} of {waiting} queued background encodes finished before the foreground one"
    for c in clients:
        c.close()


def test_background_must_be_a_bool(small_server):
    from samrt.errors import InputError

    with SamClient(small_server.grpc_url) as c, pytest.raises(InputError, match="background: got 'yes'"):
        c.encode(np.zeros((8, 8, 3), np.uint8), background="yes")
