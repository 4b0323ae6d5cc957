"""Shared fixtures: tiny models built through the same code path as the official ones, and the
tritonservers the tests share.

Servers: `server` (the tiny export) and `small_server` (the embedded samrt_small model) are
started once per session and shared by every module that only sends requests; a module that
kills model processes, changes options or serves another repository starts its own. Tests that
count Triton's statistics compare before/after (`settled_count`); tests that fill the embedding
cache encode again what they decode. Every test that starts a server carries the `triton` marker
(set here for the server fixtures; a start from an unmarked test fails it), so `-m "not triton"`
starts none, and without the tritonserver binary those tests skip, saying what is missing.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pytest

from samrt.artifacts import default_checkpoint
from samrt.memory import give_back_freed_memory
from samrt.model_repository.render import RepoOptions, render_repository
from samrt.model_repository.server import TritonLaunchError, TritonServer, check_installed
from samrt.spec import get_config

# Fixtures that start a tritonserver: a test that uses one (directly or through another fixture)
# is marked `triton`.
SERVER_FIXTURES = {"server", "small_server", "own_server", "replicas"}
_RUNNING: dict = {}  # the test being set up or run (for the check in _servers_only_in_triton_tests)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.triton)


def _triton_missing() -> Optional[str]:
    if "missing" not in _RUNNING:
        try:
            check_installed()
            _RUNNING["missing"] = None
        except TritonLaunchError as e:
            _RUNNING["missing"] = str(e)
    return _RUNNING["missing"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures: a `triton` test without the server binary skips with the reason."""
    _RUNNING["item"] = item
    if item.get_closest_marker("triton") is not None and _triton_missing():
        pytest.skip(f"no tritonserver: {_triton_missing()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used a tritonserver gets that server's restarts and its log's last lines
    in its report (CI shows only the report)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, TritonServer):
            try:
                with open(value.log_path, "rb") as f:
                    tail = f.read()[-6000:].decode(errors="replace")
            except OSError as e:
                tail = f"(log unreadable: {e})"
            report.sections.append((f"tritonserver of fixture {name!r}",
                                    f"restarts: {value.restarts}\nlog {value.log_path}, last lines:\n{tail}"))


@pytest.fixture(scope="session", autouse=True)
def _servers_only_in_triton_tests():
    """A tritonserver started while an unmarked test is set up or runs fails that test: the quick
    loop (`-m "not triton"`) must start none."""
    start = TritonServer.start

    def checked_start(self, *args, **kwargs):
        item = _RUNNING.get("item")
        if item is not None and item.get_closest_marker("triton") is None:
            pytest.fail(f"{item.nodeid} starts a tritonserver but is not marked triton")
        return start(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TritonServer, "start", checked_start)
        yield


@pytest.fixture(scope="module", autouse=True)
def _give_memory_back():
    """After each module: collect what its fixtures held and hand glibc's free heap back to the
    system (malloc_trim). Engine sessions and torch models freed by one module otherwise stay in
    this process's heap; the suite grew to 15 GB and was OOM-killed in CI."""
    yield
    give_back_freed_memory()


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


@pytest.fixture
def tiny_graphs_reused(tiny_export, monkeypatch):
    """Tests of what surrounds the exporter (its gate and report, `samrt export`, the pipeline) on
    the tiny model with seed 0: `export_graph` copies the session's graph of the same name instead of
    running torch.onnx's dynamo exporter again (~40 s a whole export here). The copies come from the
    same weights (`tiny_export`: random_sam(tiny, seed=0), what --random-init exports), so the
    checks against PyTorch that follow are the real ones; the exporter itself ran for `tiny_export`."""
    import shutil

    from samrt.export import onnx_export

    copied = []

    def copy_graph(module, spec, example, path):
        src = os.path.join(os.path.dirname(tiny_export.report_path), os.path.basename(path))
        assert os.path.isfile(src), f"{path}: the session's tiny export has no {os.path.basename(path)}"
        shutil.copyfile(src, path)
        copied.append(os.path.basename(path))
        return path

    monkeypatch.setattr(onnx_export, "export_graph", copy_graph)
    return copied


@pytest.fixture(scope="session")
def tiny_predictor(tiny_export):
    from samrt.engines import OnnxSamPredictor

    return OnnxSamPredictor.from_onnx(tiny_export.encoder_path, tiny_export.decoder_path)


# -- a real tritonserver (from nvidia-pytriton) serving the tiny export, shared by the session --
EMBEDDING_BYTES = 256 * 64 * 64 * 4
# one cached image with the fast decoder: the embedding (kept transposed) and its three per-image
# tensors of 128 x 64 x 64 floats each
ENTRY_BYTES = EMBEDDING_BYTES + 3 * 128 * 64 * 64 * 4
CACHE_ENTRIES = 3
MAX_PIXELS = 2000 * 2000
MAX_PROMPTS = 64


@pytest.fixture(scope="session")
def tiny_repo(tiny_export, tiny_cfg, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("repo") / "repo")
    opts = RepoOptions(cache_bytes=CACHE_ENTRIES * ENTRY_BYTES + 1024, max_pixels=MAX_PIXELS,
                       max_prompts=MAX_PROMPTS)  # the default: no fixed queue delay for a lone click
    # what a new user gets: the fast decoder (here in ONNX Runtime fp32, the exact path)
    return render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.fast_decoder_paths, out, opts)


@pytest.fixture(scope="session")
def server(tiny_repo, tmp_path_factory):
    """The tiny export's server, shared by the session (see the module docstring)."""
    with TritonServer(tiny_repo, work_dir=str(tmp_path_factory.mktemp("shared_tiny"))) as srv:
        yield srv


@pytest.fixture(params=["grpc", "http"])
def client(server, request):
    from samrt.client import SamClient

    url = server.grpc_url if request.param == "grpc" else server.http_url
    with SamClient(url, request.param, retries=0) as c:
        yield c


@pytest.fixture(scope="session")
def small_build(tmp_path_factory):
    """The embedded samrt_small model exported and rendered (what `samrt serve` or `samrt annotate`
    does): (build folder, repository). Skips where the install has no embedded model."""
    from samrt.app.pipeline import build_repository

    if default_checkpoint() is None:
        pytest.skip("no embedded samrt_small checkpoint in samrt/assets")
    build = str(tmp_path_factory.mktemp("small"))
    return build, build_repository(build, default_checkpoint())


@pytest.fixture(scope="session")
def small_server(small_build, tmp_path_factory):
    """The embedded model's server, shared by the session."""
    with TritonServer(small_build[1], work_dir=str(tmp_path_factory.mktemp("shared_small"))) as srv:
        yield srv


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
