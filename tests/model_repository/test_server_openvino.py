"""The real tritonserver on OpenVINO engines (`samrt serve --backend openvino`).

fp32: the existing parity, batching, cache, eviction and bad-input tests of `test_server.py` run
here unchanged, with their tolerances (OpenVINO fp32 against ONNX Runtime fp32 differs by about
1e-5 on the tiny model, see tests/engines/test_openvino.py).
bf16 (encoder and decoder; AVX-512 BF16 on this CPU, emulated elsewhere): parity with
SamPredictor within the tolerances stated in BF16_TOLERANCE, chosen from what was measured on the
tiny model (see the test's docstring)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samrt[openvino]')")

from ..conftest import CACHE_ENTRIES, ENTRY_BYTES, MAX_PIXELS, MAX_PROMPTS, random_image  # noqa: E402
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

pytestmark = pytest.mark.triton

# bf16 against SamPredictor (fp32 PyTorch): share of equal mask pixels, |iou| and |logit| bounds
# (measured on the tiny model, 2026-11-30, Xeon with AVX-512 BF16: 0.9965, 0.0016, 0.0079)
BF16_TOLERANCE = {"mask_agreement": 0.99, "iou_atol": 0.01, "logit_atol": 0.05}


@pytest.fixture(scope="module")
def ov_export(tiny_export, tmp_path_factory):
    """The tiny export with OpenVINO engines fp32 and bf16 built into it (through the gate)."""
    from samrt.engines.build import build_engine

    d = str(tmp_path_factory.mktemp("ov_export"))
    for p in (tiny_export.encoder_path, tiny_export.decoder_path, tiny_export.report_path,
              *tiny_export.fast_decoder_paths.values()):
        shutil.copy(p, d)
    for graph in ("encoder", "fast_decoder"):
        for precision in ("fp32", "bf16"):
            build_engine(os.path.join(d, f"tiny.{graph}.onnx"), d, "openvino", precision, eval_images=2,
                         speed_repeats=1)
    return d


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


def test_bf16_server_agrees_with_sam_predictor_within_the_stated_tolerance(ov_export, reference, tmp_path):
    """bf16 encoder and decoder served, against fp32 SamPredictor on two images and three kinds
    of prompt. Measured on the tiny model (random weights, Xeon with AVX-512 BF16, 2026-11-30):
    worst mask agreement 0.9965, |iou| 0.0016, |logit| 0.0079; BF16_TOLERANCE leaves room above."""
    from samrt.client import SamClient
    from samrt.model_repository.server import TritonServer

    repo = _repository(ov_export, str(tmp_path / "repo"), "bf16")
    worst = {"mask_agreement": 1.0, "iou_atol": 0.0, "logit_atol": 0.0}
    with TritonServer(repo, work_dir=str(tmp_path / "work")) as srv, SamClient(srv.grpc_url) as c:
        assert c.model_info()["encoder_engine"]["precision"] == "bf16"
        for h, w in ((333, 517), (480, 640)):
            image = random_image(h, w, seed=h)
            reference.set_image(image)
            image_id = c.encode(image).image_id
            pt, box = np.array([[w * 0.3, h * 0.6]]), np.array([w * 0.1, h * 0.1, w * 0.7, h * 0.8])
            cases = [((pt, np.array([1])), {}, (pt, [1]), {}),
                     ((pt, np.array([0])), {"box": box}, (np.concatenate([pt, box.reshape(2, 2)]), [0, 2, 3]), {}),
                     ((pt, np.array([1])), {"multimask_output": False}, (pt, [1]), {"multimask_output": False})]
            for ref_args, ref_kw, args, kw in cases:
                m, s, l = reference.predict(*ref_args, **ref_kw)
                out = c.decode(image_id, *args, **kw)
                worst["mask_agreement"] = min(worst["mask_agreement"], float((out["masks"][0] == m).mean()))
                worst["iou_atol"] = max(worst["iou_atol"], float(np.abs(out["iou_predictions"][0] - s).max()))
                worst["logit_atol"] = max(worst["logit_atol"], float(np.abs(out["low_res_masks"][0] - l).max()))
    print(f"\n[bf16 server vs SamPredictor] {worst}")
    assert worst["mask_agreement"] >= BF16_TOLERANCE["mask_agreement"], worst
    assert worst["iou_atol"] <= BF16_TOLERANCE["iou_atol"], worst
    assert worst["logit_atol"] <= BF16_TOLERANCE["logit_atol"], worst
