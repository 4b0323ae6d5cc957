"""The real tritonserver on OpenVINO bf16 engines (the default on a CPU with AVX-512 BF16;
emulated elsewhere), on the tiny model: parity with SamPredictor within the tolerances stated in
BF16_TOLERANCE, chosen from what was measured on the tiny model (see the test's docstring)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samrt[openvino]')")

from ..conftest import random_image  # noqa: E402
from .test_server import reference  # noqa: E402,F401
from .test_server_openvino import _repository, ov_export_with  # noqa: E402

pytestmark = pytest.mark.triton

# bf16 against SamPredictor (fp32 PyTorch): share of equal mask pixels, |iou| and |logit| bounds
# (measured on the tiny model, 2026-11-30, Xeon with AVX-512 BF16: 0.9965, 0.0016, 0.0079)
BF16_TOLERANCE = {"mask_agreement": 0.99, "iou_atol": 0.01, "logit_atol": 0.05}


@pytest.fixture(scope="module")
def ov_export(tiny_export, tmp_path_factory):
    return ov_export_with(tiny_export, str(tmp_path_factory.mktemp("ov_export_bf16")), "bf16")


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
