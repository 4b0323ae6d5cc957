"""Per-image tensors kept as bfloat16 bits for a decoder that runs in bf16 on OpenVINO
(`runner.to_bf16_bits`, `OpenVINORunner(bf16_inputs=...)`, `FastDecoder`'s state).

Tolerances: none where the claim is identity. A bf16 model rounds an f32 input to bf16 itself;
given the bits already rounded the same way it must answer the same bits (np.array_equal). The
conversion itself must equal torch's float32 -> bfloat16 cast (round to nearest even) bit for bit."""

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samrt[openvino]')")

from samrt.engines import openvino_engine as ove  # noqa: E402
from samrt.engines.decoders import IMAGE_STATE, decoder_from_paths  # noqa: E402
from samrt.engines.runner import BF16_BITS, from_bf16_bits, to_bf16_bits  # noqa: E402
from samrt.errors import InputError, SamrtError  # noqa: E402

KEPT = IMAGE_STATE[1:]  # image_prep's three tensors


def test_to_bf16_bits_rounds_as_torch_does():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_normal(50_000).astype(np.float32) * 10,
                        np.array([np.inf, -np.inf, 0.0, -0.0, 1e-40, 3.4e38, 1.00390625, 1.01171875], np.float32)])
    bits = to_bf16_bits(a)
    assert bits.dtype == BF16_BITS and bits.shape == a.shape
    theirs = torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, theirs)
    back = from_bf16_bits(bits)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, torch.from_numpy(a).to(torch.bfloat16).float().numpy())
    # NaN (any payload, including one whose rounding would carry into the sign) stays NaN
    nans = np.array([0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001], np.uint32).view(np.float32)
    assert np.isnan(from_bf16_bits(to_bf16_bits(nans))).all()


@pytest.fixture(scope="module")
def fast_irs(tiny_export, tmp_path_factory):
    """The tiny fast decoder's three graphs as bf16 IRs, the way `samrt build-engine` names them."""
    d = str(tmp_path_factory.mktemp("bf16_inputs"))
    paths = {}
    for graph, src in tiny_export.fast_decoder_paths.items():
        xml = os.path.join(d, os.path.basename(src).replace(".onnx", ".bf16.xml"))
        ove.ir_from_onnx(src, xml, "bf16")
        paths[graph] = xml
    return paths


def _native_bf16():
    if ove.bf16_support()["mode"] != "native":
        pytest.skip(f"bf16 is not native here ({ove.bf16_support()['message']}): the runner keeps f32 inputs")


def _click_feeds(state, slots=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.ones((1, slots), np.float32)
    labels[0, -1] = -1
    return dict(state, point_coords=rng.uniform(0, 1024, (1, slots, 2)).astype(np.float32), point_labels=labels)


def test_a_bf16_model_answers_the_same_bits_to_bf16_inputs(fast_irs):
    _native_bf16()
    prep = ove.OpenVINORunner(fast_irs["image_prep"])
    emb = np.random.default_rng(1).standard_normal((1, 256, 64, 64)).astype(np.float32)
    state = prep.run({"image_embeddings": emb})
    state["image_tokens"] = np.ascontiguousarray(emb[0].reshape(256, -1).T)
    plain = ove.OpenVINORunner(fast_irs["fast_decoder"], snippets=False)
    kept = ove.OpenVINORunner(fast_irs["fast_decoder"], snippets=False, bf16_inputs=KEPT)
    assert plain.bf16_inputs == () and kept.bf16_inputs == KEPT
    assert kept.settings()["bf16_inputs"] == list(KEPT)
    feeds = _click_feeds(state)
    as_bits = dict(feeds, **{k: to_bf16_bits(feeds[k]) for k in KEPT})
    a, b = plain.run(feeds), kept.run(as_bits)
    for name in a:
        np.testing.assert_array_equal(b[name], a[name])
    # static compiles (checked against the f32 model on the same inputs) likewise
    static_plain = ove.OpenVINORunner(fast_irs["fast_decoder"], snippets=False, static_shapes=2)
    static_kept = ove.OpenVINORunner(fast_irs["fast_decoder"], snippets=False, static_shapes=2, bf16_inputs=KEPT)
    assert static_kept.compile_static(as_bits), static_kept.refused_shapes
    assert static_plain.compile_static(feeds), static_plain.refused_shapes
    np.testing.assert_array_equal(static_kept.run(as_bits)["low_res_masks"], static_plain.run(feeds)["low_res_masks"])
    # float32 where bits are expected is refused, naming both dtypes
    with pytest.raises(InputError, match=r"t2i_keys_t: got dtype float32, expected uint16"):
        kept.run(feeds)


def test_bf16_inputs_must_name_inputs_of_the_model(fast_irs):
    with pytest.raises(SamrtError, match=r"bf16_inputs got \['embedding'\], expected inputs of"):
        ove.OpenVINORunner(fast_irs["fast_decoder"], bf16_inputs=("embedding",))


def test_an_fp32_model_keeps_float32_inputs(fast_irs, tmp_path):
    xml = str(tmp_path / "fast.fp32.xml")
    shutil.copy(fast_irs["fast_decoder"], xml)
    shutil.copy(fast_irs["fast_decoder"][:-4] + ".bin", xml[:-4] + ".bin")
    runner = ove.OpenVINORunner(xml, "fp32", bf16_inputs=KEPT)
    assert runner.bf16_inputs == ()
    assert runner.input_dtypes["t2i_keys_t"] == np.float32


def test_fast_decoder_keeps_bits_and_takes_either_kind_of_state(fast_irs, tiny_export):
    """OpenVINO bf16: prepare_image keeps image_prep's tensors as bits (half the bytes), the
    embedding's tokens in float32; a float32 state (from an fp32 server's disk tier) answers the
    same bits. ONNX Runtime: float32 state, and a bits state is converted back."""
    _native_bf16()
    dec = decoder_from_paths(fast_irs, static_shapes=4)
    emb = np.random.default_rng(2).standard_normal((1, 256, 64, 64)).astype(np.float32)
    state = dec.prepare_image(emb)
    assert {k: state[k].dtype for k in IMAGE_STATE} == {"image_tokens": np.float32, **{k: BF16_BITS for k in KEPT}}
    coords = np.array([[[500.0, 400.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1.0, -1.0]], np.float32)
    mask = np.random.default_rng(3).standard_normal((1, 1, 256, 256)).astype(np.float32)
    as_f32 = dict(state, **{k: from_bf16_bits(state[k]) for k in KEPT})
    for mask_input in (None, mask):
        a = dec.decode(emb, state, coords, labels, mask_input)
        b = dec.decode(emb, as_f32, coords, labels, mask_input)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    exact = decoder_from_paths(tiny_export.fast_decoder_paths)  # ONNX Runtime fp32: float32 state
    f32_state = exact.prepare_image(emb)
    assert all(f32_state[k].dtype == np.float32 for k in IMAGE_STATE)
    bits_state = dict(f32_state, **{k: to_bf16_bits(f32_state[k]) for k in KEPT})
    low, iou = exact.decode(emb, bits_state, coords, labels)
    ref_low, ref_iou = exact.decode(emb, dict(f32_state, **{k: from_bf16_bits(bits_state[k]) for k in KEPT}),
                                    coords, labels)
    np.testing.assert_array_equal(low, ref_low)
    np.testing.assert_array_equal(iou, ref_iou)


@pytest.mark.parametrize("static_shapes", [0, 8])
def test_a_prompt_answers_the_same_bits_in_a_run_of_any_size_on_one_kind_of_compile(fast_irs, static_shapes):
    """docs/fast-decoder.md "Batches and bf16": in bf16 the static compiles and the dynamic model
    round differently, but on one kind a prompt's rows do not depend on the prompts beside it."""
    _native_bf16()
    dec = decoder_from_paths(fast_irs, static_shapes=static_shapes)
    emb = np.random.default_rng(4).standard_normal((1, 256, 64, 64)).astype(np.float32)
    state = dec.prepare_image(emb)
    rng = np.random.default_rng(5)
    coords = np.concatenate([rng.uniform(0, 1024, (4, 1, 2)), np.zeros((4, 1, 2))], 1).astype(np.float32)
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (4, 1))
    alone = [dec.decode(emb, state, coords[i:i + 1], labels[i:i + 1]) for i in range(4)]
    for p in (2, 3, 4):
        low, iou = dec.decode(emb, state, coords[:p], labels[:p])
        for i in range(p):
            np.testing.assert_array_equal(low[i], alone[i][0][0])
            np.testing.assert_array_equal(iou[i], alone[i][1][0])
    if static_shapes:
        assert len(dec.decoder._static) == 4 and not dec.decoder.refused_shapes  # P = 1..4, each compiled
