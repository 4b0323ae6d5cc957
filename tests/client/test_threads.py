"""One client, many callers: 8 threads on one SamClient (gRPC, HTTP, each with and without shared
memory) and many tasks on one AsyncSamClient, each caller encoding its own image and clicking;
every answer equals the same request made serially. Timeouts fire for every thread. Shared-memory
registrations are gone when the client closes, when its process exits without closing, and, for
a killed process, at the next client's first request (or `release_stale_regions`)."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from samrt import processing as P
from samrt import wire
from samrt.client import (AsyncSamClient, SamClient, ServerTimeoutError, TritonSamPredictor,
                          release_stale_regions)
from samrt.client._shm import PREFIX, SHM_DIR

from ..conftest import ENTRY_BYTES, MAX_PIXELS, MAX_PROMPTS, random_image

N_THREADS = 8
ROUNDS = 2
CLICKS = [[[12, 14]], [[30, 9], [5, 33]], [[20, 20]]]  # one prompt each: a click, two points, a click
LABELS = [[1], [1, 0], [1]]
# Answers computed in one batch or another differ by float rounding (1.5e-7 seen in the logits);
# a mask pixel may flip only where the serial answer's logit is this close to the threshold.
LOGIT_ATOL = 1e-4
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def roomy_server(tiny_export, tiny_cfg, tmp_path_factory):
    """conftest's tiny model with a cache that holds every image of the module (the shared
    server's holds 3, for eviction tests)."""
    from samrt.model_repository.render import RepoOptions, render_repository
    from samrt.model_repository.server import TritonServer

    out = str(tmp_path_factory.mktemp("threads") / "repo")
    opts = RepoOptions(cache_bytes=4 * N_THREADS * ENTRY_BYTES, max_pixels=MAX_PIXELS, max_prompts=MAX_PROMPTS)
    repo = render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, out, opts)
    with TritonServer(repo) as srv:
        yield srv


def url_of(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.fixture(scope="module")
def images():
    """One image per thread, each of its own size, so that another thread's answer cannot fit."""
    return [random_image(48 + 6 * i, 72 - 3 * i, seed=300 + i) for i in range(N_THREADS)]


def clicks(client, image):
    """What one caller does: encode its image, then each click in turn."""
    enc = client.encode(image)
    return enc, [client.decode(enc.image_id, c, l) for c, l in zip(CLICKS, LABELS)]


@pytest.fixture(scope="module")
def serial(roomy_server, images):
    """The answers of one client, one request at a time, with the full-size logits the masks come from."""
    with SamClient(roomy_server.grpc_url) as c:
        image_size = c.model_info()["image_size"]
        out = []
        for image in images:
            enc, answers = clicks(c, image)
            input_size = P.get_preprocess_shape(*enc.original_size, image_size)
            logits = [P.upscale_masks(a["low_res_masks"], input_size, enc.original_size, image_size) for a in answers]
            out.append((enc, answers, logits))
        return out


def assert_same(got, want, who):
    enc, answers = got
    want_enc, want_answers, want_logits = want
    assert enc == want_enc, f"{who}: encoded as {enc}, expected {want_enc}"
    for k, (a, b, logits) in enumerate(zip(answers, want_answers, want_logits)):
        assert a["masks"].shape == b["masks"].shape, f"{who} click {k}: another image's answer"
        np.testing.assert_allclose(a["iou_predictions"], b["iou_predictions"], atol=SCORE_ATOL, err_msg=f"{who} click {k}")
        np.testing.assert_allclose(a["low_res_masks"], b["low_res_masks"], atol=LOGIT_ATOL, err_msg=f"{who} click {k}")
        flipped = (a["masks"] != b["masks"]) & (np.abs(logits) >= LOGIT_ATOL)
        assert not flipped.any(), f"{who} click {k}: {int(flipped.sum())} mask pixels differ away from the threshold"


def run_threads(target, n=N_THREADS, limit=300.0):
    """target(i) on n threads started together; returns {i: result}, re-raising the first error.
    Fails (instead of hanging) when a thread is still running after `limit` seconds."""
    results, errors = {}, []
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as e:  # re-raised below, on the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    deadline = time.monotonic() + limit
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    assert stuck == 0, f"{stuck} of {n} threads still blocked after {limit:.0f} s (deadlock)"
    if errors:
        raise errors[0]
    return results


def our_regions(server, protocol, pid):
    """Names of the system shared-memory regions the server holds for process `pid`'s clients."""
    from samrt.client._endpoints import Connection, ServerShm

    conn = Connection(url_of(server, protocol), protocol, 30.0, 0, 0.0)
    try:
        return sorted(n for n, _ in ServerShm(conn, server.admin_key).status() if n.startswith(f"{PREFIX}{pid}_"))
    finally:
        conn.close()


def our_files(pid):
    return sorted(f for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{pid}_")) if os.path.isdir(SHM_DIR) else []


@pytest.mark.triton
@pytest.mark.parametrize("protocol,shm", [("grpc", False), ("http", False), ("grpc", True), ("http", True)],
                         ids=["grpc", "http", "grpc-shm", "http-shm"])
def test_one_client_many_threads(roomy_server, images, serial, protocol, shm):
    url = url_of(roomy_server, protocol)
    client = SamClient(url, protocol, timeout=120, shared_memory=shm, admin_key=roomy_server.admin_key)
    try:
        results = run_threads(lambda i: [clicks(client, images[i]) for _ in range(ROUNDS)])
        for i, rounds in results.items():
            for r, got in enumerate(rounds):
                assert_same(got, serial[i], f"thread {i} round {r}")
        if shm:  # the regions really were used: as many as requests were in flight at once, at most
            assert 1 <= len(our_regions(roomy_server, protocol, os.getpid())) <= N_THREADS
    finally:
        client.close()
    assert our_regions(roomy_server, protocol, os.getpid()) == [] and our_files(os.getpid()) == []


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_one_async_client_many_tasks(roomy_server, images, serial, protocol):
    async def one(client, image):
        enc = await client.encode(image)
        return enc, [await client.decode(enc.image_id, c, l) for c, l in zip(CLICKS, LABELS)]

    async def main():
        async with AsyncSamClient(url_of(roomy_server, protocol), protocol) as client:
            return await asyncio.gather(*[one(client, images[i % N_THREADS]) for i in range(ROUNDS * N_THREADS)])

    for i, got in enumerate(asyncio.run(main())):
        assert_same(got, serial[i % N_THREADS], f"task {i}")


@contextlib.contextmanager
def black_hole():
    """A TCP port that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.1)
    conns, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(socket.timeout):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_timeout_fires_for_every_thread(protocol):
    """8 threads on one client of a server that never answers: each gets ServerTimeoutError after
    about `timeout` seconds (the bound leaves room for a loaded machine), none blocks."""
    timeout, bound = 1.0, 15.0
    with black_hole() as url, SamClient(url, protocol, timeout=timeout, retries=2) as client:
        def attempt(i):
            t0 = time.monotonic()
            with pytest.raises(ServerTimeoutError):
                client.encode(random_image(16, 16, seed=i))
            return time.monotonic() - t0

        waited = run_threads(attempt, limit=3 * bound)
    assert all(timeout * 0.9 <= s < bound for s in waited.values()), waited


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_timeout_fires_for_every_task(protocol):
    """AsyncSamClient: 8 tasks on one client of a server that never answers, each times out."""
    timeout, bound = 1.0, 15.0

    async def attempt(client, i):
        t0 = time.monotonic()
        with pytest.raises(ServerTimeoutError):
            await client.encode(random_image(16, 16, seed=i))
        return time.monotonic() - t0

    async def main(url):
        async with AsyncSamClient(url, protocol, timeout=timeout, retries=2) as client:
            return await asyncio.wait_for(asyncio.gather(*[attempt(client, i) for i in range(N_THREADS)]), 3 * bound)

    with black_hole() as url:
        waited = asyncio.run(main(url))
    assert all(timeout * 0.9 <= s < bound for s in waited), waited


def run_client_process(server, protocol, then):
    """A Python process that clicks once through SamClient(shared_memory=True), prints its pid,
    then does `then` ("sleep": waits to be killed; "exit": returns without close()). It has the
    server's admin key from the environment (SAMRT_ADMIN_KEY), as a deployment would give it."""
    url = url_of(server, protocol)
    code = textwrap.dedent(f"""
        import os, time
        import numpy as np
        from samrt.client import SamClient
        client = SamClient({url!r}, {protocol!r}, shared_memory=True)
        image = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
        client.decode(client.encode(image).image_id, [[10, 10]], [1])
        print(os.getpid(), flush=True)
        if {then!r} == "sleep":
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, wire.ADMIN_KEY_ENV: server.admin_key})
    pid = int(proc.stdout.readline())
    return proc, pid


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_process_that_exits_without_close_leaves_nothing_registered(roomy_server, protocol):
    proc, pid = run_client_process(roomy_server, protocol, "exit")
    assert proc.wait(timeout=120) == 0
    assert our_regions(roomy_server, protocol, pid) == [] and our_files(pid) == []  # at once: unregistered at exit


@pytest.mark.triton
@pytest.mark.parametrize("sweeper", ["next client", "release_stale_regions"])
def test_a_killed_client_leaves_nothing_registered_for_long(roomy_server, sweeper):
    """SIGKILL runs no exit handler: its regions stay registered until the next shared-memory
    client's first request (or release_stale_regions) finds that no process holds them."""
    url, key = roomy_server.grpc_url, roomy_server.admin_key
    proc, pid = run_client_process(roomy_server, "grpc", "sleep")
    left = our_regions(roomy_server, "grpc", pid)
    assert left, "the client process registered no region: nothing to test"
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert our_regions(roomy_server, "grpc", pid) == left  # still registered: the dead cannot clean up
    if sweeper == "next client":
        with SamClient(url, shared_memory=True, admin_key=key) as c:
            c.encode(random_image(20, 20, seed=5))
            assert set(left) <= set(c.replicas[0].pool.released)
    else:
        assert set(left) <= set(release_stale_regions(url, admin_key=key))
    assert our_regions(roomy_server, "grpc", pid) == [] and our_files(pid) == []


class SlowClient:
    """What TritonSamPredictor asks of a SamClient, with an encode slow enough for two threads to meet."""

    def model_info(self):
        return {"image_size": 64, "low_res_size": 16, "max_prompts": 0}

    def encode(self, image):
        from samrt.client import EncodeResult

        time.sleep(0.3)
        return EncodeResult(f"id{int(image[0, 0, 0])}", image.shape[:2])


def test_a_predictor_shared_by_threads_warns():
    predictor = TritonSamPredictor(SlowClient())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor.set_image(np.zeros((8, 8, 3), np.uint8))  # one thread: no warning
        assert not caught
        run_threads(lambda i: predictor.set_image(np.full((8, 8, 3), i, np.uint8)), n=2)
    assert any(issubclass(w.category, RuntimeWarning) and "SamClient.decode(image_id" in str(w.message) for w in caught)
