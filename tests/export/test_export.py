"""Export of the tiny configuration: graph contract, report, and the tolerance gate."""

import json
import os

import numpy as np
import onnx
import pytest

from samrt.errors import ExportCheckError
from samrt.export import Tolerance, check_graph, export_sam, random_decoder_inputs
from samrt.export import onnx_export
from samrt.export.wrappers import PromptDecoder
from samrt.spec import decoder_spec, encoder_spec


def _graph_io(path):
    m = onnx.load(path, load_external_data=False)

    def dims(vi):
        return tuple(d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim)

    return m, [(i.name, dims(i)) for i in m.graph.input], [(o.name, dims(o)) for o in m.graph.output]


def test_graphs_follow_the_spec(tiny_export, tiny_cfg):
    for path, spec in ((tiny_export.encoder_path, encoder_spec(tiny_cfg)), (tiny_export.decoder_path, decoder_spec(tiny_cfg))):
        model, inputs, outputs = _graph_io(path)
        assert [n for n, _ in inputs] == spec.input_names
        assert [n for n, _ in outputs] == spec.output_names
        for (name, shape), t in zip(inputs, spec.inputs):
            fixed = [d for d in t.shape if isinstance(d, int)]
            assert [d for d in shape if isinstance(d, int)] == fixed, name
            assert sum(isinstance(d, str) for d in shape) == len(t.dynamic_axes), name
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    enc_ops = {n.op_type for n in onnx.load(tiny_export.encoder_path).graph.node}
    assert "LayerNormalization" in enc_ops


def test_report_is_written_and_passes(tiny_export):
    report = json.load(open(tiny_export.report_path))
    assert report["passed"] is True and report["random_init"] is True
    assert report["encoder"]["checks"][0]["outputs"]["image_embeddings"]["max_abs_diff"] < 1e-4
    shapes = [c["input_shapes"]["point_coords"] for c in report["decoder"]["checks"]]
    assert shapes == [[1, 1, 2], [5, 3, 2]]  # two shapes: the dynamic axes really are dynamic
    for check in report["decoder"]["checks"]:
        assert check["outputs"]["low_res_masks"]["max_abs_diff"] < 1e-4


def test_encoder_batch_is_dynamic(tiny_export, tiny_sam, tiny_cfg):
    from samrt.export.wrappers import ImageEncoder

    image = np.random.default_rng(0).standard_normal((2, 3, 1024, 1024), dtype=np.float32)
    r = check_graph(tiny_export.encoder_path, ImageEncoder(tiny_sam), encoder_spec(tiny_cfg), {"image": image},
                    onnx_export.ENCODER_TOLERANCE)
    assert r["passed"], r


def test_decoder_rows_are_independent(tiny_export, tiny_sam, tiny_cfg):
    """Each prompt row must only see its own embedding (the official wrapper broadcast them)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(tiny_export.decoder_path, providers=["CPUExecutionProvider"])
    feeds = random_decoder_inputs(tiny_cfg, 16, 3, seed=5)
    batched = sess.run(None, feeds)
    for i in (0, 7, 15):
        one = sess.run(None, {k: v[i : i + 1] for k, v in feeds.items()})
        np.testing.assert_allclose(one[0][0], batched[0][i], atol=1e-5)
        np.testing.assert_allclose(one[1][0], batched[1][i], atol=1e-6)


def test_tolerance_gate_fails_with_report(tiny_sam, tiny_cfg, tmp_path, monkeypatch, tiny_graphs_reused):
    monkeypatch.setattr(onnx_export, "DECODER_TOLERANCE", Tolerance(atol=0.0, rtol=0.0))
    with pytest.raises(ExportCheckError, match=r"decoder\.low_res_masks: max abs .* > atol 0.0"):
        export_sam(tiny_sam, tiny_cfg, str(tmp_path), random_init=True)
    report = json.load(open(tmp_path / "export_report.json"))
    assert report["passed"] is False
    assert "tiny.decoder.onnx" in tiny_graphs_reused  # the session's graphs, checked again here


def test_check_graph_reports_real_differences(tiny_export, tiny_sam, tiny_cfg):
    """A graph checked against a different model must fail: the check can fail."""
    from samrt.export import random_sam

    other = PromptDecoder(random_sam(tiny_cfg, seed=9))
    r = check_graph(tiny_export.decoder_path, other, decoder_spec(tiny_cfg),
                    random_decoder_inputs(tiny_cfg, 2, 2), onnx_export.DECODER_TOLERANCE)
    assert r["passed"] is False and r["outputs"]["iou_predictions"]["max_abs_diff"] > 1e-3


@pytest.mark.slow  # one dynamo export of the tiny encoder (~8 s)
def test_a_graph_past_the_protobuf_limit_goes_to_external_data_and_loads_from_a_moved_folder(
        tiny_sam, tiny_cfg, tiny_export, tmp_path, monkeypatch):
    """vit_h's encoder (2.5 GB of weights) is past protobuf's 2 GB limit: its weights go to a file
    beside the graph. Here the limit is lowered so that the tiny encoder takes that path: the
    graph holds no weights, the folder can be moved, and ONNX Runtime and OpenVINO read it there
    with the same answers as the tiny export's in-graph encoder (same weights)."""
    import shutil

    import onnxruntime as ort
    import torch

    from samrt.export.wrappers import ImageEncoder

    monkeypatch.setattr(onnx_export, "_EXTERNAL_DATA_BYTES", 0)
    first = tmp_path / "first"
    s = tiny_cfg.image_size
    onnx_export.export_graph(ImageEncoder(tiny_sam).eval(), encoder_spec(tiny_cfg), {"image": torch.randn(2, 3, s, s)},
                             str(first / "tiny.encoder.onnx"))
    files = sorted(os.listdir(first))
    data = [f for f in files if f != "tiny.encoder.onnx"]
    assert data, f"expected a weights file beside the graph, got {files}"
    graph_bytes = os.path.getsize(first / "tiny.encoder.onnx")
    weight_bytes = sum(p.numel() * 4 for p in tiny_sam.image_encoder.parameters())
    assert graph_bytes < weight_bytes / 10 < sum(os.path.getsize(first / f) for f in data)
    moved = tmp_path / "moved"
    shutil.move(str(first), str(moved))

    image = np.random.default_rng(3).standard_normal((1, 3, s, s), dtype=np.float32)
    ref = ort.InferenceSession(tiny_export.encoder_path, providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    got = ort.InferenceSession(str(moved / "tiny.encoder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": image})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(moved / "tiny.encoder.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled([image])[0], ref, atol=1e-3, rtol=1e-3)
    r = check_graph(str(moved / "tiny.encoder.onnx"), ImageEncoder(tiny_sam), encoder_spec(tiny_cfg), {"image": image},
                    onnx_export.ENCODER_TOLERANCE)
    assert r["passed"], r
