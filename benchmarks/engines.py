"""Engine-level latency, in one run so ratios hold on a noisy machine.

Timed regions: the encoder on one preprocessed image (no preprocessing); the decoder for P
prompts of N points each on one cached embedding (no postprocessing). PyTorch eager fp32 is the
reference; every ONNX Runtime engine samrt can build on this machine is measured beside it, and
the OpenVINO engines (encoder fp32/bf16/int8/int8-dynamic, decoder fp32/bf16) where openvino is installed. Each
engine row carries its build report's accuracy (the gate's mask IoU against fp32).
"""

from __future__ import annotations

import gc
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from samrt import processing as P
from samrt.app.pipeline import ensure_export
from samrt.artifacts import engine_path
from samrt.engines import OnnxRuntimeRunner
from samrt.engines.build import build_engine
from samrt.engines.openvino_engine import OpenVINORunner
from samrt.engines.runner import run_decoder
from samrt.scenes import eval_scenes
from samrt.spec import get_config

from .common import time_calls

__all__ = ["bench_engines"]


def bench_engines(model_type: str = "vit_b", checkpoint: Optional[str] = None, build_dir: str = "build/bench",
                  quick: bool = False, prompts: Sequence[int] = (1, 4, 16, 64, 256), points: Sequence[int] = (1, 4),
                  precisions: Sequence[str] = ("fp32", "int8", "fp16"), export_dir: Optional[str] = None,
                  openvino_precisions: Sequence[str] = ("fp32", "bf16", "int8", "int8-dynamic")) -> List[dict]:
    """`export_dir`: measure this export folder (engines already built there are reused, their
    reports supplying the accuracy); default <build_dir>/export_<model>, exported if missing.
    `precisions`: the ONNX Runtime encoder engines; `openvino_precisions`: the OpenVINO encoder
    engines (the decoder gets those of fp32/bf16 among them; empty, or openvino missing: none)."""
    import torch  # torch: the export extra

    from samrt.export import load_sam, random_sam  # torch: the export extra
    from samrt.export.wrappers import PromptDecoder

    repeats = 2 if quick else 5
    if quick:
        prompts, points = (1, 16), (1,)
        openvino_precisions = [p for p in openvino_precisions if p == "bf16"]
    export_dir = export_dir or os.path.join(build_dir, "export_" + (model_type if not checkpoint else "checkpoint"))
    manifest = ensure_export(export_dir, model_type if not checkpoint else "auto", checkpoint)
    if checkpoint:
        sam, cfg = load_sam(checkpoint)
    else:
        cfg = get_config(model_type)
        sam = random_sam(cfg, seed=0)
    name = manifest.name
    encoder_onnx = manifest.encoder_path
    image = eval_scenes(1)[0].image
    x, _ = P.preprocess_image(image, cfg.image_size)
    base = {"bench": "engines", "model": name, "random_init": manifest.random_init, "image_size": cfg.image_size,
            "torch_threads": torch.get_num_threads()}
    rows = []
    with torch.no_grad():
        xt = torch.from_numpy(x)
        rows.append({**base, "stage": "encoder", "backend": "pytorch-eager", "precision": "fp32",
                     "timed": "image_encoder on one preprocessed image", **time_calls(lambda: sam.image_encoder(xt), repeats)})
    engines = {"fp32": encoder_onnx}
    for precision in precisions:
        if precision == "fp32" and quick:
            continue
        path = engine_path(encoder_onnx, export_dir, "onnxruntime", precision)
        if not os.path.isfile(path + ".report.json"):
            try:
                build_engine(encoder_onnx, export_dir, "onnxruntime", precision, min_mean_iou=0.0,
                             eval_images=2 if quick else 8, speed_repeats=1)
            except Exception as e:  # report what could not be built, measure the rest
                rows.append({**base, "stage": "encoder", "backend": "onnxruntime", "precision": precision,
                             "error": f"{type(e).__name__}: {e}"})
                continue
        engines[f"{precision}-engine" if precision == "fp32" else precision] = path
        gc.collect()  # the build's reference and engine sessions
    for label, path in engines.items():
        runner = OnnxRuntimeRunner(path)
        precision = label.replace("-engine", "")
        rows.append({**base, "stage": "encoder", "backend": "onnxruntime" + ("-opt" if label == "fp32-engine" else ""),
                     "precision": precision, "engine": os.path.basename(path), "accuracy_vs_fp32": _accuracy(path),
                     "timed": "encoder session.run on one preprocessed image",
                     **time_calls(lambda: runner.run({"image": x}), repeats)})
        del runner  # one encoder session at a time: each holds GBs of vit_b activations in its arena
        gc.collect()
    ov = _openvino_engines(encoder_onnx, export_dir, openvino_precisions, quick, base, rows)
    for precision, path in ov.items():
        runner = ov_runner(path)
        rows.append({**base, "stage": "encoder", "backend": "openvino", "precision": precision,
                     "engine": os.path.basename(path), "accuracy_vs_fp32": _accuracy(path), **runner.settings(),
                     "timed": "encoder infer on one preprocessed image", **time_calls(lambda: runner.run({"image": x}), repeats)})
        del runner
        gc.collect()

    # Decoder against prompt count and point count.
    decoder_onnx = manifest.decoder_path
    decoder = OnnxRuntimeRunner(decoder_onnx)
    emb = OnnxRuntimeRunner(encoder_onnx).run({"image": x})["image_embeddings"]
    gc.collect()
    ov_decoders = {p: (path, ov_runner(path)) for p, path in _openvino_engines(
        decoder_onnx, export_dir, [p for p in openvino_precisions if p in ("fp32", "bf16")], quick, base, rows).items()}
    torch_decoder = PromptDecoder(sam).eval()
    rng = np.random.default_rng(0)
    for n in points:
        for p in prompts:
            coords = rng.uniform(0, cfg.image_size, (p, n + 1, 2)).astype(np.float32)
            labels = np.concatenate([np.ones((p, n)), -np.ones((p, 1))], 1).astype(np.float32)
            common = {**base, "stage": "decoder", "num_prompts": p, "num_points": n, "precision": "fp32"}
            r = max(2, repeats if p <= 64 else 2)
            stats = time_calls(lambda: run_decoder(decoder, emb, coords, labels, None, cfg.low_res_size, chunk=p), r)
            rows.append({**common, "backend": "onnxruntime", "timed": "decoder run for P prompts (one embedding)",
                         "ms_per_prompt": stats["p50_ms"] / p, **stats})
            with torch.no_grad():
                te = torch.from_numpy(emb).expand(p, -1, -1, -1)
                tc, tl = torch.from_numpy(coords), torch.from_numpy(labels)
                tm, th = torch.zeros(p, 1, cfg.low_res_size, cfg.low_res_size), torch.zeros(p)
                stats = time_calls(lambda: torch_decoder(te, tc, tl, tm, th), r)
            rows.append({**common, "backend": "pytorch-eager", "timed": "prompt encoder + mask decoder for P prompts",
                         "ms_per_prompt": stats["p50_ms"] / p, **stats})
            for precision, (path, runner) in ov_decoders.items():
                stats = time_calls(lambda: run_decoder(runner, emb, coords, labels, None, cfg.low_res_size, chunk=p), r)
                rows.append({**common, "backend": "openvino", "precision": precision, "engine": os.path.basename(path),
                             "accuracy_vs_fp32": _accuracy(path), "timed": "decoder infer for P prompts (one embedding)",
                             "ms_per_prompt": stats["p50_ms"] / p, **stats})
    return rows


def _accuracy(engine: str) -> Optional[dict]:
    """The accuracy figures of an engine's build report (None when it has none)."""
    if not os.path.isfile(engine + ".report.json"):
        return None
    with open(engine + ".report.json") as f:
        return json.load(f)["accuracy"]


def ov_runner(path: str):
    return OpenVINORunner(path)


def _openvino_engines(onnx_path: str, export_dir: str, precisions: Sequence[str], quick: bool, base: dict,
                      rows: List[dict]) -> Dict[str, str]:
    """{precision: .xml} for the OpenVINO engines of `onnx_path`, built (gate at 0: the report keeps
    the accuracy) where missing; a failed build or a missing openvino becomes an error row."""
    stage = "decoder" if onnx_path.endswith(".decoder.onnx") else "encoder"
    built = {}
    for precision in precisions:
        path = engine_path(onnx_path, export_dir, "openvino", precision)
        if not os.path.isfile(path + ".report.json"):
            try:
                build_engine(onnx_path, export_dir, "openvino", precision, min_mean_iou=0.0,
                             eval_images=2 if quick else 8, speed_repeats=1)
            except Exception as e:  # report what could not be built, measure the rest
                rows.append({**base, "stage": stage, "backend": "openvino", "precision": precision,
                             "error": f"{type(e).__name__}: {e}"})
                continue
            gc.collect()
        built[precision] = path
    return built
