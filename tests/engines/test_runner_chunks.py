"""Memory grows with a bounded chunk, not with the number of prompts: the decoder runs at most
DECODER_CHUNK prompts at a time and masks are upscaled UPSCALE_CHUNK prompts at a time."""

import numpy as np

from samrt.engines.runner import DECODER_CHUNK, run_decoder
from samrt.model_repository import logic


class RecordingDecoder:
    """A Runner that records the rows of every call and answers per-row constants."""

    input_shapes = {"mask_input": ("num_prompts", 1, 8, 8)}

    def __init__(self):
        self.rows = []

    def run(self, feeds, outputs=None):
        p = feeds["point_coords"].shape[0]
        assert feeds["image_embeddings"].shape[0] == p and feeds["image_embeddings"].flags.c_contiguous
        self.rows.append(p)
        first = feeds["point_coords"][:, 0, 0]  # row identity travels through
        return {"low_res_masks": np.broadcast_to(first[:, None, None, None], (p, 4, 8, 8)).astype(np.float32),
                "iou_predictions": np.broadcast_to(first[:, None], (p, 4)).astype(np.float32)}


def test_decoder_runs_in_bounded_chunks_and_keeps_row_order():
    dec = RecordingDecoder()
    p = 3 * DECODER_CHUNK + 5
    coords = np.zeros((p, 2, 2), np.float32)
    coords[:, 0, 0] = np.arange(p)
    low, iou = run_decoder(dec, np.ones((2, 4, 2, 2), np.float32), coords, np.ones((p, 2), np.float32), None, 8,
                           embedding_rows=np.arange(p) % 2)
    assert max(dec.rows) <= DECODER_CHUNK and sum(dec.rows) == p
    np.testing.assert_array_equal(iou[:, 0], np.arange(p))
    np.testing.assert_array_equal(low[:, 0, 0, 0], np.arange(p))


def test_masks_are_upscaled_a_chunk_at_a_time(monkeypatch):
    seen = []
    real = logic.P.upscale_masks

    def spy(low, *a, **k):
        seen.append(low.shape[0])
        return real(low, *a, **k)

    monkeypatch.setattr(logic.P, "upscale_masks", spy)
    low = np.random.default_rng(0).standard_normal((21, 3, 16, 16)).astype(np.float32)
    masks = logic.upscaled_masks(low, (48, 64), (30, 40), 64)
    assert masks.dtype == np.bool_ and masks.shape == (21, 3, 30, 40)
    assert max(seen) <= logic.UPSCALE_CHUNK and sum(seen) == 21
    np.testing.assert_array_equal(masks, real(low, (48, 64), (30, 40), 64) > 0)


def test_encoders_run_without_onnx_runtimes_memory_arena(tiny_export):
    """The encoder's session has ONNX Runtime's CPU arena off (a run's activations go back after
    it: vit_b's encoder process held 6.9 GB after two images with it, 1.2 GB without; docs/memory.md);
    decoders keep it; the answers are the same."""
    from samrt.engines import OnnxSamPredictor
    from samrt.engines.factory import runner_for_engine
    from samrt.engines.runner import OnnxRuntimeRunner

    pred = OnnxSamPredictor.from_onnx(tiny_export.encoder_path, tiny_export.decoder_path)
    assert pred.encoder.session.get_session_options().enable_cpu_mem_arena is False
    assert pred.decoder.session.get_session_options().enable_cpu_mem_arena is True
    on = OnnxRuntimeRunner(tiny_export.encoder_path)
    off = runner_for_engine(tiny_export.encoder_path, memory_arena=False)
    assert off.session.get_session_options().enable_cpu_mem_arena is False
    image = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    np.testing.assert_array_equal(on.run({"image": image})["image_embeddings"], off.run({"image": image})["image_embeddings"])



def test_automatic_masks_decode_onnx_runtime_in_small_chunks(tiny_export):
    """sam_amg's decoder on ONNX Runtime runs ARENA_DECODER_CHUNK prompts at a time (its arena keeps
    the largest run's activations: 0.97 GiB after 16-prompt runs of SAM's decoder, 0.26 GiB after
    4-prompt runs; engines/runner.py); the click path keeps DECODER_CHUNK; the answers are equal."""
    import json

    from samrt.engines.runner import ARENA_DECODER_CHUNK, DECODER_CHUNK
    from samrt.model_repository.models import amg as amg_model
    from samrt.model_repository.models.base import decoder_engine

    params = {"decoder_engine": json.dumps(dict(tiny_export.fast_decoder_paths))}
    dec, clicks = amg_model._decoder(params), decoder_engine(params)
    assert (dec.chunk, clicks.chunk) == (ARENA_DECODER_CHUNK, DECODER_CHUNK) and ARENA_DECODER_CHUNK < DECODER_CHUNK
    assert dec.decoder.session.get_session_options().enable_cpu_mem_arena is True
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((1,) + dec.embedding_shape).astype(np.float32)
    coords = rng.uniform(0, 64, (21, 1, 2)).astype(np.float32)
    labels = np.ones((21, 1), np.float32)
    got = dec.decode(emb, dec.prepare_image(emb), coords, labels)
    want = clicks.decode(emb, clicks.prepare_image(emb), coords, labels)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
