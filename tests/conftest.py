"""Shared fixtures: tiny models built through the same code path as the official ones."""

from __future__ import annotations


import numpy as np
import pytest

from samrt.model_repository.render import RepoOptions, render_repository

from samrt.spec import get_config


@pytest.fixture(scope="session")
def tiny_cfg():
    return get_config("tiny")


@pytest.fixture(scope="session")
def tiny_sam(tiny_cfg):
    from samrt.export import random_sam

    return random_sam(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_sam, tmp_path_factory):
    """A checkpoint file in the official format (plain state dict), written by the test."""
    from samrt.export import save_checkpoint

    path = str(tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth")
    save_checkpoint(tiny_sam, path)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_sam, tiny_cfg, tmp_path_factory):
    from samrt.export import export_sam

    out = str(tmp_path_factory.mktemp("export_tiny"))
    return export_sam(tiny_sam, tiny_cfg, out, random_init=True)


@pytest.fixture(scope="session")
def tiny_predictor(tiny_export):
    from samrt.engines import OnnxSamPredictor

    return OnnxSamPredictor.from_onnx(tiny_export.encoder_path, tiny_export.decoder_path)


# -- a real tritonserver (from nvidia-pytriton) serving the tiny export, shared by the session --
EMBEDDING_BYTES = 256 * 64 * 64 * 4
CACHE_ENTRIES = 3
MAX_PIXELS = 2000 * 2000
MAX_PROMPTS = 64


@pytest.fixture(scope="session")
def tiny_repo(tiny_export, tiny_cfg, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("repo") / "repo")
    opts = RepoOptions(cache_bytes=CACHE_ENTRIES * EMBEDDING_BYTES + 1024, max_pixels=MAX_PIXELS,
                       max_prompts=MAX_PROMPTS)  # the default: no fixed queue delay for a lone click
    return render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, out, opts)


@pytest.fixture(scope="module")
def server(tiny_repo):
    """Module-scoped: each module's server (and its stubs' memory) is gone before the next module."""
    from samrt.model_repository.server import TritonServer

    with TritonServer(tiny_repo) as srv:
        yield srv


@pytest.fixture(params=["grpc", "http"])
def client(server, request):
    from samrt.client import SamClient

    url = server.grpc_url if request.param == "grpc" else server.http_url
    with SamClient(url, request.param, retries=0) as c:
        yield c


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours plus noise: a non-trivial image of any size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def settled_count(read, expected: int, timeout: float = 30.0, settle: float = 0.3) -> int:
    """Triton adds a request to a model's statistics after the response has left, so a count read
    right after a call can lag by the last request. Poll ``read()`` until it reaches ``expected``
    (or ``timeout`` seconds pass), wait ``settle`` seconds for stragglers, and return the count:
    the caller asserts equality, so more requests than expected still fail."""
    import time

    deadline = time.monotonic() + timeout
    while read() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    return read()
