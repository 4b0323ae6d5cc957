"""The real tritonserver on OpenVINO fp32 engines (`samrt serve --backend openvino --precision fp32`).

The existing parity, batching, cache, eviction and bad-input tests of `test_server.py` run here
unchanged, with their tolerances (OpenVINO fp32 against ONNX Runtime fp32 differs by about 1e-5 on
the tiny model, see tests/engines/test_openvino.py). Release only (`make test-release`): the
OpenVINO fp32 engines are checked against ONNX Runtime in tests/engines/test_openvino.py, and the
default server (OpenVINO bf16) is tested through the embedded model's server and
test_server_openvino_bf16.py in `make test`."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samrt[openvino]')")

from ..conftest import CACHE_ENTRIES, ENTRY_BYTES, MAX_PIXELS, MAX_PROMPTS  # noqa: E402
from .test_server import (  # noqa: E402,F401  (collected again here, on the OpenVINO server)
    reference,
    test_bad_decode_gets_its_error_and_the_server_goes_on,
    test_bad_requests_in_a_batch_leave_the_others_alone,
    test_concurrent_clients_are_batched_and_get_their_own_answers,
    test_eviction_and_the_clear_error,
    test_many_prompts_in_one_request,
    test_results_equal_sam_predictor,
    test_second_encode_runs_no_encoder,
)

pytestmark = [pytest.mark.triton, pytest.mark.release]


def ov_export_with(tiny_export, d: str, precision: str) -> str:
    """A copy of the tiny export in `d` with the OpenVINO `precision` engines of the encoder and the
    fast decoder built into it (through the gate)."""
    from samrt.engines.build import build_engine

    for p in (tiny_export.encoder_path, tiny_export.decoder_path, tiny_export.report_path,
              *tiny_export.fast_decoder_paths.values()):
        shutil.copy(p, d)
    for graph in ("encoder", "fast_decoder"):
        build_engine(os.path.join(d, f"tiny.{graph}.onnx"), d, "openvino", precision, eval_images=2, speed_repeats=1)
    return d


@pytest.fixture(scope="module")
def ov_export(tiny_export, tmp_path_factory):
    return ov_export_with(tiny_export, str(tmp_path_factory.mktemp("ov_export")), "fp32")


def _repository(export_dir, out, precision):
    """The repository `samrt build-repo --backend openvino --precision <precision>` renders."""
    from samrt.app.pipeline import repository_for_export

    return repository_for_export(export_dir, out, _opts(), backend="openvino", precision=precision)


def _opts():
    from samrt.model_repository.render import RepoOptions

    return RepoOptions(cache_bytes=CACHE_ENTRIES * ENTRY_BYTES + 1024, max_pixels=MAX_PIXELS,
                       max_prompts=MAX_PROMPTS)


@pytest.fixture(scope="module")
def server(ov_export, tmp_path_factory):
    """This module's own server (overrides conftest's shared one): OpenVINO fp32 engines, so the
    tests of test_server.py imported above run against OpenVINO."""
    from samrt.model_repository.server import TritonServer

    out = str(tmp_path_factory.mktemp("ov_repo") / "repo")
    repo = _repository(ov_export, out, "fp32")
    text = open(os.path.join(repo, "sam_mask_decoder", "config.pbtxt")).read()
    assert "tiny.fast_decoder.fp32.xml" in text  # the engine really is OpenVINO's
    with TritonServer(repo, work_dir=str(tmp_path_factory.mktemp("ov_work"))) as srv:
        yield srv


def test_the_served_engines_are_openvino(server):
    from samrt.client import SamClient

    with SamClient(server.grpc_url) as c:
        report = c.model_info()["encoder_engine"]
    assert report["engine"] == "tiny.encoder.fp32.xml" and report["precision"] == "fp32"  # an OpenVINO IR
