"""vit_l and vit_h end to end, as a new user runs them (`samrt bench e2e`, benchmarks/e2e.py): an
official-format checkpoint of random weights exported (vit_h's encoder to external data), served by
`samrt serve --checkpoint …` with no other flags, a click and a box against `SamPredictor`,
automatic masks, four clients at once. About 20 minutes each on a 2-core CPU with bf16 (vit_h: 50
with AVX2 only) and 13 GB at the peak: `make test-release` only (marked `release`); the same
harness's runs, by hand, are in docs/memory.md."""

import json

import pytest

from samrt.memory import GIB, estimate_server_memory

pytestmark = [pytest.mark.release, pytest.mark.slow, pytest.mark.triton]


@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
def test_a_large_model_end_to_end_on_the_default_path(model_type, tmp_path):
    from samrt.benchmarks.run import run_e2e

    paths = run_e2e(str(tmp_path / "out"), model_type, None, False, str(tmp_path / "build"), clients=4)
    rows = {r["step"]: r for r in json.load(open(paths["json"]))["rows"]}
    assert set(rows) >= {"checkpoint", "export", "start", "idle", "encode", "click", "box", "amg", "load 4 clients",
                         "reference"}
    if model_type == "vit_h":  # past protobuf's 2 GB limit
        assert rows["export"]["external_data"] == ["vit_h.encoder.onnx.data"]
    ref = rows["reference"]
    assert ref["mean_mask_iou"] >= ref["gate_min_mean_iou"], ref
    assert ref["max_score_diff"] < 0.05, ref
    # random weights pass none of SAM's filters (0 masks): the step ran and counted what it wrote
    assert isinstance(rows["amg"]["masks"], int) and rows["amg"]["seconds"] > 0 and rows["encode"]["seconds"] > 0
    # what the server took under four clients stays within what `samrt serve` estimated before it started
    encoder = rows["start"]["serving"][0][1].split(":")[0].split()  # e.g. ["encoder", "openvino", "fp32"]
    estimate = estimate_server_memory(model_type, encoder[1], encoder[2])
    assert rows["load 4 clients"]["server_pss_gib"] * GIB <= estimate.total, estimate.describe()
