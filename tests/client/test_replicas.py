"""Three tritonservers on loopback, 8 concurrent SDK clients, 60 images: each image is encoded
once across the replicas, answers equal a single server's, and a replica stopped mid-run costs
only its own images one more encode. Routed by the SDK (`SamClient([...])`), then by NGINX on
the `x-samrt-image-id` header (gRPC fully; HTTP: encode and decode meet)."""

import asyncio
import dataclasses
import os
import queue
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from samrt import wire
from samrt.model_repository.nginx import nginx_config
from samrt.client import AsyncSamClient, SamClient, TritonSamPredictor
from samrt.client._routing import Ring
from samrt.model_repository.render import RepoOptions, render_repository
from samrt.spec import get_config

from ..conftest import MAX_PIXELS, random_image
from ..test_readme import _block

pytestmark = [pytest.mark.triton, pytest.mark.slow]

N_IMAGES, N_CLIENTS, SIDE = 60, 8, 64
ENCODER = "sam_image_encoder"


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory):
    """conftest's tiny model at a 256 px input (not 1024), with a cache that holds every image of
    the test. Three servers at once on a shared 24 GB machine: at 1024 px each encoder stub's
    ONNX Runtime took 1.7 GB and the OOM killer stopped them; at 256 px the encoder is small."""
    from samrt.export import export_sam, random_sam

    cfg = dataclasses.replace(get_config("tiny"), image_size=256)
    out = tmp_path_factory.mktemp("replicas")
    export = export_sam(random_sam(cfg, seed=0), cfg, str(out / "export"), random_init=True)
    embedding_bytes = cfg.prompt_embed_dim * cfg.embedding_size ** 2 * 4
    opts = RepoOptions(cache_bytes=2 * N_IMAGES * embedding_bytes, max_pixels=MAX_PIXELS, max_prompts=N_CLIENTS,
                       encoder_max_batch=1)
    return render_repository(cfg, export.encoder_path, export.decoder_path, str(out / "repo"), opts)


@pytest.fixture
def replicas(small_repo, tmp_path):
    from samrt.model_repository.server import TritonServer

    servers = [TritonServer(small_repo, work_dir=str(tmp_path / f"replica{i}")) for i in range(3)]
    try:
        for s in servers:  # one after the other: concurrent copies of the binary race with exec (ETXTBSY)
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def images():
    return [random_image(SIDE, SIDE, seed=1000 + i) for i in range(N_IMAGES)]


def click(i):
    return np.array([[8 + i % 48, 40 - i % 32]]), np.array([1])


def encoder_counts(servers):
    """{url: sam_image_encoder's inference count} straight from each live server. Triton counts a
    request after its response has left, so wait a moment for the last ones to be counted."""
    time.sleep(0.5)
    out = {}
    for s in servers:
        if s.process is not None:
            with SamClient(s.grpc_url) as c:
                out[s.grpc_url] = c.statistics(ENCODER)["inference_count"]
    return out


def run_clients(predictors, images, after=None, at=N_IMAGES // 3):
    """Every image once, through a pool of predictors (one thread each): set_image and a click.
    `after()` runs once `at` images are done, while the others work on. Returns answers, errors
    and the wall time in seconds."""
    work = queue.Queue()
    for i in range(len(images)):
        work.put(i)
    answers, errors, done, lock = {}, [], [0], threading.Lock()
    fired = threading.Event()

    def worker(predictor):
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            try:
                predictor.set_image(images[i])
                masks, scores, _ = predictor.predict(*click(i))
                answers[i] = (masks, scores)
            except Exception as e:  # collected: the test asserts there are none
                errors.append((i, repr(e)))
            with lock:
                done[0] += 1
                fire = after is not None and done[0] == at and not fired.is_set()
                if fire:
                    fired.set()
            if fire:
                after()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(p,)) for p in predictors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, errors, time.perf_counter() - t0


def same_answers(a, b):
    for i in a:
        np.testing.assert_array_equal(a[i][0], b[i][0], err_msg=f"image {i}")
        np.testing.assert_allclose(a[i][1], b[i][1], atol=1e-5, err_msg=f"image {i}")


def single_server_answers(url, images):
    predictor = TritonSamPredictor(SamClient(url))
    out = {}
    for i, image in enumerate(images):
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(*click(i))
        out[i] = (masks, scores)
    predictor.client.close()
    return out


def test_sdk_routes_each_image_to_one_replica_and_survives_a_stop(replicas, images):
    urls = [s.grpc_url for s in replicas]
    ring = Ring(urls)
    ids = [wire.image_id_of(im) for im in images]
    owner = [ring.pick(k) for k in ids]
    predictors = [TritonSamPredictor(SamClient(urls, retries=2, backoff=0.2, down_for=600))
                  for _ in range(N_CLIENTS)]

    # 1. all replicas up: each image encoded once, on the replica its id hashes to
    first, errors, t_first = run_clients(predictors, images)
    assert errors == [] and len(first) == N_IMAGES
    counts = encoder_counts(replicas)
    assert sum(counts.values()) == N_IMAGES
    assert counts == {u: owner.count(r) for r, u in enumerate(urls)}
    assert min(counts.values()) > 0

    # 2. the same work again; a third of the way in, the replica with the most images stops
    victim = max(range(3), key=owner.count)
    moved = [i for i in range(N_IMAGES) if owner[i] == victim]
    second, errors, t_second = run_clients(predictors, images, after=replicas[victim].stop)
    assert errors == [] and len(second) == N_IMAGES
    # 3. and once more, so that every image of the stopped replica has been asked for since it stopped
    third, errors, t_third = run_clients(predictors, images)
    assert errors == [] and len(third) == N_IMAGES

    after = encoder_counts(replicas)
    survivors = [r for r in range(3) if r != victim]
    assert sum(after.values()) - sum(counts[urls[r]] for r in survivors) == len(moved)  # only its images, once
    for r in survivors:  # each to its next replica in the ring
        assert after[urls[r]] - counts[urls[r]] == sum(ring.order(ids[i])[1] == r for i in moved)
    # Which client pulled which image is the scheduler's: one may have had none of the stopped
    # replica's since the stop (seen once, 2026-12-06). Each asks for one now: a client learns a
    # replica is down from its own failed request, and the image is answered from the next replica's
    # cache (no encode: checked below).
    for p in predictors:
        p.set_image(images[moved[0]])
    assert all(urls[victim] in p.client.ring.down() for p in predictors)
    same_answers(first, second)
    same_answers(first, third)
    print(f"\n[sdk] encodes per replica {list(counts.values())}, {len(moved)} moved from the stopped one; "
          f"wall s: all up {t_first:.1f}, stop mid-run {t_second:.1f}, after {t_third:.1f}")

    # the asyncio client routes the same way: cached images, no new encode
    async def encode_and_decode():
        async with AsyncSamClient(urls, retries=1, backoff=0.1) as c:
            encoded = [await c.encode(images[i]) for i in range(5)]
            return encoded, [await c.decode(e.image_id, *click(i)) for i, e in enumerate(encoded)]

    encoded, outs = asyncio.run(encode_and_decode())
    assert [e.image_id for e in encoded] == ids[:5] and encoder_counts(replicas) == after
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["masks"][0], first[i][0])

    # every answer equals one server's answer for the same image and click
    same_answers(first, single_server_answers(urls[survivors[0]], images))

    # the README's example, on these replicas
    code = _block("readme-example: replicas")
    for k, url in enumerate(urls):
        code = code.replace(f"host{k + 1}:8001", url)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["predictor"].image_size == 256 and scope["client"].ring.urls == urls
    out = asyncio.run(scope["click"](images[0], *click(0)[0][0]))
    np.testing.assert_array_equal(out["masks"][0], first[0][0])
    scope["client"].close()
    for p in predictors:
        p.client.close()


def crash(server):
    """SIGKILL the server's process group (tritonserver and its stubs): a replica that stops
    answering at once, connections refused. Its python-backend shared memory is removed after."""
    regions = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(server.work_dir in a for a in args):
            regions.update(a for a in args if a.startswith("triton_python_backend_shm_region"))
    os.killpg(server.process.pid, signal.SIGKILL)
    server.stop()
    for r in regions:
        try:
            os.unlink(os.path.join("/dev/shm", r))
        except OSError:
            pass


def _nginx_or_skip():
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        pytest.skip("nginx is not installed (`make install` installs Debian's nginx)")
    return path


def test_nginx_routes_on_the_image_id_header(replicas, images, tmp_path):
    """gRPC through NGINX (`hash $http_x_samrt_image_id consistent`): the same guarantees."""
    from samrt.model_repository.server import free_port

    nginx = _nginx_or_skip()
    port, http_port = free_port(), free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config([s.grpc_url for s in replicas], [s.http_url for s in replicas],
                                 f"127.0.0.1:{port}", f"127.0.0.1:{http_port}", prefix=str(prefix)))
    # workers as root: they write request bodies under pytest's private (0700) tmp folder
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off; user root;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        front = f"127.0.0.1:{port}"
        with SamClient(front, retries=0) as probe:
            probe.wait_until_ready(30)
        predictors = [TritonSamPredictor(SamClient(front, retries=2, backoff=0.2)) for _ in range(N_CLIENTS)]

        first, errors, t_first = run_clients(predictors, images)
        assert errors == [] and len(first) == N_IMAGES
        counts = encoder_counts(replicas)
        assert sum(counts.values()) == N_IMAGES and min(counts.values()) > 0

        # NGINX sees a replica fail when it refuses connections (a crash). A graceful SIGTERM makes
        # Triton answer errors while it unloads, inside gRPC's trailers where NGINX cannot see them:
        # behind a balancer, drain a replica (take it out of the upstream) before stopping it.
        victim = max(range(3), key=lambda r: counts[replicas[r].grpc_url])
        second, errors, t_second = run_clients(predictors, images, after=lambda: crash(replicas[victim]))
        assert errors == [] and len(second) == N_IMAGES
        third, errors, t_third = run_clients(predictors, images)
        assert errors == [] and len(third) == N_IMAGES

        after = encoder_counts(replicas)
        grown = sum(after.values()) - sum(counts[u] for u in after)
        assert grown == counts[replicas[victim].grpc_url]  # only the stopped replica's images, once
        same_answers(first, second)
        same_answers(first, third)
        print(f"\n[nginx grpc] encodes per replica {list(counts.values())}, {grown} again after the crash; "
              f"wall s: all up {t_first:.1f}, crash mid-run {t_second:.1f}, after {t_third:.1f}")
        for p in predictors:
            p.client.close()

        # the HTTP front (proxy_pass): raw encode then decode meet on one replica (a decode elsewhere
        # would be ImageNotCachedError), with the stopped replica still down
        with SamClient(f"127.0.0.1:{http_port}", "http", retries=2, backoff=0.2) as c:
            for i in range(12):
                out = c.decode(c.encode(images[i]).image_id, *click(i))
                np.testing.assert_array_equal(out["masks"][0], first[i][0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
