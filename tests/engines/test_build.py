"""Engines: INT8 (QDQ) with calibration and the accuracy gate, FP16 keeping sensitive ops in
FP32, ORT offline optimisation, and TensorRT (skipped where tensorrt is absent)."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest

from samrt.engines import onnxruntime_engines as ortx
from samrt.engines.build import EngineAccuracyError, build_engine, engine_path
from samrt.engines.runner import OnnxRuntimeRunner

from ..conftest import random_image


@pytest.fixture(scope="module")
def export_dir(tiny_export, tmp_path_factory):
    d = tmp_path_factory.mktemp("engines")
    for p in (tiny_export.encoder_path, tiny_export.decoder_path, tiny_export.report_path):
        shutil.copy(p, d)
    return str(d)


CALIB = [random_image(200, 300, seed=s) for s in range(3)]


def test_int8_build_report_and_gate(export_dir):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    report = build_engine(enc, export_dir, "onnxruntime", "int8", CALIB, min_mean_iou=0.0, eval_images=2,
                          speed_repeats=1)
    assert report["path"].endswith("tiny.encoder.int8.onnx") and os.path.isfile(report["path"])
    saved = json.load(open(report["report_path"]))
    assert saved["precision"] == "int8" and saved["details"]["calibration_images"] == 3
    assert 0.0 <= saved["accuracy"]["mean_mask_iou"] <= 1.0 and saved["accuracy"]["masks_compared"] > 0
    assert saved["speed"]["fp32_ms"] > 0 and saved["speed"]["engine_ms"] > 0 and len(saved["sha256"]) == 64
    graph = onnx.load(report["path"]).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # LayerNorm and Softmax stay in float: no DequantizeLinear feeds them directly from a Q pair
    produced_by = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in n.input[:1])
    # Calibration watched the linear layers' tensors only (not the attention maps), and every
    # activation the QDQ graph quantises has its range from it.
    from onnxruntime.quantization import load_tensors_data

    names = set(load_tensors_data(report["path"] + ".calibration.json").data)
    src = onnx.load(enc).graph
    softmax_io = {t for n in src.node if n.op_type == "Softmax" for t in list(n.input) + list(n.output)}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    activations = quantized - {i.name for i in graph.initializer}
    assert names and not (names & softmax_io)
    assert activations and activations <= names


def test_gate_fails_with_a_clear_message(export_dir):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    with pytest.raises(EngineAccuracyError, match=r"mean mask IoU against fp32 .* is below the gate 1.01"):
        build_engine(enc, export_dir, "onnxruntime", "int8", CALIB, min_mean_iou=1.01, eval_images=2,
                     speed_repeats=1)
    report = json.load(open(engine_path(enc, export_dir, "onnxruntime", "int8") + ".report.json"))
    assert report["gate"]["passed"] is False and report["gate"]["min"] == 1.01


def test_an_encoder_copied_alone_is_refused_before_anything_is_written(export_dir, tmp_path):
    """The gate decodes with the export's decoder: an encoder without it is named, not a traceback."""
    from samrt.errors import SamrtError

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(os.path.join(export_dir, "tiny.encoder.onnx"), alone)
    out = tmp_path / "engines"
    with pytest.raises(SamrtError, match=r"missing \[.*tiny\.decoder\.onnx'\].*`samrt export` writes"):
        build_engine(str(alone / "tiny.encoder.onnx"), str(out), "onnxruntime", "int8", CALIB)
    assert not out.exists() and os.listdir(alone) == ["tiny.encoder.onnx"]


@pytest.mark.parametrize("damage", ["junk", "swapped"])
def test_a_graph_that_is_not_the_export_s_is_refused_before_anything_is_written(export_dir, tmp_path, damage):
    """A file ONNX Runtime cannot load, or the decoder under the encoder's name: named, no traceback,
    and no output folder made."""
    from samrt.errors import SamrtError

    src = tmp_path / "export"
    src.mkdir()
    if damage == "junk":
        (src / "tiny.encoder.onnx").write_text("not a model")
        shutil.copy(os.path.join(export_dir, "tiny.decoder.onnx"), src)
        expect = r"tiny\.encoder\.onnx: got a file ONNX Runtime cannot load .*expected the encoder graph"
    else:
        shutil.copy(os.path.join(export_dir, "tiny.decoder.onnx"), src / "tiny.encoder.onnx")
        shutil.copy(os.path.join(export_dir, "tiny.decoder.onnx"), src)
        expect = r"tiny\.encoder\.onnx: got a graph with inputs \['image_embeddings'.*expected the encoder graph"
    out = tmp_path / "engines"
    with pytest.raises(SamrtError, match=expect):
        build_engine(str(src / "tiny.encoder.onnx"), str(out), "onnxruntime", "int8", CALIB)
    assert not out.exists()


def test_fp16_keeps_sensitive_ops_in_fp32(export_dir, tmp_path):
    out = ortx.fp16_onnx_from_onnx(os.path.join(export_dir, "tiny.encoder.onnx"), str(tmp_path / "e.fp16.onnx"))
    model = onnx.load(out)
    from onnx import TensorProto

    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.output)
             + list(model.graph.input)}
    checked = 0
    for n in model.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            for name in list(n.input[:1]) + list(n.output[:1]):
                if name in types:
                    assert types[name] == TensorProto.FLOAT, (n.op_type, name)
                    checked += 1
    assert checked > 0
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)  # the rest is fp16
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 I/O kept


def test_fp16_runs_and_stays_close(export_dir, tmp_path):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    out = ortx.fp16_onnx_from_onnx(enc, str(tmp_path / "e.fp16.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    a = OnnxRuntimeRunner(enc).run({"image": x})["image_embeddings"]
    b = OnnxRuntimeRunner(out).run({"image": x})["image_embeddings"]
    assert np.isfinite(b).all()
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.99, cos


def test_offline_optimisation_is_its_own_model_and_equal(export_dir, tmp_path):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    out = ortx.optimized_onnx_from_onnx(enc, str(tmp_path / "e.opt.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    np.testing.assert_allclose(OnnxRuntimeRunner(out).run({"image": x})["image_embeddings"],
                               OnnxRuntimeRunner(enc).run({"image": x})["image_embeddings"], atol=1e-4)


def test_engine_names_carry_settings():
    assert engine_path("/x/vit_b.encoder.onnx", "/o", "onnxruntime", "int8") == "/o/vit_b.encoder.int8.onnx"
    assert engine_path("/x/vit_b.encoder.onnx", "/o", "tensorrt", "fp16") == "/o/vit_b.encoder.fp16.plan"


def _tensorrt_reason():
    try:
        import tensorrt  # noqa: F401
        import torch

        if not torch.cuda.is_available():
            return "tensorrt imports but no CUDA device"
        return None
    except Exception as e:
        return f"tensorrt is not installed here ({type(e).__name__}); it runs in NVIDIA's Triton container"


@pytest.mark.tensorrt
@pytest.mark.skipif(_tensorrt_reason() is not None, reason=str(_tensorrt_reason()))
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_plan(export_dir, precision):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    report = build_engine(enc, export_dir, "tensorrt", precision, CALIB, min_mean_iou=0.0, eval_images=2,
                          device="cuda")
    assert report["path"].endswith(f".{precision}.plan") and os.path.isfile(report["path"] + ".json")


def test_tensorrt_absent_is_a_clear_error():
    from samrt.engines.tensorrt_engine import TensorRTUnavailable, tensorrt_version

    if tensorrt_version() is not None:
        pytest.skip("tensorrt is installed here")
    from samrt.engines.tensorrt_engine import TensorRTRunner

    with pytest.raises(TensorRTUnavailable, match="TensorRT is not available here"):
        TensorRTRunner("nothing.plan")


def test_the_gate_encodes_each_scene_once_per_process_and_times_both_encoders(tiny_export):
    """The fp32 reference embeddings of the held-out scenes are kept for the process (the encoder's
    gate and then the decoder's use the same ones: vit_h took ~1.5 min an image here), and the
    encoder's speed comes from the gate's own runs."""
    from samrt.engines import build as engine_build
    from samrt.engines.decoders import ClassicDecoder
    from samrt.scenes import eval_scenes

    class Counting:
        def __init__(self, runner):
            self.runner, self.path, self.input_shapes, self.runs = runner, runner.path, runner.input_shapes, 0

        def run(self, feeds, outputs=None):
            self.runs += 1
            return self.runner.run(feeds, outputs)

    engine_build._REFERENCE_EMBEDDINGS.clear()
    reference = Counting(OnnxRuntimeRunner(tiny_export.encoder_path))
    engine = Counting(OnnxRuntimeRunner(tiny_export.encoder_path))
    decoder = ClassicDecoder(OnnxRuntimeRunner(tiny_export.decoder_path))
    scenes = eval_scenes(3)
    lines = []
    first = engine_build.accuracy_against_fp32(reference, engine, decoder, scenes, progress=lines.append)
    assert reference.runs == 3 and engine.runs == 3 and len(first["fp32_encoder_ms"]) == 3
    assert lines[-1].startswith("    scene 3/3 encoded (")
    again = engine_build.accuracy_against_fp32(reference, reference, decoder, scenes, engine_decoder=decoder)
    assert reference.runs == 3 and again["mean_mask_iou"] == 1.0
    assert again["fp32_encoder_ms"] == first["fp32_encoder_ms"]  # the memoized runs' times
    speed = engine_build._speed("encoder", reference, decoder, engine, scenes[0].image, 3, first)
    assert reference.runs == 3 and engine.runs == 3  # nothing run again
    assert speed["fp32_ms"] == float(np.median(first["fp32_encoder_ms"])) and "gate's held-out scenes" in speed["timed"]
    engine_build._REFERENCE_EMBEDDINGS.clear()
