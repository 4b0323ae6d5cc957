"""samrt.memory: the parameter counts are exact, the estimate adds its parts, a start that would
not fit is refused with the figures."""

import pytest

from samrt.errors import SamrtError
from samrt.memory import (GIB, InsufficientMemoryError, MemoryEstimate, available_memory, check_fits, decoder_params,
                          encoder_params, estimate_export_memory, estimate_server_memory)


@pytest.mark.parametrize("model_type", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_parameter_counts_equal_the_official_modules(model_type):
    torch = pytest.importorskip("torch")
    from samrt.export.checkpoint import build_sam
    from samrt.spec import get_config

    with torch.device("meta"):  # the official modules' shapes, no memory
        sam = build_sam(get_config(model_type))
    enc = sum(p.numel() for p in sam.image_encoder.parameters())
    rest = sum(p.numel() for n, p in sam.named_parameters() if not n.startswith("image_encoder."))
    assert encoder_params(model_type) == enc
    assert decoder_params(model_type) == rest


def test_the_alias_default_is_vit_h_and_bad_input_is_named():
    assert encoder_params("default") == encoder_params("vit_h") == 637_026_048
    with pytest.raises(SamrtError, match="unknown model type 'vit_x'"):
        encoder_params("vit_x")
    with pytest.raises(SamrtError, match=r"model type: got 'auto', expected a model type"):
        estimate_server_memory("auto", "openvino", "bf16")
    with pytest.raises(SamrtError, match=r"encoder engine: got openvino fp16, expected one of"):
        estimate_server_memory("vit_b", "openvino", "fp16")
    with pytest.raises(SamrtError, match=r"encoder_batch: got 0, expected at least 1"):
        estimate_server_memory("vit_b", "openvino", "bf16", encoder_batch=0)


def test_the_estimate_is_the_sum_of_its_parts_and_grows_with_the_model():
    b = estimate_server_memory("vit_b", "onnxruntime", "fp32")
    h = estimate_server_memory("vit_h", "onnxruntime", "fp32")
    assert b.total == sum(b.parts.values()) and h.total > b.total
    assert h.parts["encoder weights"] == 637_026_048 * 4
    assert estimate_server_memory("vit_h", "openvino", "bf16").parts["encoder weights"] == 637_026_048 * 2
    # a CPU runs a batch's images one at a time (sam_image_encoder): the batch does not count there
    assert estimate_server_memory("vit_h", "onnxruntime", "fp32", encoder_batch=1).parts == h.parts
    gpu = estimate_server_memory("vit_h", "tensorrt", "fp16", encoder_batch=4, device="cuda")
    one = estimate_server_memory("vit_h", "tensorrt", "fp16", encoder_batch=1, device="cuda")
    assert gpu.parts["encoder activations"] == 4 * one.parts["encoder activations"] > 0
    assert estimate_server_memory("vit_b", "openvino", "fp32", amg=False).parts["automatic masks"] == 0
    assert estimate_server_memory("vit_b", "onnxruntime", "fp32", cache_bytes=0).parts["embedding cache"] == 0
    assert estimate_export_memory("vit_h").total > estimate_export_memory("vit_b").total
    assert "a vit_h server (onnxruntime fp32 encoder, one image at a time): about" in h.describe()
    assert "4 images at once" in gpu.describe()


def test_a_start_that_would_not_fit_is_refused_with_the_figures():
    est = MemoryEstimate("a test server", {"weights": 3 * GIB, "activations": 2 * GIB})
    check_fits(est, available=6 * GIB)  # fits: nothing happens
    with pytest.raises(InsufficientMemoryError,
                       match=r"a test server: about 5\.0 GiB \(weights 3\.0, activations 2\.0 GiB\); memory available "
                             r"on this machine: got 4\.0 GiB, expected at least 5\.0 GiB: it would not fit; pass "
                             r"--no-memory-check to start anyway"):
        check_fits(est, available=4 * GIB, override="pass --no-memory-check to start anyway")
    check_fits(est, available=4 * GIB, already_held=1 * GIB)  # a loaded model counted in the estimate: fits


def test_available_memory_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20971520 kB\n")
    assert available_memory(str(f)) == 20 * GIB
    f.write_text("MemTotal: 1 kB\n")
    assert available_memory(str(f)) is None
    assert available_memory(str(tmp_path / "missing")) is None
    assert available_memory() is None or available_memory() > 0


def test_a_build_takes_the_reference_and_the_engine_and_openvino_maps_fp32_weights():
    from samrt.memory import IR_WEIGHT_BYTES, estimate_build_memory

    h = estimate_build_memory("vit_h", "openvino")
    assert 14 * GIB < h.total < 24 * GIB  # vit_h's build peaked at 16.0 GiB RSS here (docs/memory.md)
    assert estimate_build_memory("vit_b", "openvino").total < h.total
    with pytest.raises(SamrtError, match=r"engine backend: got 'x', expected one of"):
        estimate_build_memory("vit_b", "x")
    int8 = estimate_build_memory("vit_b", "openvino", "int8")  # NNCF calibration: 14.9 GiB RSS measured here
    assert 14 * GIB < int8.total < 18 * GIB and "int8 calibration" in int8.describe()
    assert estimate_build_memory("vit_b", "onnxruntime", "int8").total < int8.total  # ORT's QDQ build: no NNCF
    bf16 = estimate_server_memory("vit_h", "openvino", "bf16")  # the IR keeps fp32 weights; bf16 is a runtime hint
    assert bf16.parts["encoder weights file (mapped)"] == 637_026_048 * IR_WEIGHT_BYTES["bf16"] == 637_026_048 * 4
    assert estimate_server_memory("vit_h", "onnxruntime", "fp32").parts["encoder weights file (mapped)"] == 0
    assert "mapped" not in estimate_server_memory("vit_h", "onnxruntime", "fp32").describe()  # zero parts unsaid
