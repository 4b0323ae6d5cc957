"""OpenVINO engines on the tiny export: the fp32 runner against ONNX Runtime, bf16 and int8
through the accuracy gate, the decoder, naming, input checks and the runner factory.

Tolerances: OpenVINO fp32 against ONNX Runtime fp32 within atol 1e-4 + rtol 1e-4 on the
embedding and atol 1e-3 on the decoder's low-res logits (measured here: about 1e-5); bf16 and
int8 are judged by the build's gate (mean mask IoU against fp32 on held-out scenes)."""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samrt[openvino]')")

from samrt.engines import runner_for_engine  # noqa: E402
from samrt.engines import openvino_engine as ove  # noqa: E402
from samrt.engines.build import DEFAULT_MIN_MEAN_IOU, EngineAccuracyError, build_engine, engine_path  # noqa: E402
from samrt.engines.runner import OnnxRuntimeRunner  # noqa: E402
from samrt.errors import InputError, SamrtError  # noqa: E402

from ..conftest import random_image  # noqa: E402

EMB_ATOL, EMB_RTOL = 1e-4, 1e-4
LOGIT_ATOL = 1e-3
CALIB = [random_image(200, 300, seed=s) for s in range(2)]


@pytest.fixture(scope="module")
def export_dir(tiny_export, tmp_path_factory):
    d = tmp_path_factory.mktemp("ov_engines")
    for p in (tiny_export.encoder_path, tiny_export.decoder_path, tiny_export.report_path):
        shutil.copy(p, d)
    return str(d)


@pytest.fixture(scope="module")
def image_input():
    return np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)


def decoder_feeds(p=3, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"image_embeddings": rng.standard_normal((p, 256, 64, 64)).astype(np.float32),
            "point_coords": rng.uniform(0, 1024, (p, n, 2)).astype(np.float32),
            "point_labels": np.ones((p, n), np.float32),
            "mask_input": np.zeros((p, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros((p,), np.float32)}


def test_fp32_ir_matches_onnxruntime(export_dir, image_input, tmp_path):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    xml = ove.ir_from_onnx(enc, str(tmp_path / "tiny.encoder.fp32.xml"), "fp32")
    assert os.path.isfile(xml[:-4] + ".bin")
    runner = ove.OpenVINORunner(xml)
    assert runner.precision == "fp32" and runner.inference_precision == "f32"  # read from the IR, explicit hint
    assert runner.input_names == ["image"] and runner.output_names == ["image_embeddings"]
    assert runner.input_shapes["image"] == (-1, 3, 1024, 1024)  # dynamic batch is -1
    ours = runner.run({"image": image_input})["image_embeddings"]
    ref = OnnxRuntimeRunner(enc).run({"image": image_input})["image_embeddings"]
    np.testing.assert_allclose(ours, ref, atol=EMB_ATOL, rtol=EMB_RTOL)


def test_fp32_decoder_matches_onnxruntime_from_onnx_directly(export_dir):
    dec = os.path.join(export_dir, "tiny.decoder.onnx")
    feeds = decoder_feeds()
    ours = ove.OpenVINORunner(dec, "fp32").run(feeds)  # an .onnx file compiles without an IR
    ref = OnnxRuntimeRunner(dec).run(feeds)
    np.testing.assert_allclose(ours["low_res_masks"], ref["low_res_masks"], atol=LOGIT_ATOL, rtol=0)
    np.testing.assert_allclose(ours["iou_predictions"], ref["iou_predictions"], atol=1e-4, rtol=0)


def test_bad_inputs_say_what_was_expected(export_dir, image_input):
    runner = ove.OpenVINORunner(os.path.join(export_dir, "tiny.encoder.onnx"), "fp32")
    with pytest.raises(InputError, match=r"got inputs \['img'\], expected \['image'\]"):
        runner.run({"img": image_input})
    with pytest.raises(InputError, match=r"image: got dtype float64, expected float32"):
        runner.run({"image": image_input.astype(np.float64)})
    with pytest.raises(InputError, match=r"image: got shape \(1, 3, 512, 512\), expected \[-1, 3, 1024, 1024\]"):
        runner.run({"image": image_input[:, :, :512, :512]})
    dec = ove.OpenVINORunner(os.path.join(export_dir, "tiny.decoder.onnx"), "fp32")
    feeds = decoder_feeds()
    feeds["point_labels"] = feeds["point_labels"][..., None]
    with pytest.raises(InputError, match=r"point_labels: got shape \(3, 2, 1\), expected \[-1, -1\]"):
        dec.run(feeds)
    with pytest.raises(FileNotFoundError, match="expected an existing .xml"):
        ove.OpenVINORunner(os.path.join(export_dir, "nothing.xml"))


def test_bf16_support_is_classified(monkeypatch):
    info = ove.bf16_support()
    assert info["mode"] in ("native", "emulated", "unavailable", "unknown") and info["message"]
    assert ove.cpu_supports_bf16() == (info["mode"] == "native")

    class FakeCore:
        def __init__(self, caps):
            self.caps = caps

        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return self.caps

    monkeypatch.setattr(ove, "_core", lambda: FakeCore(["FP32", "INT8"]))
    assert ove.bf16_support()["mode"] == "unavailable"
    monkeypatch.setattr(ove, "_core", lambda: FakeCore(["FP32", "BF16", "INT8"]))
    monkeypatch.setattr(ove, "_cpu_flags", lambda: {"avx512f", "avx512_core"})
    assert ove.bf16_support()["mode"] == "emulated"
    monkeypatch.setattr(ove, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert ove.bf16_support()["mode"] == "native"
    monkeypatch.setattr(ove, "_cpu_flags", lambda: None)
    assert ove.bf16_support()["mode"] == "unknown"
    assert ove.float_precision_for("int8") == "fp32"  # int8's float part: bf16 only where native


def _check_report(report, precision, graph):
    saved = json.load(open(report["report_path"]))
    assert saved["backend"] == "openvino" and saved["precision"] == precision and saved["graph"] == graph
    assert saved["versions"]["openvino"] == ove.openvino_version()
    details = saved["details"]
    assert details["bf16_support"]["mode"] in ("native", "emulated", "unavailable", "unknown")
    assert details["weights_bytes"] > 0 and len(details["weights_sha256"]) == 64
    want = {"fp32": "f32", "bf16": "bf16" if details["bf16_support"]["mode"] != "unavailable" else "f32"}
    if precision in want:
        assert details["runtime"]["inference_precision"] == want[precision]
    if precision != "fp32" and details["bf16_support"]["mode"] != "native":
        assert details["bf16_note"]  # the report says bf16 is emulated or unavailable here
    acc = saved["accuracy"]
    assert acc["masks_compared"] > 0 and 0.0 <= acc["mean_mask_iou"] <= 1.0
    assert saved["speed"]["engine_ms"] > 0 and saved["gate"]["min"] == report["gate"]["min"]
    return saved


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_build_encoder(export_dir, precision):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    # fp32 must reproduce the reference's masks; bf16 on random weights moves some masks, the
    # default gate (0.98) is asserted as it stands.
    report = build_engine(enc, export_dir, "openvino", precision, eval_images=2, speed_repeats=1)
    assert report["path"] == os.path.join(export_dir, f"tiny.encoder.{precision}.xml")
    saved = _check_report(report, precision, "encoder")
    if precision == "fp32":
        assert saved["accuracy"]["mean_mask_iou"] == 1.0 and saved["accuracy"]["mean_embedding_cosine"] > 0.99999
    assert saved["gate"]["passed"] is True


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_build_decoder(export_dir, precision):
    dec = os.path.join(export_dir, "tiny.decoder.onnx")
    report = build_engine(dec, export_dir, "openvino", precision, eval_images=2, speed_repeats=1)
    assert report["path"].endswith(f"tiny.decoder.{precision}.xml")
    saved = _check_report(report, precision, "decoder")
    assert saved["gate"]["passed"] is True
    assert runner_for_engine(report["path"]).precision == precision  # recorded in the IR


@pytest.mark.slow
@pytest.mark.parametrize("gate", [0.0, pytest.param(DEFAULT_MIN_MEAN_IOU, marks=pytest.mark.release)])
def test_build_encoder_int8_through_the_gate(export_dir, gate):
    """NNCF INT8 of a random-init tiny encoder through NNCF's accuracy control, with the gate as
    given: the test asserts whichever way the gate went, and that a failure still wrote its report.
    Gate 0: the quantised model is accepted as it comes (no layer restored, ~10 s). The default gate
    (release only): on random weights NNCF restores layers to float up to its limit (~200 s here)."""
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    out = engine_path(enc, export_dir, "openvino", "int8")
    try:
        report = build_engine(enc, export_dir, "openvino", "int8", CALIB, min_mean_iou=gate, eval_images=2,
                              speed_repeats=1)
        passed = True
    except EngineAccuracyError as e:
        assert f"is below the gate {gate}" in str(e)
        report, passed = json.load(open(out + ".report.json")), False
        report["report_path"] = out + ".report.json"
    saved = _check_report(report, "int8", "encoder")
    assert saved["gate"]["passed"] is passed
    q = saved["details"]["quantization"]
    assert q["calibration_images"] == len(CALIB) and q["model_type"] == "transformer"
    assert saved["details"]["runtime"]["inference_precision"] == ("bf16" if ove.cpu_supports_bf16() else "f32")
    import openvino as ov

    model = ov.Core().read_model(out)
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    fq = [op for op in ops.values() if op.get_type_name() == "FakeQuantize"]
    assert fq, "no quantisation nodes in the int8 IR"
    # LayerNorm (MVN) and Softmax are never fed straight by a quantiser: they run in float.
    for op in ops.values():
        if op.get_type_name() in ("MVN", "Softmax"):
            assert all(i.get_source_output().get_node().get_type_name() != "FakeQuantize" for i in op.inputs())
    # The layers the recipe keeps in float (the neck, the attention products) have no quantiser on any input.
    kept = saved["details"]["quantization"]["float_nodes"]
    assert kept and all(n in ops for n in kept)
    for name in kept:
        sources = [i.get_source_output().get_node().get_type_name() for i in ops[name].inputs()]
        assert "FakeQuantize" not in sources, (name, sources)


def test_build_encoder_int8_dynamic(export_dir, tmp_path):
    """int8-dynamic (no calibration): the linear layers' weights int8 in the IR, the convolutions
    in float, the run-time group size recorded in the IR and set on the compiled model; the
    embedding stays close to fp32 and the default gate is asserted as it stands."""
    import openvino as ov

    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    report = build_engine(enc, export_dir, "openvino", "int8-dynamic", eval_images=2, speed_repeats=1)
    assert report["path"] == os.path.join(export_dir, "tiny.encoder.int8-dynamic.xml")
    saved = _check_report(report, "int8-dynamic", "encoder")
    q = saved["details"]["quantization"]
    group = q["dynamic_quantization_group_size"]
    assert q["calibration_images"] == 0 and group in ove.DYNAMIC_GROUP_SIZES and q["int8_layers"] > 0
    assert saved["details"]["runtime"]["dynamic_quantization_group_size"] == group
    assert saved["details"]["runtime"]["inference_precision"] == ("bf16" if ove.cpu_supports_bf16() else "f32")
    assert saved["accuracy"]["mean_embedding_cosine"] > 0.999 and saved["gate"]["passed"] is True
    model = ov.Core().read_model(report["path"])
    int8 = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    assert len(int8) == q["int8_layers"]
    for op in model.get_ops():  # convolutions keep float weights
        if op.get_type_name() == "Convolution":
            w = op.input(1).get_source_output().get_node()
            assert not (w.get_type_name() == "Constant" and w.get_element_type() == ov.Type.i8)
    runner = runner_for_engine(report["path"])
    assert runner.precision == "int8-dynamic" and runner.dynamic_group_size == group
    # a plain IR records no group size (its weights are float: nothing for OpenVINO to quantise)
    plain = ove.ir_from_onnx(enc, str(tmp_path / "plain.xml"), "bf16")
    assert runner_for_engine(plain).dynamic_group_size == 0


def test_dynamic_group_size_divides_every_linear_layer():
    import openvino as ov
    import openvino.opset13 as ops

    def model_with(*ks):
        x = ops.parameter([1, 4, ks[0]], np.float32)
        y = x
        for k, n in zip(ks, ks[1:] + (8,)):
            y = ops.matmul(y, ops.constant(np.zeros((k, n), np.float32)), False, False)
        return ov.Model([y], [x])

    assert ove.dynamic_group_size(model_with(768, 3072)) == 256
    assert ove.dynamic_group_size(model_with(192, 768)) == 64
    assert ove.dynamic_group_size(model_with(24)) == 0


def test_int8_dot_support_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(ove, "_cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert ove.int8_dot_support()
    monkeypatch.setattr(ove, "_cpu_flags", lambda: {"avx2"})
    assert not ove.int8_dot_support()
    monkeypatch.setattr(ove, "_cpu_flags", lambda: None)
    assert not ove.int8_dot_support()


def test_precision_and_backend_combinations_are_checked(export_dir):
    enc = os.path.join(export_dir, "tiny.encoder.onnx")
    dec = os.path.join(export_dir, "tiny.decoder.onnx")
    with pytest.raises(SamrtError, match=r"--precision bf16 with --backend onnxruntime: .*built by --backend openvino"):
        build_engine(enc, export_dir, "onnxruntime", "bf16")
    with pytest.raises(SamrtError, match=r"--precision fp16 with --backend openvino: expected one of"):
        build_engine(enc, export_dir, "openvino", "fp16")
    with pytest.raises(SamrtError, match=r"--device cuda with --backend openvino"):
        build_engine(enc, export_dir, "openvino", "fp32", device="cuda")
    for precision in ("int8", "int8-dynamic"):
        with pytest.raises(SamrtError, match=r"the decoder stays in float"):
            build_engine(dec, export_dir, "openvino", precision, eval_images=1)
    with pytest.raises(SamrtError, match=r"--precision int8-dynamic with --backend onnxruntime: expected one of"):
        build_engine(enc, export_dir, "onnxruntime", "int8-dynamic")


def test_cli_rejects_bf16_for_onnxruntime(export_dir, capsys):
    from samrt.app.cli import main

    code = main(["build-engine", "--onnx", os.path.join(export_dir, "tiny.encoder.onnx"), "--backend", "onnxruntime",
                 "--precision", "bf16", "--out", export_dir])
    assert code == 2 and "bf16 is built by --backend openvino" in capsys.readouterr().err


def test_engine_names_and_runner_factory(export_dir, tmp_path):
    assert engine_path("/x/vit_b.encoder.onnx", "/o", "openvino", "bf16") == "/o/vit_b.encoder.bf16.xml"
    assert engine_path("/x/vit_b.decoder.onnx", "/o", "openvino", "fp32") == "/o/vit_b.decoder.fp32.xml"
    dec = os.path.join(export_dir, "tiny.decoder.onnx")
    assert isinstance(runner_for_engine(dec), OnnxRuntimeRunner)
    xml = ove.ir_from_onnx(dec, str(tmp_path / "tiny.decoder.bf16.xml"), "bf16")
    runner = runner_for_engine(xml, threads=1)
    assert isinstance(runner, ove.OpenVINORunner) and runner.precision == "bf16"
    assert runner.settings()["inference_num_threads"] == 1
    with pytest.raises(SamrtError, match=r"got extension '.pt', expected one of"):
        runner_for_engine("model.pt")
    with pytest.raises(SamrtError, match=r"got device 'cuda', expected 'cpu'"):
        runner_for_engine(xml, device="cuda")


def test_static_shape_compiles_agree_with_the_dynamic_model(export_dir):
    """static_shapes=2: the first two shapes get their own static compile, the third runs on the
    dynamic model; every answer equals the dynamic model's (fp32, atol 1e-5)."""
    ir = os.path.join(export_dir, "tiny.decoder.static_test.xml")
    ove.ir_from_onnx(os.path.join(export_dir, "tiny.decoder.onnx"), ir, "fp32")
    dynamic = ove.OpenVINORunner(ir)
    static = ove.OpenVINORunner(ir, static_shapes=2)
    for p, n in ((1, 2), (3, 2), (2, 3), (1, 2)):
        f = decoder_feeds(p, n, seed=p + n)
        a, b = dynamic.run(f), static.run(f)
        for name in a:
            np.testing.assert_allclose(b[name], a[name], atol=1e-5)
    assert sorted(static._static) == sorted([tuple(tuple(s) for s in shapes) for shapes in (
        [(1, 256, 64, 64), (1, 2, 2), (1, 2), (1, 1, 256, 256), (1,)],
        [(3, 256, 64, 64), (3, 2, 2), (3, 2), (3, 1, 256, 256), (3,)])])


def test_the_static_bf16_failure_and_its_mitigation(export_dir):
    """engines/openvino_repro.py on this CPU: with Snippets off (what samrt compiles decoders with)
    every static bf16 shape agrees with f32 within the static-compile bounds. Whether OpenVINO's
    8-token failure shows with Snippets on is printed (it did on an Intel Xeon and an AMD EPYC)."""
    from samrt.engines.openvino_repro import reproduce

    dec = os.path.join(export_dir, "tiny.decoder.onnx")
    if ove.OpenVINORunner(dec, "bf16").inference_precision != "bf16":
        pytest.skip("this CPU runs bf16 in f32: nothing to reproduce")
    rows = reproduce(dec, runs=2)
    assert [(r["points"], r["snippets"]) for r in rows] == [(n, s) for n in (2, 3, 4) for s in (True, False)]
    for r in rows:
        if not r["snippets"]:
            assert min(r["mask_agreement"]) >= ove.STATIC_MIN_AGREEMENT, r
            assert max(r["max_iou_diff"]) <= ove.STATIC_MAX_SCORE_DIFF, r
    print("\n[openvino static bf16, snippets on]", [(r["points"], r["mask_agreement"]) for r in rows if r["snippets"]])


def test_a_static_compile_that_disagrees_is_never_served(export_dir):
    """The classic decoder in bf16 with Snippets on (OpenVINO's default), static shapes for 2, 3 and
    4 points: every shape either runs on a checked static compile that agrees with f32, or was
    refused (and runs on the dynamic model); the answers served agree with f32 either way."""
    ir = os.path.join(export_dir, "tiny.decoder.static_bf16.xml")
    ove.ir_from_onnx(os.path.join(export_dir, "tiny.decoder.onnx"), ir, "bf16")
    runner = ove.OpenVINORunner(ir, static_shapes=4, snippets=True)
    if runner.inference_precision != "bf16":
        pytest.skip("this CPU runs the bf16 IR in f32: nothing to check")
    reference = ove.OpenVINORunner(ir, "fp32")
    for n in (2, 3, 4):
        f = decoder_feeds(1, n, seed=n)
        got, ref = runner.run(f), reference.run(f)
        assert ove._static_disagreement(got, ref) is None, (n, runner.refused_shapes)
    print("\n[refused static shapes]", runner.refused_shapes)


def test_static_disagreement_bounds():
    ref = {"low_res_masks": np.linspace(-1, 1, 1000, dtype=np.float32).reshape(1, 1, 10, 100),
           "iou_predictions": np.array([[0.5]], np.float32)}
    assert ove._static_disagreement(dict(ref), ref) is None
    flipped = ref["low_res_masks"].copy()
    flipped.reshape(-1)[:20] *= -1  # 2% of the signs
    assert "mask pixels agree 0.98" in ove._static_disagreement({**ref, "low_res_masks": flipped}, ref)
    assert "scores differ by up to 0.05" in ove._static_disagreement(
        {**ref, "iou_predictions": np.array([[0.55]], np.float32)}, ref)
