"""Embeddings that outlive a restart: a real tritonserver with `cache_dir` (the disk tier under the
embedding cache). An image encoded once decodes after a server restart and after the watchdog
restarted the cache owner's process, with no encoder run; a damaged file is a clean miss."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from samrt.errors import ImageNotCachedError, ServerError
from samrt.model_repository.disk_cache import SUFFIX
from samrt.model_repository.render import RepoOptions, render_repository
from samrt.model_repository.server import TritonServer

from ..conftest import CACHE_ENTRIES, EMBEDDING_BYTES, random_image, settled_count

pytestmark = pytest.mark.triton

POINT = (np.array([[[20.0, 30.0]]], np.float32), np.array([[1]], np.int32))


@pytest.fixture(scope="module")
def cache_repo(tiny_export, tiny_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("disk_cache")
    opts = RepoOptions(cache_bytes=CACHE_ENTRIES * EMBEDDING_BYTES + 1024, cache_dir=str(root / "embeddings"),
                       cache_dir_bytes=64 * EMBEDDING_BYTES)
    repo = render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, str(root / "repo"), opts)
    return repo, str(root / "embeddings")


@pytest.fixture(scope="module")
def own_server(cache_repo, tmp_path_factory):
    with TritonServer(cache_repo[0], work_dir=str(tmp_path_factory.mktemp("disk_cache_server")),
                      watchdog_interval=0.5) as srv:
        yield srv


def _files(cache_dir):
    return sorted(n for d in os.listdir(cache_dir) if os.path.isdir(os.path.join(cache_dir, d))
                  for n in os.listdir(os.path.join(cache_dir, d)) if n.endswith(SUFFIX))


def _until(fn, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except ServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def _encoder_runs(client) -> int:
    return int(client.statistics("sam_image_encoder").get("inference_count", 0))


def _encoded_on_disk(client, cache_dir, image):
    """Encode and decode `image`; wait until its file is written. (image_id, the decode's answer)."""
    image_id = client.encode(image).image_id
    first = client.decode(image_id, *POINT)
    deadline = time.monotonic() + 30
    while image_id + SUFFIX not in _files(cache_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert image_id + SUFFIX in _files(cache_dir)
    return image_id, first


def test_embeddings_survive_a_server_restart(own_server, cache_repo):
    from samrt.client import SamClient

    cache_dir = cache_repo[1]
    image = random_image(64, 80, seed=11)
    with SamClient(own_server.grpc_url, retries=0) as c:
        image_id, first = _encoded_on_disk(c, cache_dir, image)
        assert settled_count(lambda: _encoder_runs(c), 1) == 1

    own_server.stop()  # every embedding in memory is gone
    own_server.start()
    with SamClient(own_server.grpc_url, retries=0) as c:
        again = c.decode(image_id, *POINT)  # no encode first
        np.testing.assert_array_equal(again["masks"], first["masks"])
        np.testing.assert_allclose(again["iou_predictions"], first["iou_predictions"], atol=1e-6)
        assert c.encode(image).image_id == image_id  # sam_encode asks the cache: found on disk, no encoder run
        assert _encoder_runs(c) == 0


def test_a_damaged_file_is_a_miss_and_the_image_is_encoded_again(own_server, cache_repo):
    from samrt.client import SamClient

    cache_dir = cache_repo[1]
    image = random_image(48, 40, seed=12)
    with SamClient(own_server.grpc_url, retries=0) as c:
        image_id, first = _encoded_on_disk(c, cache_dir, image)
    own_server.stop()
    (path,) = [os.path.join(cache_dir, d, image_id + SUFFIX) for d in os.listdir(cache_dir)
               if os.path.isfile(os.path.join(cache_dir, d, image_id + SUFFIX))]
    with open(path, "r+b") as f:  # truncated mid-payload, as a crash during a copy would leave it
        f.truncate(os.path.getsize(path) // 2)
    own_server.start()
    with SamClient(own_server.grpc_url, retries=0) as c:
        with pytest.raises(ImageNotCachedError):
            c.decode(image_id, *POINT)
        assert not os.path.exists(path)  # the bad file is gone
        assert c.encode(image).image_id == image_id  # encoded again, once
        assert settled_count(lambda: _encoder_runs(c), 1) == 1
        np.testing.assert_array_equal(c.decode(image_id, *POINT)["masks"], first["masks"])


def test_embeddings_survive_the_watchdogs_restart_of_the_decoder_process(own_server, cache_repo):
    """Last in the module: after a watchdog restart, stopping the server takes Triton's exit timeout."""
    from samrt.client import SamClient

    image = random_image(56, 72, seed=13)
    with SamClient(own_server.grpc_url, retries=0) as c:
        image_id, first = _encoded_on_disk(c, cache_repo[1], image)
        runs = _encoder_runs(c)
        os.kill(own_server.model_processes()["sam_mask_decoder_0_0"], signal.SIGKILL)  # this test's own server
        after = _until(lambda: c.decode(image_id, *POINT))  # no encode first
        np.testing.assert_array_equal(after["masks"], first["masks"])
        assert any(m == "sam_mask_decoder" for m, _ in own_server.restarts)
        assert _encoder_runs(c) == runs
