"""`samrt build-engine`: an engine from an exported graph, named with its settings, with a
report (versions, precision, shapes or profiles, hashes, speed, accuracy against fp32), and an
accuracy gate: below the threshold the build fails and the report says why.

Accuracy is measured on held-out generated scenes (the held-out set of samrt.scenes): for every
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
from samrt import prompts
from samrt.artifacts import ExportManifest, engine_path, prepare_output_dir
from samrt.errors import SamrtError
from samrt.scenes import centre_point, eval_scenes, mask_iou, scene_for_index
from samrt.spec import decoder_spec, encoder_spec

from . import onnxruntime_engines as ortx
from .openvino_engine import INT8_CALIBRATION_IMAGES, build_openvino_engine
from .runner import OnnxRuntimeRunner, Runner, run_decoder
from .tensorrt_engine import TensorRTRunner, plan_from_onnx, profiles_from_spec

__all__ = ["EngineAccuracyError", "accuracy_against_fp32", "build_engine", "DEFAULT_MIN_MEAN_IOU", "BACKENDS", "PRECISIONS"]

DEFAULT_MIN_MEAN_IOU = 0.98
BACKENDS = ("onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Which precisions each backend builds (bf16 is OpenVINO-only; OpenVINO has no fp16 on CPUs).
BACKEND_PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8"),
                      "openvino": ("fp32", "bf16", "int8")}


class EngineAccuracyError(SamrtError):
    """The engine's masks differ from fp32 by more than the gate allows."""


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


def _centre_click_prompts(scene, image_size: int):
    """Every object's centre click on a held-out scene, as decoder prompts."""
    pts = np.array([centre_point(m) for m in scene.masks])
    coords, labels = prompts.assemble_prompts(pts[:, None, :], np.ones((len(pts), 1), np.int32), None)
    return prompts.decoder_prompts(coords, labels, scene.image.shape[:2], image_size)


def accuracy_against_fp32(reference_encoder: Runner, engine_encoder: Runner, decoder: Runner,
                          scenes: Sequence, engine_decoder: Optional[Runner] = None) -> dict:
    """Mask IoU and score difference of engine vs fp32 over every object's centre click."""
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
        coords, labels = _centre_click_prompts(scene, image_size)
        ref_low, ref_iou = run_decoder(decoder, ref_emb, coords, labels, None, low_res)
        eng_low, eng_iou = run_decoder(engine_decoder or decoder, eng_emb, coords, labels, None, low_res)
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


def _check_build_args(onnx_path: str, backend: str, precision: str, device: str = "cpu") -> bool:
    """Validate the build's arguments; returns whether `onnx_path` is the decoder graph."""
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
    if precision == "int8" and is_decoder:
        raise SamrtError("--precision int8: the decoder stays in float (fp32 or fp16); quantise the encoder")
    return is_decoder


def _default_calibration(count: int = 8) -> List[np.ndarray]:
    """Calibration scenes from a stream disjoint from training and from the held-out set."""
    return [scene_for_index(i, stream=7).image for i in range(count)]


def _build_onnxruntime(onnx_path: str, out: str, precision: str, calibration, image_size: int, device: str):
    """An ONNX Runtime engine file -> (its runner, build details)."""
    details: Dict[str, object] = {}
    if precision == "fp32":
        ortx.optimized_onnx_from_onnx(onnx_path, out)
    elif precision == "fp16":
        ortx.fp16_onnx_from_onnx(onnx_path, out)
        details["fp32_ops"] = list(ortx.FP32_OPS)
    else:
        ortx.int8_onnx_from_onnx(onnx_path, out, calibration, image_size)
        details["calibration_images"] = len(calibration)
    return OnnxRuntimeRunner(out, device), details


def _build_tensorrt(onnx_path: str, out: str, out_dir: str, precision: str, calibration, image_size: int,
                    is_decoder: bool):
    """A TensorRT plan (profiles from the I/O spec) -> (its runner, build details)."""
    cfg = ExportManifest.read(os.path.dirname(onnx_path) or ".").config
    source, fp16_onnx = onnx_path, None
    if precision == "int8":
        source = ortx.int8_onnx_from_onnx(onnx_path, out + ".qdq.onnx", calibration, image_size)
    if precision == "fp16":
        fp16_onnx = ortx.fp16_onnx_from_onnx(onnx_path, out + ".fp16.onnx")
    if is_decoder:
        profile = profiles_from_spec(decoder_spec(cfg), {"num_prompts": (1, 16, 256), "num_points": (1, 3, 16)})
    else:
        profile = profiles_from_spec(encoder_spec(cfg), {"batch": (1, 1, 4)})
    details = plan_from_onnx(source, out, precision, profile, timing_cache=os.path.join(out_dir, "timing.cache"),
                             fp16_onnx_path=fp16_onnx)
    return TensorRTRunner(out), dict(details)


def _speed(is_decoder: bool, reference: Runner, ref_decoder: Runner, engine: Runner, sample_image: np.ndarray,
           repeats: int) -> dict:
    """Median ms of the fp32 graph and the engine on the same input."""
    image_size = int(reference.input_shapes["image"][-1])
    x = P.preprocess_image(sample_image, image_size)[0]
    if is_decoder:
        emb = reference.run({"image": x})["image_embeddings"]
        coords = np.tile(np.array([[[100.0, 100.0], [0.0, 0.0]]], np.float32), (16, 1, 1))
        labels = np.tile(np.array([[1.0, -1.0]], np.float32), (16, 1))
        m = int(ref_decoder.input_shapes["mask_input"][-1])
        speed = {"timed": "decoder run for 16 single-click prompts (median of repeats, after one warm-up)",
                 "fp32_ms": _median_ms(lambda: run_decoder(ref_decoder, emb, coords, labels, None, m), repeats),
                 "engine_ms": _median_ms(lambda: run_decoder(engine, emb, coords, labels, None, m), repeats)}
    else:
        speed = {"timed": "encoder run on one preprocessed image (median of repeats, after one warm-up)",
                 "fp32_ms": _median_ms(lambda: reference.run({"image": x}), repeats),
                 "engine_ms": _median_ms(lambda: engine.run({"image": x}), repeats)}
    speed["speedup"] = speed["fp32_ms"] / speed["engine_ms"]
    return speed


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

    The engine goes to `engine_path(onnx_path, out_dir, backend, precision)` with its report
    beside it (`<engine>.report.json`). `out_dir` must be new, empty, an export folder or an
    engines folder samrt wrote. Raises EngineAccuracyError after writing the report when the
    gate fails (mean mask IoU against fp32 below `min_mean_iou`).
    """
    is_decoder = _check_build_args(onnx_path, backend, precision, device)
    prepare_output_dir(out_dir, "engines", accept=("export",))
    out = engine_path(onnx_path, out_dir, backend, precision)
    reference = OnnxRuntimeRunner(onnx_path.replace(".decoder.onnx", ".encoder.onnx"), device)
    ref_decoder = OnnxRuntimeRunner(onnx_path.replace(".encoder.onnx", ".decoder.onnx"), device)
    image_size = int(reference.input_shapes["image"][-1])
    held_out = eval_scenes(eval_images)
    calibration = list(calibration_images) if calibration_images is not None else None
    if precision == "int8" and not calibration:
        count = INT8_CALIBRATION_IMAGES if backend == "openvino" else 8
        calibration = _default_calibration(count)
    t0 = time.perf_counter()
    if backend == "onnxruntime":
        engine, details = _build_onnxruntime(onnx_path, out, precision, calibration, image_size, device)
    elif backend == "openvino":
        engine, details = build_openvino_engine(onnx_path, out, precision, calibration, image_size)
    else:
        engine, details = _build_tensorrt(onnx_path, out, out_dir, precision, calibration, image_size, is_decoder)
    build_s = time.perf_counter() - t0

    if is_decoder:
        accuracy = accuracy_against_fp32(reference, reference, ref_decoder, held_out, engine_decoder=engine)
    else:
        accuracy = accuracy_against_fp32(reference, engine, ref_decoder, held_out)
    speed = _speed(is_decoder, reference, ref_decoder, engine, held_out[0].image, speed_repeats)
    report = _report(onnx_path, out, backend, precision, device, is_decoder, ref_decoder if is_decoder else reference,
                     build_s, details, speed, accuracy, min_mean_iou, eval_images)
    report_path = out + ".report.json"
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    report["report_path"] = report_path
    report["path"] = out
    if not report["gate"]["passed"]:
        raise EngineAccuracyError(
            f"{os.path.basename(out)}: mean mask IoU against fp32 {accuracy['mean_mask_iou']:.4f} is below the "
            f"gate {min_mean_iou} (worst {accuracy['worst_mask_iou']:.4f}, over {accuracy['masks_compared']} masks); "
            f"report {report_path}"
        )
    return report


def _report(onnx_path, out, backend, precision, device, is_decoder, graph: Runner, build_s, details, speed,
            accuracy, min_mean_iou, eval_images) -> dict:
    """The engine's report: what it is, where it came from, how fast and how accurate."""
    import onnxruntime  # onnxruntime: the cpu or gpu extra

    passed = accuracy["mean_mask_iou"] is not None and accuracy["mean_mask_iou"] >= min_mean_iou
    return {
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
        "input_shapes": {k: list(v) for k, v in graph.input_shapes.items()},
        "versions": {"onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "processor": platform.processor(),
                     **({"openvino": details.get("openvino")} if backend == "openvino" else {})},
        "build_s": round(build_s, 2),
        "details": details,
        "speed": speed,
        "accuracy": accuracy,
        "gate": {"metric": "mean_mask_iou against fp32", "min": min_mean_iou, "passed": passed,
                 "held_out": f"{eval_images} scenes of samrt.scenes.eval_scenes"},
    }
