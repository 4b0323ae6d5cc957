"""The decoder and the encoder in one process, per backend and precision, as serving runs them:
`samrt bench decoder`.

Timed regions (each after warm-up calls, p50/p90 over repeats):
- `prepare_image`: the decoder's per-image work when an image is cached (the fast decoder's
  image_prep graph; nothing for the classic decoder);
- one click: `decode` of one prompt (a point and SAM's padding point) on a prepared image, all four
  mask tokens out (no upscaling);
- the same click after a 100 ms pause (`PAUSE_S`, not timed), as a person clicks: whether an idle
  pause makes the decoder itself slower (in one process: no server, no wire);
- 64 boxes: `decode` of 64 box prompts in one call, reported per box;
- the encoder: one preprocessed image, the exact path (ONNX Runtime fp32 on the export) against the
  encoder `samrt serve` serves by default (`plan_engines`), in the same run.
For OpenVINO decoders, the per-part profile of one click (OpenVINO's per-node counters, summed by
layer type, and the slowest nodes) is kept in the row: the classic graph's beside the fast one's.
"""

from __future__ import annotations

import collections
import gc
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from samrt import processing as P
from samrt.app.pipeline import ensure_export, plan_engines
from samrt.cpus import usable_cpus
from samrt.engines.build import EngineAccuracyError, build_variant
from samrt.engines.decoders import STATIC_SHAPES, decoder_from_paths
from samrt.engines.factory import runner_for_engine
from samrt.engines.runner import OnnxRuntimeRunner
from samrt.scenes import eval_scenes
from samrt.variants import EngineReport, Variant

from .common import time_calls, time_interleaved

__all__ = ["bench_decoder", "DECODER_VARIANTS", "TARGET_CLICK_DECODE_MS", "TARGET_BOX_MS"]

# (graph, backend, precision): the classic graph as served before, and the fast decoder
DECODER_VARIANTS = (("decoder", "onnxruntime", "fp32"), ("decoder", "openvino", "bf16"),
                    ("fast_decoder", "onnxruntime", "fp32"), ("fast_decoder", "openvino", "fp32"),
                    ("fast_decoder", "openvino", "bf16"))
TARGET_CLICK_DECODE_MS = 8.0  # issue #23: decoder in-process, one click
TARGET_BOX_MS = 6.0  # 64 boxes in one call, per box
PAUSE_S = 0.1  # the pause before each click of the one_click_after_pause row (as `bench serve`'s idle phase)


def _openvino_profile(path: str, feeds: Dict[str, np.ndarray], snippets: bool, runs: int = 20) -> dict:
    """OpenVINO's per-node counters for `feeds` (the model compiled for their shapes, as served):
    ms per layer type and the 8 slowest nodes (mean over `runs`)."""
    import openvino as ov  # openvino: the openvino extra
    import openvino.properties as props
    import openvino.properties.hint as hints


    core = ov.Core()
    model = core.read_model(path)
    model.reshape({k: list(v.shape) for k, v in feeds.items() if k in {p.get_any_name() for p in model.inputs}})
    precision = ov.Type.bf16 if ".bf16." in os.path.basename(path) else ov.Type.f32
    config = {hints.inference_precision: precision, props.enable_profiling: True,
              hints.performance_mode: hints.PerformanceMode.LATENCY, props.num_streams: 1,
              props.inference_num_threads: usable_cpus(), **({} if snippets else {"SNIPPETS_MODE": "DISABLE"})}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    names = {p.get_any_name() for p in model.inputs}
    f = {k: v for k, v in feeds.items() if k in names}
    for _ in range(3):
        request.infer(f)
    by_type, by_node = collections.Counter(), collections.Counter()
    for _ in range(runs):
        request.infer(f)
        for info in request.profiling_info:
            ms = info.real_time.total_seconds() * 1e3 / runs
            by_type[info.node_type] += ms
            by_node[f"{info.node_name} ({info.node_type})"] += ms
    return {"total_ms": round(sum(by_type.values()), 2), "nodes": len(by_node),
            "by_type_ms": {k: round(v, 2) for k, v in by_type.most_common(10)},
            "slowest_nodes_ms": {k: round(v, 2) for k, v in by_node.most_common(8)}}


def _ensure(manifest, variant: Variant, rows: List[dict], base: dict) -> bool:
    if variant.built(manifest):
        return True
    try:
        build_variant(manifest, variant)
        return True
    except EngineAccuracyError:  # measured all the same: the row says the gate failed
        return True
    except Exception as e:  # not buildable here (openvino missing): an error row
        rows.append({**base, "stage": "decoder", "variant": str(variant), "error": f"{type(e).__name__}: {e}"})
        return False


def bench_decoder(model_type: str = "vit_b", checkpoint: Optional[str] = None, build_dir: str = "build/bench",
                  quick: bool = False, boxes: int = 64,
                  variants: Sequence[Sequence[str]] = DECODER_VARIANTS) -> List[dict]:
    """Rows of `samrt bench decoder` (module docstring)."""
    repeats = 3 if quick else 15
    export_dir = os.path.join(build_dir, "export_" + (model_type if not checkpoint else "checkpoint"))
    manifest = ensure_export(export_dir, model_type if not checkpoint else "auto", checkpoint)
    cfg = manifest.config
    scene = eval_scenes(1)[0]
    x, _ = P.preprocess_image(scene.image, cfg.image_size)
    reference = OnnxRuntimeRunner(manifest.encoder_path)
    emb = reference.run({"image": x})["image_embeddings"]
    base = {"bench": "decoder", "model": manifest.name, "random_init": manifest.random_init}
    rows: List[dict] = []

    plan = plan_engines(manifest)  # what `samrt serve` serves here by default
    enc_ref = time_calls(lambda: reference.run({"image": x}), 1 if quick else 3)
    del reference
    gc.collect()
    served = runner_for_engine(plan.encoder.paths["encoder"], static_shapes=1)
    enc = time_calls(lambda: served.run({"image": x}), 1 if quick else 3)
    del served
    gc.collect()
    rows.append({**base, "stage": "encoder", "served": str(plan.encoder.variant), "reference": "encoder onnxruntime fp32",
                 "timed": "encoder on one preprocessed image, in-process", "reference_ms": enc_ref, "served_ms": enc,
                 "speedup_p50": enc_ref["p50_ms"] / enc["p50_ms"]})

    rng = np.random.default_rng(0)
    s = cfg.image_size
    click = (np.array([[[s * 0.4, s * 0.3], [0.0, 0.0]]], np.float32), np.array([[1.0, -1.0]], np.float32))
    x0, y0 = rng.uniform(0, s * 0.6, boxes), rng.uniform(0, s * 0.6, boxes)
    box_coords = np.stack([x0, y0, x0 + s * 0.3, y0 + s * 0.3], 1).reshape(-1, 2, 2).astype(np.float32)
    box_labels = np.tile(np.array([2.0, 3.0], np.float32), (boxes, 1))
    for graph, backend, precision in variants:
        variant = Variant(graph, backend, precision)
        if not _ensure(manifest, variant, rows, base):
            continue
        paths = variant.paths(manifest)
        decoder = decoder_from_paths(paths, static_shapes=STATIC_SHAPES)
        state = decoder.prepare_image(emb)
        report = EngineReport.find(manifest, variant)
        row = {**base, "stage": "decoder", "variant": str(variant), "decoder": graph, "backend": backend,
               "precision": precision, "gate": None if report is None else {
                   "passed": report.passed, "mean_mask_iou": report.mean_mask_iou},
               "timed": "decode on a prepared image (no upscaling); prepare_image once per image",
               "prepare_image": time_calls(lambda: decoder.prepare_image(emb), repeats),
               "one_click": time_calls(lambda: decoder.decode(emb, state, *click), 2 * repeats),
               "pause_s": PAUSE_S,
               "one_click_after_pause": time_calls(lambda: decoder.decode(emb, state, *click), 2 * repeats,
                                                   pause_s=PAUSE_S)}
        if getattr(getattr(decoder, "decoder", None), "bf16_inputs", ()):
            # A/B in this run: the same graphs fed image_prep's tensors in float32 (before 2026-12-05)
            plain = decoder_from_paths(paths, static_shapes=STATIC_SHAPES, bf16_state=False)
            plain_state = plain.prepare_image(emb)
            ab = time_interleaved({"bf16": lambda: decoder.decode(emb, state, *click),
                                   "float32": lambda: plain.decode(emb, plain_state, *click)}, 2 * repeats)
            row["one_click_state_ab"] = {"note": "one click, interleaved: image_prep's tensors kept as bf16 bits "
                                                 "(served) vs float32 (converted by the engine on every call)", **ab}
            del plain, plain_state
        many = time_calls(lambda: decoder.decode(emb, state, box_coords, box_labels), max(2, repeats // 5))
        row.update(boxes=boxes, many_boxes=many, ms_per_box=many["p50_ms"] / boxes,
                   target_click_ms=TARGET_CLICK_DECODE_MS, met_click_ms=row["one_click"]["p50_ms"] <= TARGET_CLICK_DECODE_MS,
                   target_box_ms=TARGET_BOX_MS, met_box_ms=many["p50_ms"] / boxes <= TARGET_BOX_MS)
        if backend == "openvino" and not quick:
            feeds = dict(state, image_embeddings=emb, point_coords=click[0], point_labels=click[1],
                         mask_input=np.zeros((1, 1, cfg.low_res_size, cfg.low_res_size), np.float32),
                         has_mask_input=np.zeros(1, np.float32))
            row["profile_one_click"] = _openvino_profile(paths.get("fast_decoder") or paths["decoder"], feeds,
                                                         snippets=graph == "decoder")
        rows.append(row)
        del decoder, state
        gc.collect()
    return rows
