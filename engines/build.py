"""`samrt build-engine`: an engine from an exported graph, named with its settings, with a
report (versions, precision, shapes or profiles, hashes, speed, accuracy against fp32), and an
accuracy gate: below the threshold the build fails and the report says why.

Accuracy is measured on held-out generated scenes (samrt.evaluation's set): for every
ground-truth object, the centre point is decoded from the fp32 pipeline and from the pipeline
with the engine swapped in; the masks are compared (IoU) and so are the predicted scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from samrt import processing as P
from samrt.errors import SamrtError

from .predictor import decode
from .runner import OnnxRuntimeRunner, Runner

__all__ = ["EngineAccuracyError", "accuracy_against_fp32", "build_engine", "engine_path", "DEFAULT_MIN_MEAN_IOU"]

DEFAULT_MIN_MEAN_IOU = 0.98
BACKENDS = ("onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Which precisions each backend builds (bf16 is OpenVINO-only; OpenVINO has no fp16 on CPUs).
BACKEND_PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8"),
                      "openvino": ("fp32", "bf16", "int8")}


class EngineAccuracyError(SamrtError):
    """The engine's masks differ from fp32 by more than the gate allows."""


def engine_path(onnx_path: str, out_dir: str, backend: str, precision: str) -> str:
    """vit_b.encoder.onnx -> out/vit_b.encoder.int8.onnx (onnxruntime), out/vit_b.encoder.fp16.plan
    (tensorrt) or out/vit_b.encoder.bf16.xml (openvino, with its .bin)."""
    stem = os.path.basename(onnx_path)[: -len(".onnx")]
    tag = "opt" if precision == "fp32" and backend == "onnxruntime" else precision
    ext = {"tensorrt": "plan", "openvino": "xml"}.get(backend, "onnx")
    return os.path.join(out_dir, f"{stem}.{tag}.{ext}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up, not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def accuracy_against_fp32(reference_encoder: Runner, engine_encoder: Runner, decoder: Runner,
                          scenes: Sequence, engine_decoder: Optional[Runner] = None) -> dict:
    """Mask IoU and score difference of engine vs fp32 over every object's centre click."""
    from samrt.evaluation import centre_point, mask_iou

    image_size = int(reference_encoder.input_shapes["image"][-1])
    low_res = int(decoder.input_shapes["mask_input"][-1])
    ious: List[float] = []
    score_diffs: List[float] = []
    cosines: List[float] = []
    for scene in scenes:
        x, input_size = P.preprocess_image(scene.image, image_size)
        size = scene.image.shape[:2]
        ref_emb = reference_encoder.run({"image": x})["image_embeddings"]
        eng_emb = engine_encoder.run({"image": x})["image_embeddings"]
        a, b = ref_emb.ravel().astype(np.float64), eng_emb.ravel().astype(np.float64)
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
        if not scene.masks:
            continue
        pts = np.array([centre_point(m) for m in scene.masks])
        coords, labels = P.build_prompts(pts[:, None, :], np.ones((len(pts), 1)), None, size, image_size)
        ref_low, ref_iou = decode(decoder, ref_emb, coords, labels, None, low_res)
        eng_low, eng_iou = decode(engine_decoder or decoder, eng_emb, coords, labels, None, low_res)
        ref_m = P.upscale_masks(ref_low[:, 1:], input_size, size, image_size) > 0
        eng_m = P.upscale_masks(eng_low[:, 1:], input_size, size, image_size) > 0
        for r, e in zip(ref_m.reshape(-1, *size), eng_m.reshape(-1, *size)):
            ious.append(mask_iou(r, e))
        score_diffs.extend(np.abs(ref_iou[:, 1:] - eng_iou[:, 1:]).ravel().tolist())
    return {
        "images": len(scenes),
        "masks_compared": len(ious),
        "mean_mask_iou": float(np.mean(ious)) if ious else None,
        "worst_mask_iou": float(np.min(ious)) if ious else None,
        "mean_score_diff": float(np.mean(score_diffs)) if score_diffs else None,
        "max_score_diff": float(np.max(score_diffs)) if score_diffs else None,
        "mean_embedding_cosine": float(np.mean(cosines)),
    }


def build_engine(
    onnx_path: str,
    out_dir: str,
    backend: str = "onnxruntime",
    precision: str = "int8",
    calibration_images: Optional[Sequence[np.ndarray]] = None,
    min_mean_iou: float = DEFAULT_MIN_MEAN_IOU,
    eval_images: int = 8,
    speed_repeats: int = 3,
    device: str = "cpu",
) -> dict:
    """Build an engine from an export's *.encoder.onnx or *.decoder.onnx, check it, report.

    Raises EngineAccuracyError after writing the report when the gate fails.
    """
    from samrt.evaluation import eval_scenes

    if backend not in BACKENDS:
        raise SamrtError(f"--backend: got {backend!r}, expected one of {BACKENDS}")
    if precision not in PRECISIONS:
        raise SamrtError(f"--precision: got {precision!r}, expected one of {PRECISIONS}")
    if precision not in BACKEND_PRECISIONS[backend]:
        raise SamrtError(f"--precision {precision} with --backend {backend}: expected one of "
                         f"{BACKEND_PRECISIONS[backend]} for {backend}"
                         + (" (bf16 is built by --backend openvino)" if precision == "bf16" else ""))
    if backend == "openvino" and device != "cpu":
        raise SamrtError(f"--device {device} with --backend openvino: samrt runs OpenVINO on the CPU only")
    is_decoder = onnx_path.endswith(".decoder.onnx")
    if not (onnx_path.endswith(".encoder.onnx") or is_decoder) or not os.path.isfile(onnx_path):
        raise SamrtError(f"--onnx: got {onnx_path!r}, expected an existing *.encoder.onnx or *.decoder.onnx "
                         "written by `samrt export`")
    encoder_path = onnx_path.replace(".decoder.onnx", ".encoder.onnx")
    decoder_path = onnx_path.replace(".encoder.onnx", ".decoder.onnx")
    os.makedirs(out_dir, exist_ok=True)
    out = engine_path(onnx_path, out_dir, backend, precision)
    reference = OnnxRuntimeRunner(encoder_path, device)
    ref_decoder = OnnxRuntimeRunner(decoder_path, device)
    image_size = int(reference.input_shapes["image"][-1])
    held_out = eval_scenes(eval_images)
    calibration = list(calibration_images) if calibration_images is not None else None
    if precision == "int8" and is_decoder and backend != "openvino":
        raise SamrtError("--precision int8: the decoder stays in float (fp32 or fp16); quantise the encoder")
    if precision == "int8" and not calibration:
        from samrt.scenes import scene_for_index

        # Calibration scenes come from a stream disjoint from training and from the held-out set.
        count = 8
        if backend == "openvino":
            from .openvino_engine import INT8_CALIBRATION_IMAGES as count
        calibration = [scene_for_index(i, stream=7).image for i in range(count)]
    t0 = time.perf_counter()
    details: Dict[str, object] = {}
    from . import onnxruntime_engines as ortx

    if backend == "onnxruntime":
        if precision == "fp32":
            ortx.optimized_onnx_from_onnx(onnx_path, out)
        elif precision == "fp16":
            ortx.fp16_onnx_from_onnx(onnx_path, out)
            details["fp32_ops"] = list(ortx.FP32_OPS)
        else:
            ortx.int8_onnx_from_onnx(onnx_path, out, calibration, image_size)
            details["calibration_images"] = len(calibration)
        engine = OnnxRuntimeRunner(out, device)
    elif backend == "openvino":
        from .openvino_engine import build_openvino_engine

        engine, ov_details = build_openvino_engine(onnx_path, out, precision, calibration, image_size)
        details.update(ov_details)
    else:
        from samrt.spec import SamConfig, decoder_spec, encoder_spec

        from .tensorrt_engine import TensorRTRunner, plan_from_onnx, profiles_from_spec

        with open(os.path.join(os.path.dirname(onnx_path), "export_report.json")) as f:
            cfg = SamConfig.from_dict(json.load(f)["config"])
        source, fp16_onnx = onnx_path, None
        if precision == "int8":
            source = ortx.int8_onnx_from_onnx(onnx_path, out + ".qdq.onnx", calibration, image_size)
        if precision == "fp16":
            fp16_onnx = ortx.fp16_onnx_from_onnx(onnx_path, out + ".fp16.onnx")
        if is_decoder:
            profile = profiles_from_spec(decoder_spec(cfg), {"num_prompts": (1, 16, 256), "num_points": (1, 3, 16)})
        else:
            profile = profiles_from_spec(encoder_spec(cfg), {"batch": (1, 1, 4)})
        details.update(plan_from_onnx(source, out, precision, profile,
                                      timing_cache=os.path.join(out_dir, "timing.cache"), fp16_onnx_path=fp16_onnx))
        engine = TensorRTRunner(out)
    build_s = time.perf_counter() - t0

    if is_decoder:
        accuracy = accuracy_against_fp32(reference, reference, ref_decoder, held_out, engine_decoder=engine)
        emb = reference.run({"image": P.preprocess_image(held_out[0].image, image_size)[0]})["image_embeddings"]
        coords = np.tile(np.array([[[100.0, 100.0], [0.0, 0.0]]], np.float32), (16, 1, 1))
        labels = np.tile(np.array([[1.0, -1.0]], np.float32), (16, 1))
        m = int(ref_decoder.input_shapes["mask_input"][-1])
        speed = {"timed": "decoder run for 16 single-click prompts (median of repeats, after one warm-up)",
                 "fp32_ms": _median_ms(lambda: decode(ref_decoder, emb, coords, labels, None, m), speed_repeats),
                 "engine_ms": _median_ms(lambda: decode(engine, emb, coords, labels, None, m), speed_repeats)}
    else:
        accuracy = accuracy_against_fp32(reference, engine, ref_decoder, held_out)
        sample = P.preprocess_image(held_out[0].image, image_size)[0]
        speed = {
            "timed": "encoder run on one preprocessed image (median of repeats, after one warm-up)",
            "fp32_ms": _median_ms(lambda: reference.run({"image": sample}), speed_repeats),
            "engine_ms": _median_ms(lambda: engine.run({"image": sample}), speed_repeats),
        }
    speed["speedup"] = speed["fp32_ms"] / speed["engine_ms"]
    passed = accuracy["mean_mask_iou"] is not None and accuracy["mean_mask_iou"] >= min_mean_iou
    import onnxruntime

    report = {
        "engine": os.path.basename(out),
        "source": os.path.abspath(onnx_path),
        "backend": backend,
        "precision": precision,
        "device": device,
        "sha256": _sha256(out),
        "source_sha256": _sha256(onnx_path),
        "bytes": os.path.getsize(out),
        "source_bytes": os.path.getsize(onnx_path),
        "graph": "decoder" if is_decoder else "encoder",
        "input_shapes": {k: list(v) for k, v in (ref_decoder if is_decoder else reference).input_shapes.items()},
        "versions": {"onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "processor": platform.processor(),
                     **({"openvino": details.get("openvino")} if backend == "openvino" else {})},
        "build_s": round(build_s, 2),
        "details": details,
        "speed": speed,
        "accuracy": accuracy,
        "gate": {"metric": "mean_mask_iou against fp32", "min": min_mean_iou, "passed": passed,
                 "held_out": f"{eval_images} scenes of samrt.evaluation.eval_scenes"},
    }
    report_path = out + ".report.json"
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    report["report_path"] = report_path
    report["path"] = out
    if not passed:
        raise EngineAccuracyError(
            f"{os.path.basename(out)}: mean mask IoU against fp32 {accuracy['mean_mask_iou']:.4f} is below the "
            f"gate {min_mean_iou} (worst {accuracy['worst_mask_iou']:.4f}, over {accuracy['masks_compared']} masks); "
            f"report {report_path}"
        )
    return report


