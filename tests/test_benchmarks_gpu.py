"""benchmarks/gpu.py on the CPU (no GPU here): the SDPA attention against SAM's own, and every
path of the script on the tiny model at a 256 px input."""

import copy
import json

import pytest
import torch

from samrt.benchmarks import gpu
from samrt.engines.build import DEFAULT_MIN_MEAN_IOU
from samrt.export import random_sam
from samrt.spec import get_config


@pytest.mark.parametrize("block", [0, 1])  # tiny: block 0 windowed, block 1 global (rel pos in both)
def test_sdpa_attention_equals_sams(block):
    sam = random_sam(get_config("tiny"), seed=3)
    attn = sam.image_encoder.blocks[block].attn
    fast = copy.deepcopy(attn)
    x = torch.randn(2, 14, 14, attn.qkv.in_features) if block == 0 else torch.randn(1, 64, 64, attn.qkv.in_features)
    with torch.no_grad():
        want = attn(x)
        assert gpu.use_sdpa(fast) == 1
        got = fast(x)
    assert attn.use_rel_pos and float(attn.rel_pos_h.detach().abs().max()) > 0  # the bias path is exercised
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_the_script_runs_every_path_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    assert gpu.main(["--out", str(out), "--device", "cpu", "--model-types", "tiny", "--image-size", "256",
                     "--prompts", "1,3", "--steps", "fp32,bf16+sdpa", "--quick", "--iters", "1", "--warmup", "0"]) == 0
    rows = json.loads((out / "gpu.json").read_text())["rows"]
    assert (out / "gpu.csv").is_file()
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("matmul", "encoder", "decoder", "click")}
    assert by_kind["matmul"][0]["bf16_tflops"] > 0
    enc = {r["step"]: r for r in by_kind["encoder"]}
    assert set(enc) == {"fp32", "bf16+sdpa"}
    assert enc["fp32"]["mask_iou_vs_fp32"] == 1.0 and enc["fp32"]["rel_l2_vs_fp32"] < 1e-6
    assert enc["bf16+sdpa"]["sdpa_blocks"] == get_config("tiny").encoder_depth
    assert enc["bf16+sdpa"]["mask_iou_vs_fp32"] >= DEFAULT_MIN_MEAN_IOU and enc["bf16+sdpa"]["passes_gate"]
    assert 0 < enc["bf16+sdpa"]["rel_l2_vs_fp32"] < 0.05
    assert all(r["tflop"] > 0 and r["floor_ms"] > 0 for r in enc.values())
    dec = {(r["decoder"], r["dtype"], r["prompts"]): r for r in by_kind["decoder"]}
    assert set(dec) == {(d, t, p) for d in ("classic", "fast") for t in ("float32", "bfloat16") for p in (1, 3)}
    for p in (1, 3):  # the fast decoder is exact in fp32; bf16 within the gate
        assert dec[("classic", "float32", p)]["mask_iou_vs_classic_fp32"] == 1.0
        assert dec[("fast", "float32", p)]["mask_iou_vs_classic_fp32"] >= 0.999
        assert dec[("fast", "bfloat16", p)]["mask_iou_vs_classic_fp32"] >= DEFAULT_MIN_MEAN_IOU
    clicks = {r["dtype"]: r for r in by_kind["click"]}
    assert set(clicks) == {"float32", "bfloat16"}
    assert all(r["masks_shape"] == [1, 3, *gpu.ORIGINAL_SIZE] and r["p50_ms"] > 0 for r in clicks.values())
