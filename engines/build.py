"""`samrt build-engine`: an engine from an exported graph, named with its settings, with a
report (versions, precision, shapes or profiles, hashes, speed, accuracy against fp32), and an
accuracy gate: below the threshold the build fails and the report says why.

Which graphs, backends and precisions exist is declared once in `samrt.variants`. A fast decoder
engine is its three exported graphs (fast_decoder, fast_decoder_mask, image_prep) built with the
same backend and precision and gated together; its report sits beside the fast_decoder file.

Accuracy is measured on held-out generated scenes (the held-out set of samrt.scenes): for every
ground-truth object, prompts are decoded from the fp32 pipeline (ONNX Runtime: the exported
encoder and the classic decoder) and from the pipeline with the engine swapped in; the masks are
compared (IoU) and so are the predicted scores. Encoders are checked on each object's centre
click; decoders on the centre click, the object's box, and the click with the box (a 3-point
prompt, so the fast decoder's absent slots are exercised).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from samrt import processing as P
from samrt import prompts
from samrt.artifacts import ExportManifest, engine_path, prepare_output_dir
from samrt.errors import SamrtError
from samrt.masks import mask_iou, masks_to_boxes
from samrt.scenes import centre_point, eval_scenes, scene_for_index
from samrt.spec import decoder_spec, encoder_spec, fast_decoder_spec, image_prep_spec
from samrt.variants import GRAPHS, REPORT_SUFFIX, Variant

from . import onnxruntime_engines as ortx
from .decoders import STATIC_SHAPES, ClassicDecoder, MaskDecoder, decoder_from_paths
from .factory import runner_for_engine
from .openvino_engine import INT8_CALIBRATION_IMAGES, AccuracyControl, build_openvino_engine, openvino_version
from .runner import OnnxRuntimeRunner, Runner
from .tensorrt_engine import plan_from_onnx, profiles_from_spec

__all__ = ["EngineAccuracyError", "accuracy_against_fp32", "build_engine", "build_variant", "graph_of_onnx",
           "DEFAULT_MIN_MEAN_IOU"]

DEFAULT_MIN_MEAN_IOU = 0.98


class EngineAccuracyError(SamrtError):
    """The engine's masks differ from fp32 by more than the gate allows."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _median_ms(fn: Callable[[], None], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()  # not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _object_prompts(scene, image_size: int, kinds: Sequence[str]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Decoder prompts (coords in the resized frame, labels) for every object of a held-out scene:
    "click" its centre point, "box" its bounding box, "click+box" both (SAM's prompt rules)."""
    centres = np.array([centre_point(m) for m in scene.masks], np.float64)
    out = []
    for kind in kinds:
        boxes = None
        if "box" in kind:
            boxes = masks_to_boxes(np.stack(scene.masks)).astype(np.float64)
        if "click" in kind:
            coords, labels = prompts.assemble_prompts(centres[:, None, :], np.ones((len(centres), 1), np.int32), boxes)
        else:
            coords, labels = prompts.assemble_prompts(None, None, boxes)
        out.append(prompts.decoder_prompts(coords, labels, scene.image.shape[:2], image_size))
    return out


# fp32 reference embeddings of the held-out scenes, kept for the process: `samrt serve` builds the
# encoder's engine and then the decoder's, and both gates compare against the same fp32 encoder on
# the same scenes (vit_h: ~1.5 min an image here). Key: the reference graph (path, mtime) and the
# preprocessed image's digest; 8 scenes of an official model are 32 MiB.
_REFERENCE_EMBEDDINGS: Dict[Tuple[str, float, int, str], Tuple[np.ndarray, float]] = {}


def _reference_embedding(reference_encoder: Runner, x: np.ndarray) -> Tuple[np.ndarray, float]:
    """(fp32 embedding of `x`, ms its run took: now, or when the process memoized it)."""
    path = getattr(reference_encoder, "path", None)
    key = None
    if path is not None and os.path.isfile(path):
        stat = os.stat(path)  # (an external-data graph's weights file is written with it)
        key = (os.path.abspath(path), stat.st_mtime, stat.st_size, hashlib.sha1(x.tobytes()).hexdigest())
        if key in _REFERENCE_EMBEDDINGS:
            return _REFERENCE_EMBEDDINGS[key]
    t0 = time.perf_counter()
    emb = reference_encoder.run({"image": x})["image_embeddings"]
    ms = (time.perf_counter() - t0) * 1e3
    if key is not None:
        _REFERENCE_EMBEDDINGS[key] = (emb, ms)
    return emb, ms


def accuracy_against_fp32(reference_encoder: Runner, engine_encoder: Runner, decoder: MaskDecoder,
                          scenes: Sequence, engine_decoder: Optional[MaskDecoder] = None,
                          prompt_kinds: Sequence[str] = ("click",),
                          progress: Optional[Callable[[str], None]] = None) -> dict:
    """Mask IoU and score difference of engine vs fp32 over every object's prompts
    (`prompt_kinds`, see `_object_prompts`): the 3 multimask candidates of each prompt are compared.
    `engine_encoder` the same runner as `reference_encoder` (a decoder's gate): each image is
    encoded once; fp32 embeddings are kept for the process (`_REFERENCE_EMBEDDINGS`). The encoders'
    run times per scene are returned (`fp32_encoder_ms`, `engine_encoder_ms`; a memoized fp32
    embedding brings the time of its run). `progress` gets a line per scene (vit_h takes minutes a scene here)."""
    image_size = int(reference_encoder.input_shapes["image"][-1])
    engine_decoder = engine_decoder or decoder
    ious: List[float] = []
    score_diffs: List[float] = []
    cosines: List[float] = []
    ref_ms: List[float] = []
    eng_ms: List[float] = []
    t0 = time.perf_counter()
    for i, scene in enumerate(scenes):
        x, input_size = P.preprocess_image(scene.image, image_size)
        size = scene.image.shape[:2]
        ref_emb, ms = _reference_embedding(reference_encoder, x)
        ref_ms.append(ms)
        if engine_encoder is reference_encoder:
            eng_emb = ref_emb
        else:
            t = time.perf_counter()
            eng_emb = engine_encoder.run({"image": x})["image_embeddings"]
            eng_ms.append((time.perf_counter() - t) * 1e3)
        _say(progress, f"    scene {i + 1}/{len(scenes)} encoded ({time.perf_counter() - t0:.0f} s)")
        a, b = ref_emb.ravel().astype(np.float64), eng_emb.ravel().astype(np.float64)
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
        if not scene.masks:
            continue
        ref_state, eng_state = decoder.prepare_image(ref_emb), engine_decoder.prepare_image(eng_emb)
        for coords, labels in _object_prompts(scene, image_size, prompt_kinds):
            ref_low, ref_iou = decoder.decode(ref_emb, ref_state, coords, labels)
            eng_low, eng_iou = engine_decoder.decode(eng_emb, eng_state, coords, labels)
            ref_m = P.upscale_masks(ref_low[:, 1:], input_size, size, image_size) > 0
            eng_m = P.upscale_masks(eng_low[:, 1:], input_size, size, image_size) > 0
            for r, e in zip(ref_m.reshape(-1, *size), eng_m.reshape(-1, *size)):
                ious.append(mask_iou(r, e))
            score_diffs.extend(np.abs(ref_iou[:, 1:] - eng_iou[:, 1:]).ravel().tolist())
    return {
        "images": len(scenes),
        "prompts": list(prompt_kinds),
        "masks_compared": len(ious),
        "mean_mask_iou": float(np.mean(ious)) if ious else None,
        "worst_mask_iou": float(np.min(ious)) if ious else None,
        "mean_score_diff": float(np.mean(score_diffs)) if score_diffs else None,
        "max_score_diff": float(np.max(score_diffs)) if score_diffs else None,
        "mean_embedding_cosine": float(np.mean(cosines)),
        "fp32_encoder_ms": ref_ms,
        "engine_encoder_ms": eng_ms,
    }


def graph_of_onnx(onnx_path: str) -> Tuple[str, Dict[str, str]]:
    """(graph, {exported graph: path}) for an export's ONNX file: *.encoder.onnx, *.decoder.onnx, or
    any of the fast decoder's three (*.fast_decoder.onnx, *.fast_decoder_mask.onnx,
    *.image_prep.onnx: the others are found beside it). SamrtError when it is none of these or a
    file is missing."""
    base = os.path.basename(onnx_path)
    for graph in ("fast_decoder", "encoder", "decoder"):
        for f in GRAPHS[graph].files:
            if base.endswith(f".{f}.onnx"):
                prefix = onnx_path[: -len(f".{f}.onnx")]
                files = {g: f"{prefix}.{g}.onnx" for g in GRAPHS[graph].files}
                missing = [p for p in files.values() if not os.path.isfile(p)]
                if missing:
                    raise SamrtError(f"--onnx {onnx_path}: missing {missing}; expected the files `samrt export` writes")
                return graph, files
    raise SamrtError(f"--onnx: got {onnx_path!r}, expected an existing *.encoder.onnx, *.decoder.onnx or "
                     "*.fast_decoder.onnx written by `samrt export`")


# Accuracy control of OpenVINO INT8 encoders: validation scenes (a stream of their own, apart from
# calibration, training and the held-out gate), layers returned to float at most
INT8_VALIDATION_SCENES = 4
INT8_MAX_RESTORED_LAYERS = 10


def _int8_accuracy_control(reference: Runner, ref_decoder: MaskDecoder, image_size: int, min_mean_iou: float,
                           count: int = INT8_VALIDATION_SCENES) -> AccuracyControl:
    """NNCF's accuracy control for an INT8 encoder, on the gate's own metric: mean mask IoU of each
    object's centre-click masks from the INT8 embedding against the fp32 pipeline's, allowed to drop
    by 1 - `min_mean_iou` (from 1.0, the fp32 model's own score)."""
    items = []
    for i in range(count):
        scene = scene_for_index(i, stream=13)
        if not scene.masks:
            continue
        x, input_size = P.preprocess_image(scene.image, image_size)
        emb = reference.run({"image": x})["image_embeddings"]
        (coords, labels), = _object_prompts(scene, image_size, ("click",))
        low, _ = ref_decoder.decode(emb, {}, coords, labels)
        ref = P.upscale_masks(low[:, 1:], input_size, scene.image.shape[:2], image_size) > 0
        items.append({"image": x, "coords": coords, "labels": labels, "reference": ref, "input_size": input_size,
                      "size": scene.image.shape[:2]})

    def metric(embedding: np.ndarray, item: dict) -> float:
        low, _ = ref_decoder.decode(embedding, {}, item["coords"], item["labels"])
        got = P.upscale_masks(low[:, 1:], item["input_size"], item["size"], image_size) > 0
        return float(np.mean([mask_iou(r, g) for r, g in zip(item["reference"].reshape(-1, *item["size"]),
                                                             got.reshape(-1, *item["size"]))]))

    return AccuracyControl(items, metric, max_drop=max(0.0, 1.0 - min_mean_iou),
                           max_iterations=INT8_MAX_RESTORED_LAYERS)


def _default_calibration(count: int = 8) -> List[np.ndarray]:
    """Calibration scenes from a stream disjoint from training and from the held-out set."""
    return [scene_for_index(i, stream=7).image for i in range(count)]


def _build_onnxruntime(onnx_path: str, out: str, precision: str, calibration, image_size: int) -> dict:
    """An ONNX Runtime engine file; returns build details."""
    details: Dict[str, object] = {}
    if precision == "fp32":
        ortx.optimized_onnx_from_onnx(onnx_path, out)
    elif precision == "fp16":
        ortx.fp16_onnx_from_onnx(onnx_path, out)
        details["fp32_ops"] = list(ortx.FP32_OPS)
    else:
        ortx.int8_onnx_from_onnx(onnx_path, out, calibration, image_size)
        details["calibration_images"] = len(calibration)
    return details


# TensorRT optimisation profiles of the symbolic axes (min, opt, max)
_TRT_PROFILES = {"batch": (1, 1, 4), "num_prompts": (1, 16, 256), "num_points": (1, 3, 16), "num_tokens": (2, 4, 16)}


def _graph_spec(name: str, cfg):
    return {"encoder": encoder_spec, "decoder": decoder_spec, "image_prep": image_prep_spec,
            "fast_decoder": fast_decoder_spec,
            "fast_decoder_mask": lambda c: fast_decoder_spec(c, True)}[name](cfg)


def _build_tensorrt(file: str, onnx_path: str, out: str, out_dir: str, precision: str, calibration,
                    image_size: int) -> dict:
    """A TensorRT plan (profiles from the I/O spec); returns build details."""
    cfg = ExportManifest.read(os.path.dirname(onnx_path) or ".").config
    source, fp16_onnx = onnx_path, None
    if precision == "int8":
        source = ortx.int8_onnx_from_onnx(onnx_path, out + ".qdq.onnx", calibration, image_size)
    if precision == "fp16":
        fp16_onnx = ortx.fp16_onnx_from_onnx(onnx_path, out + ".fp16.onnx")
    spec = _graph_spec(file, cfg)
    axes = {a for t in spec.inputs for a in t.dynamic_axes.values()}
    profile = profiles_from_spec(spec, {a: _TRT_PROFILES[a] for a in axes})
    return dict(plan_from_onnx(source, out, precision, profile, timing_cache=os.path.join(out_dir, "timing.cache"),
                               fp16_onnx_path=fp16_onnx))


def _speed(graph: str, reference: Runner, ref_decoder: MaskDecoder, engine, sample_image: np.ndarray,
           repeats: int, gate_times: Optional[dict] = None) -> dict:
    """Median ms of the exact path (ONNX Runtime fp32: the exported encoder, the classic decoder)
    and the engine on the same input. An encoder whose gate timed both on at least `repeats`
    held-out scenes each (`gate_times`: accuracy_against_fp32's `fp32_encoder_ms` and
    `engine_encoder_ms`) is not run again: the medians of those runs are its speed."""
    image_size = int(reference.input_shapes["image"][-1])
    x = P.preprocess_image(sample_image, image_size)[0]
    if GRAPHS[graph].role == "decoder":
        emb = reference.run({"image": x})["image_embeddings"]
        coords = np.array([[[image_size / 3, image_size / 4], [0.0, 0.0]]], np.float32)
        labels = np.array([[1.0, -1.0]], np.float32)
        ref_state, state = ref_decoder.prepare_image(emb), engine.prepare_image(emb)
        speed = {"timed": "one click (a point and SAM's padding point, P=1) on a prepared image: the decoder's "
                          "decode only (median of repeats, after one warm-up)",
                 "fp32_ms": _median_ms(lambda: ref_decoder.decode(emb, ref_state, coords, labels), repeats),
                 "engine_ms": _median_ms(lambda: engine.decode(emb, state, coords, labels), repeats),
                 "prepare_image_ms": _median_ms(lambda: engine.prepare_image(emb), max(1, repeats // 2))}
    elif gate_times and min(len(gate_times["fp32_encoder_ms"]), len(gate_times["engine_encoder_ms"])) >= repeats:
        speed = {"timed": "encoder runs on the gate's held-out scenes, one preprocessed 1024 x 1024 image each "
                          "(median over the scenes; the first run of each included)",
                 "fp32_ms": float(np.median(gate_times["fp32_encoder_ms"])),
                 "engine_ms": float(np.median(gate_times["engine_encoder_ms"]))}
    else:
        # both encoders are warm: the gate ran them on every held-out scene just before
        speed = {"timed": "encoder run on one preprocessed image (median of repeats, after the gate's runs)",
                 "fp32_ms": _median_ms(lambda: reference.run({"image": x}), repeats, warmup=False),
                 "engine_ms": _median_ms(lambda: engine.run({"image": x}), repeats, warmup=False)}
    speed["speedup"] = speed["fp32_ms"] / speed["engine_ms"]
    return speed


def _say(progress: Optional[Callable[[str], None]], text: str) -> None:
    if progress is not None:
        progress(text)


# Inputs each exported graph has (samrt.spec): a graph without them is another graph.
_INPUTS = {"encoder": ("image",), "decoder": ("image_embeddings", "point_coords", "mask_input"),
           "fast_decoder": ("image_tokens", "point_coords"), "fast_decoder_mask": ("image_tokens", "mask_input"),
           "image_prep": ("image_embeddings",)}


def _open_graph(path: str, device: str, graph: str, **kw) -> OnnxRuntimeRunner:
    """ONNX Runtime's session of an exported graph; SamrtError naming the file when ONNX Runtime
    cannot load it or it is not the graph its name says (its inputs lack `_INPUTS[graph]`)."""
    try:
        runner = OnnxRuntimeRunner(path, device, **kw)
    except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph...: plain Exception subclasses
        raise SamrtError(f"{path}: got a file ONNX Runtime cannot load ({type(e).__name__}: {str(e)[:160]}), "
                         f"expected the {graph} graph `samrt export` writes") from None
    need = _INPUTS.get(graph, ())
    if not set(need) <= set(runner.input_names) or (graph == "image_prep" and "point_coords" in runner.input_names):
        raise SamrtError(f"{path}: got a graph with inputs {runner.input_names}, expected the {graph} graph "
                         f"(inputs {list(need)}) `samrt export` writes")
    return runner


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
    progress: Optional[Callable[[str], None]] = None,
) -> dict:
    """Build an engine from an export's graph (see `graph_of_onnx`), check it, report.

    The engine files go to `engine_path(<exported graph>, out_dir, backend, precision)` with the
    report beside the first (`<engine>.report.json`). `out_dir` must be new, empty, an export
    folder or an engines folder samrt wrote. Raises SamrtError for an impossible combination
    (`samrt.variants.Variant.check`) and EngineAccuracyError after writing the report when the gate
    fails (mean mask IoU against fp32 below `min_mean_iou`). `progress` gets one line per step.
    """
    graph, sources = graph_of_onnx(onnx_path)
    variant = Variant(graph, backend, precision).check(device)
    first_file = GRAPHS[graph].files[0]
    prefix = sources[first_file][: -len(f".{first_file}.onnx")]
    gate_graphs = [f"{prefix}.{g}.onnx" for g in ("encoder", "decoder")]  # the gate runs the exact pipeline
    missing = [p for p in gate_graphs if not os.path.isfile(p)]
    if missing:
        raise SamrtError(f"--onnx {onnx_path}: the accuracy gate needs the export's encoder and decoder beside it; "
                         f"missing {missing}; expected the folder `samrt export` writes")
    # the graphs are opened (and refused) before the output folder is made
    reference = _open_graph(f"{prefix}.encoder.onnx", device, "encoder", memory_arena=False)  # see OnnxRuntimeRunner
    ref_decoder = ClassicDecoder(_open_graph(f"{prefix}.decoder.onnx", device, "decoder"))
    for f, src in sources.items():
        if f not in ("encoder", "decoder"):  # the fast decoder's graphs: opened the same way, then let go
            _open_graph(src, device, f)
    prepare_output_dir(out_dir, "engines", accept=("export",))
    image_size = int(reference.input_shapes["image"][-1])
    held_out = eval_scenes(eval_images)
    calibration = list(calibration_images) if calibration_images is not None else None
    if precision == "int8" and not calibration:
        count = INT8_CALIBRATION_IMAGES if backend == "openvino" else 8
        calibration = _default_calibration(count)
    outs = {f: engine_path(src, out_dir, backend, precision) for f, src in sources.items()}
    t0 = time.perf_counter()
    details: Dict[str, object] = {}
    for f, src in sources.items():
        _say(progress, f"  {variant}: building {os.path.basename(outs[f])} from {os.path.basename(src)}")
        if backend == "onnxruntime":
            d = _build_onnxruntime(src, outs[f], precision, calibration, image_size)
        elif backend == "openvino":
            control = (_int8_accuracy_control(reference, ref_decoder, image_size, min_mean_iou)
                       if precision == "int8" else None)
            d = build_openvino_engine(src, outs[f], precision, calibration, image_size, control)[1]
        else:
            d = _build_tensorrt(f, src, outs[f], out_dir, precision, calibration, image_size)
        if len(sources) == 1:
            details.update(d)
        else:
            details.setdefault("files", {})[f] = d
    build_s = time.perf_counter() - t0

    _say(progress, f"  {variant}: checking against fp32 on {eval_images} held-out scenes")
    if graph == "encoder":
        engine = runner_for_engine(outs["encoder"], device, memory_arena=False)
        accuracy = accuracy_against_fp32(reference, engine, ref_decoder, held_out, progress=progress)
    else:
        engine = decoder_from_paths(outs, device, static_shapes=STATIC_SHAPES)
        accuracy = accuracy_against_fp32(reference, reference, ref_decoder, held_out, engine_decoder=engine,
                                         prompt_kinds=("click", "box", "click+box"), progress=progress)
    speed = _speed(graph, reference, ref_decoder, engine, held_out[0].image, speed_repeats, accuracy)
    first = next(iter(outs.values()))
    report = _report(variant, sources, outs, device, engine, build_s, details, speed, accuracy, min_mean_iou,
                     eval_images)
    report_path = first + REPORT_SUFFIX
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    report["report_path"] = report_path
    report["path"] = first
    _say(progress, f"  {variant}: mean mask IoU vs fp32 {accuracy['mean_mask_iou']:.4f} (gate {min_mean_iou}), "
                   f"{speed['engine_ms']:.1f} ms vs {speed['fp32_ms']:.1f} ms fp32 ({speed['speedup']:.2f}x), "
                   f"built in {build_s:.0f} s")
    if not report["gate"]["passed"]:
        hint = ""
        if precision == "int8" and backend == "openvino":
            hint = (f" even with up to {INT8_MAX_RESTORED_LAYERS} layers returned to float by NNCF's accuracy "
                    "control: bf16 is the fastest variant that passes here (`--precision bf16`)")
        raise EngineAccuracyError(
            f"{os.path.basename(first)}: mean mask IoU against fp32 {accuracy['mean_mask_iou']:.4f} is below the "
            f"gate {min_mean_iou} (worst {accuracy['worst_mask_iou']:.4f}, over {accuracy['masks_compared']} masks)"
            f"{hint}; report {report_path}"
        )
    return report


def build_variant(manifest: ExportManifest, variant: Variant, **kwargs) -> dict:
    """`build_engine` for a declared variant, into the export's own folder."""
    return build_engine(manifest.graph_path(GRAPHS[variant.graph].files[0]), manifest.export_dir, variant.backend,
                        variant.precision, **kwargs)


def _report(variant: Variant, sources: Dict[str, str], outs: Dict[str, str], device: str, engine, build_s, details,
            speed, accuracy, min_mean_iou, eval_images) -> dict:
    """The engine's report: what it is, where it came from, how fast and how accurate."""
    import onnxruntime  # onnxruntime: the cpu or gpu extra

    first = next(iter(outs))
    passed = accuracy["mean_mask_iou"] is not None and accuracy["mean_mask_iou"] >= min_mean_iou
    runners = {"encoder": engine} if variant.graph == "encoder" else (
        {"decoder": engine.runner} if variant.graph == "decoder" else
        {"fast_decoder": engine.decoder, "fast_decoder_mask": engine.decoder_mask, "image_prep": engine.image_prep})
    files = {f: {"engine": os.path.basename(outs[f]), "source": os.path.abspath(sources[f]), "sha256": _sha256(outs[f]),
                 "source_sha256": _sha256(sources[f]), "bytes": os.path.getsize(outs[f]),
                 "input_shapes": {k: list(v) for k, v in runners[f].input_shapes.items()}} for f in outs}
    return {
        "engine": files[first]["engine"],
        "source": files[first]["source"],
        "backend": variant.backend,
        "precision": variant.precision,
        "device": device,
        "sha256": files[first]["sha256"],
        "source_sha256": files[first]["source_sha256"],
        "bytes": sum(f["bytes"] for f in files.values()),
        "source_bytes": sum(os.path.getsize(p) for p in sources.values()),
        "graph": variant.graph,
        "files": files,
        "input_shapes": files[first]["input_shapes"],
        "versions": {"onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "processor": platform.processor(),
                     **({"openvino": openvino_version()} if variant.backend == "openvino" else {})},
        "build_s": round(build_s, 2),
        "details": details,
        "speed": speed,
        "accuracy": accuracy,
        "gate": {"metric": "mean_mask_iou against fp32", "min": min_mean_iou, "passed": passed,
                 "held_out": f"{eval_images} scenes of samrt.scenes.eval_scenes"},
    }

