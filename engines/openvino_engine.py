"""OpenVINO engines on the CPU: IR from ONNX (fp32 weights; fp32 or bf16 is a compile-time
hint), INT8 IR by NNCF post-training quantisation, and a runner with the `Runner` interface.

Precision, as samrt names it, and what OpenVINO's CPU plugin does with it:
- `fp32`: `INFERENCE_PRECISION_HINT=f32`, always set explicitly (on CPUs with AMX or AVX-512
  FP16 the plugin's own default is a 16-bit float).
- `bf16`: `INFERENCE_PRECISION_HINT=bf16`. Native on CPUs with AVX512_BF16 or AMX-BF16 (or
  AVX-NE-CONVERT); OpenVINO emulates it, slowly, on other AVX-512 CPUs and falls back to f32
  where it does not list BF16 at all. `bf16_support()` says which, and every report records it.
- `int8`: an IR with NNCF's quantise/dequantise pairs (weights int8 per channel, activations
  8-bit); the operations left in float run in bf16 where it is native, f32 otherwise.

The precision travels in the IR (`rt_info` samrt/precision) and in the file name
(`vit_b.encoder.bf16.xml`); the weights are stored in fp32 in every case.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from samrt import processing as P
from samrt.cpus import usable_cpus
from samrt.errors import SamrtError
from samrt.memory import give_back_freed_memory

from .runner import BF16_BITS, Runner, check_feeds

__all__ = [
    "AccuracyControl",
    "float_layers",
    "OpenVINORunner",
    "STATIC_MIN_AGREEMENT",
    "STATIC_MAX_SCORE_DIFF",
    "OpenVINOUnavailable",
    "PRECISIONS",
    "INT8_CALIBRATION_IMAGES",
    "INT8_FLOAT_WEIGHTS",
    "int8_float_nodes",
    "bf16_support",
    "cpu_supports_bf16",
    "float_precision_for",
    "ir_from_onnx",
    "int8_ir_from_onnx",
    "dynamic_int8_ir_from_onnx",
    "dynamic_group_size",
    "int8_dot_support",
    "build_openvino_engine",
    "openvino_version",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8", "int8-dynamic")
# A static compile's answers against the f32 model (OpenVINORunner): the bounds samrt's bf16
# server parity uses (mask pixels >= 99%, scores within 0.01), loose enough for bf16 rounding and
# tight enough for the 8-token failure (94% of mask pixels, scores off by 0.05).
STATIC_MIN_AGREEMENT = 0.99
STATIC_MAX_SCORE_DIFF = 0.01
# Other graphs (the encoder): each output's cosine similarity to f32 (bf16 encoders: ~0.9999)
STATIC_MIN_COSINE = 0.999
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_RT_KEY = ["samrt", "precision"]
# int8-dynamic IRs record the group size their activations are quantised in at run time
_DQ_KEY = ["samrt", "dynamic_quantization_group_size"]
# Run-time quantisation groups tried, largest first: the largest that divides every quantised
# layer's input size (vit_b/l/h: 256; larger groups ran faster here, 32 slowest).
DYNAMIC_GROUP_SIZES = (256, 128, 64, 32, 16)
# CPU flags with which OpenVINO runs int8 matrix products on int8 dot-product units
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# CPU flags (/proc/cpuinfo) with which bf16 matrix products run natively rather than emulated.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
# INT8 recipe: besides what NNCF's transformer preset keeps in float (LayerNorm, Softmax, GELU),
# the attention products (queries x keys, attention x values) stay in float, as in the ONNX
# Runtime INT8 path, and so do the layers whose weights come from these modules: the encoder's
# neck, the convolutions that produce the embedding itself. The exporter's node names are opaque
# (node_MatMul_830), so layers are found by the names of the weights they consume. SmoothQuant
# (alpha 0.95 on MatMuls, NNCF's transformer default) and 32 calibration scenes: on samrt_small
# this recipe gave a mean mask IoU of 0.980 against fp32 (8 scenes: 0.968; without SmoothQuant,
# 8 scenes: 0.977; attention products quantised, no SmoothQuant, 32 scenes: 0.974).
INT8_FLOAT_WEIGHTS = ("image_encoder.neck",)
INT8_CALIBRATION_IMAGES = 32


class OpenVINOUnavailable(SamrtError):
    """The openvino package is not installed, or asked for something this machine cannot do."""


def _ov():
    try:
        import openvino  # openvino: the openvino extra

        return openvino
    except ImportError as e:
        raise OpenVINOUnavailable(
            f"OpenVINO is not installed here ({e}); install it with `pip install 'samrt[openvino]'`") from e


_CORE = None


def _core():
    """One openvino.Core per process (it owns the plugin and its thread pools)."""
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


def openvino_version() -> Optional[str]:
    try:
        import openvino  # openvino: the openvino extra

        return openvino.__version__
    except ImportError:
        return None


def _cpu_flags() -> Optional[set]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def int8_dot_support() -> bool:
    """True when this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8),
    with which OpenVINO runs an int8-dynamic engine's products in int8; without them it would
    only decompress the weights (slower than bf16 here)."""
    flags = _cpu_flags()
    return bool(flags) and any(f in flags for f in _INT8_DOT_FLAGS)


def bf16_support() -> Dict[str, object]:
    """How bf16 runs on this CPU under OpenVINO.

    Returns {"mode": "native" | "emulated" | "unavailable" | "unknown", "capabilities": [...],
    "native_flags": [...], "message": str}: `unavailable` when OpenVINO does not list BF16 among
    the CPU's OPTIMIZATION_CAPABILITIES (a bf16 hint then runs in f32); `emulated` when it lists
    it but the CPU has none of AVX512_BF16, AMX-BF16, AVX-NE-CONVERT (slower than f32); `unknown`
    when the CPU flags cannot be read (not Linux).
    """
    caps = list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    flags = _cpu_flags()
    native = sorted(f for f in _NATIVE_BF16_FLAGS if flags and f in flags)
    if "BF16" not in caps:
        mode, msg = "unavailable", "OpenVINO lists no BF16 for this CPU: a bf16 hint runs in f32"
    elif flags is None:
        mode, msg = "unknown", "OpenVINO lists BF16; the CPU flags could not be read to tell native from emulated"
    elif native:
        mode, msg = "native", f"native bf16 ({', '.join(native)})"
    else:
        mode, msg = "emulated", ("OpenVINO lists BF16 but the CPU has no AVX512_BF16/AMX-BF16: bf16 is emulated "
                                 "and usually slower than f32")
    return {"mode": mode, "capabilities": caps, "native_flags": native, "message": msg}


def cpu_supports_bf16() -> bool:
    """True when this CPU runs bf16 natively under OpenVINO (see `bf16_support`)."""
    return bf16_support()["mode"] == "native"


def float_precision_for(precision: str) -> str:
    """The float precision an engine of `precision` runs its float operations in: itself for
    fp32/bf16; for int8 and int8-dynamic, bf16 where it is native and fp32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: got {precision!r}, expected one of {PRECISIONS}")
    if precision in ("int8", "int8-dynamic"):
        return "bf16" if cpu_supports_bf16() else "fp32"
    return precision


def _ir_precision(model) -> Optional[str]:
    return model.get_rt_info(_RT_KEY).astype(str) if model.has_rt_info(_RT_KEY) else None


def _ir_group_size(model) -> int:
    """The run-time quantisation group size an int8-dynamic IR records (0: none)."""
    return int(model.get_rt_info(_DQ_KEY).astype(str)) if model.has_rt_info(_DQ_KEY) else 0


class OpenVINORunner(Runner):
    """An OpenVINO model (.xml IR or .onnx) compiled for the CPU.

    `precision`: "fp32" or "bf16" (the float precision hint), "int8" (for an NNCF IR: its float
    part in bf16 where native), "int8-dynamic" (an IR of `dynamic_int8_ir_from_onnx`: its
    compressed layers run int8 products on activations quantised at run time in groups of the size
    the IR records, OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE; the rest in bf16 where native), or
    None: the IR's recorded precision, else fp32.
    `threads`: INFERENCE_NUM_THREADS (None: `samrt.cpus.usable_cpus()`, the CPUs this process may
    use). `streams`: NUM_STREAMS (1: one request at a time, lowest latency). `pinning`:
    ENABLE_CPU_PINNING, off by default because the engine shares the CPU with other processes.
    `snippets`: OpenVINO's Snippets fusion (on: OpenVINO's default). samrt turns it off for the
    decoder graphs: with it, OpenVINO 2026.4 answered the classic decoder compiled for 8 tokens in
    bf16 wrongly and differently from run to run, on an Intel Xeon (AMX) and an AMD EPYC (Zen 4)
    alike (engines/repro/openvino_static_bf16.py), and without it the fast decoder ran faster.
    Inputs are checked against the model's declared names, dtypes and fixed sizes on every call;
    dynamic dimensions are -1 in `input_shapes`. `run` is serialised by a lock (one infer request).

    `bf16_inputs`: inputs the model takes as bfloat16 bits (`runner.to_bf16_bits`, dtype uint16)
    when it runs in bf16 natively (`bf16_support()` "native"; otherwise ignored, and the runner's
    `bf16_inputs` is empty). A bf16 model converts a float32 input to bf16 on every call (a Reorder
    over the whole tensor); an input that is the same on many calls (the fast decoder's per-image
    tensors) is converted once by its owner instead, with the plugin's rounding, so the answers are
    the same bits and the owner keeps half the bytes. (Speed: the same within noise, 9.9 ms against
    9.9 ms for a vit_b click interleaved in one run on the 2-core AMD EPYC.)

    `static_shapes` > 0: the first `static_shapes` distinct input shapes seen each get a copy of
    the model compiled for exactly that shape (faster than the dynamic model: one click of the
    fast decoder in bf16 ran ~10-20% faster here); other shapes run on the dynamic model. Each
    static compile is checked when it is made (`compile_static`), against the same model compiled
    in f32 with dynamic shapes, on the feeds it is made for: low-res mask signs must agree on
    >= `STATIC_MIN_AGREEMENT` of the pixels and the scores within `STATIC_MAX_SCORE_DIFF`
    (outputs named low_res_masks / iou_predictions; other graphs: each output's cosine similarity
    to f32 >= `STATIC_MIN_COSINE`). A compile that disagrees is dropped (logged), and that shape runs on the dynamic model.
    """

    def __init__(self, path: str, precision: Optional[str] = None, threads: Optional[int] = None,
                 streams: int = 1, pinning: bool = False, performance_hint: str = "LATENCY",
                 static_shapes: int = 0, snippets: bool = True, dynamic: bool = True,
                 bf16_inputs: Sequence[str] = ()) -> None:
        ov = _ov()
        import openvino.properties as props  # openvino: the openvino extra
        import openvino.properties.hint as hints

        if not os.path.isfile(path) or not path.endswith((".xml", ".onnx")):
            raise FileNotFoundError(f"OpenVINO model {path!r}: expected an existing .xml (IR) or .onnx file")
        self.path = path
        model = _core().read_model(path)
        self.ir_precision = _ir_precision(model)
        precision = precision or self.ir_precision or "fp32"
        float_precision = float_precision_for(precision)
        if float_precision == "bf16" and bf16_support()["mode"] == "unavailable":
            float_precision = "fp32"  # nothing to ask for: the plugin has no bf16 on this CPU (logged below)
        self.precision = precision
        self.config = {
            hints.inference_precision: ov.Type.bf16 if float_precision == "bf16" else ov.Type.f32,
            hints.performance_mode: getattr(hints.PerformanceMode, performance_hint),
            props.num_streams: int(streams),
            hints.enable_cpu_pinning: bool(pinning),
            props.inference_num_threads: int(threads or usable_cpus()),
        }
        if not snippets:
            self.config["SNIPPETS_MODE"] = "DISABLE"
        self.dynamic_group_size = _ir_group_size(model)
        if self.dynamic_group_size:  # an int8-dynamic IR: activations quantised at run time
            self.config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(self.dynamic_group_size)
        self.input_names = [p.get_any_name() for p in model.inputs]
        self.output_names = [p.get_any_name() for p in model.outputs]
        self.input_shapes = {p.get_any_name(): tuple(d.get_length() if d.is_static else -1
                                                     for d in p.get_partial_shape())
                             for p in model.inputs}
        self.input_dtypes = {p.get_any_name(): p.get_element_type().to_dtype() for p in model.inputs}
        unknown = [n for n in bf16_inputs if n not in self.input_names]
        if unknown:
            raise SamrtError(f"{os.path.basename(path)}: bf16_inputs got {unknown}, expected inputs of {self.input_names}")
        native = float_precision == "bf16" and bf16_support()["mode"] == "native"
        self.bf16_inputs = tuple(bf16_inputs) if native else ()
        for n in self.bf16_inputs:
            self.input_dtypes[n] = BF16_BITS
        self._lock = threading.Lock()
        self.static_shapes = int(static_shapes)
        self._static: Dict[tuple, object] = {}  # input shapes -> infer request of a static compile (None: refused)
        self.refused_shapes: List[tuple] = []
        self.compiled = None  # the dynamic model (compiled now, or when first needed with dynamic=False)
        self._request = None
        self.inference_precision = "bf16" if float_precision == "bf16" else "f32"
        if dynamic or not self.static_shapes:
            self._dynamic_request()
        if precision == "bf16" and self.inference_precision != "bf16":
            log.warning("%s: bf16 asked, OpenVINO runs %s on this CPU", os.path.basename(path),
                        self.inference_precision)

    def _read_model(self):
        """The model as read from its file, its `bf16_inputs` declared bf16 (PrePostProcessor)."""
        model = _core().read_model(self.path)
        if self.bf16_inputs:
            ov = _ov()
            ppp = ov.preprocess.PrePostProcessor(model)
            for name in self.bf16_inputs:
                ppp.input(name).tensor().set_element_type(ov.Type.bf16)
            model = ppp.build()
        return model

    def _ov_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict:
        """Feeds for an infer request: `bf16_inputs` wrapped as bf16 tensors on their uint16 bits
        (no copy), the others as they are (read in place)."""
        out = dict(feeds)
        if self.bf16_inputs:
            ov = _ov()
            for name in self.bf16_inputs:
                bits = np.ascontiguousarray(out[name])
                out[name] = ov.Tensor(bits, ov.Shape(list(bits.shape)), ov.Type.bf16)
        return out

    def _dynamic_request(self):
        """The dynamic model's infer request, compiled on first use."""
        if self._request is None:
            import openvino.properties.hint as hints  # openvino: the openvino extra

            self.compiled = _core().compile_model(self._read_model(), "CPU", self.config)
            # what the plugin actually runs (a bf16 hint becomes f32 where BF16 is unavailable)
            self.inference_precision = self.compiled.get_property(hints.inference_precision()).get_type_name()
            self._request = self.compiled.create_infer_request()
        return self._request

    def _shape_key(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        return tuple(tuple(feeds[n].shape) for n in self.input_names)

    def compile_static(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """Compile the model for exactly the shapes of `feeds` (if no more than `static_shapes`
        exist yet), check it against the f32 reference on `feeds` (class docstring), and keep it
        when they agree. Returns whether that shape now runs on a checked static compile."""
        key = self._shape_key(feeds)
        with self._lock:
            if key in self._static:
                return self._static[key] is not None
            if len(self._static) >= self.static_shapes:
                return False
            import openvino.properties.hint as hints  # openvino: the openvino extra

            model = self._read_model()
            model.reshape({n: list(shape) for n, shape in zip(self.input_names, key)})
            compiled = _core().compile_model(model, "CPU", self.config)
            self.inference_precision = compiled.get_property(hints.inference_precision()).get_type_name()
            request = compiled.create_infer_request()
            got = _by_name(request.infer(self._ov_feeds(feeds)))
            # the f32 reference exists only for the check (an encoder's weights are GBs)
            ref_config = dict(self.config)
            ref_config[hints.inference_precision] = _ov().Type.f32
            reference = _core().compile_model(self._read_model(), "CPU", ref_config)
            ref = _by_name(reference.create_infer_request().infer(self._ov_feeds(feeds)))
            del reference
            give_back_freed_memory()  # the reference compile's freed blocks leave the process
            problem = _static_disagreement(got, ref)
            if problem:
                log.warning("%s: the static compile for shapes %s disagrees with the f32 model (%s); "
                            "that shape runs on the dynamic model", os.path.basename(self.path), list(key), problem)
                self.refused_shapes.append(key)
                request = None
            self._static[key] = request
            return request is not None

    def _request_for(self, key: tuple):
        """The infer request for these input shapes: a checked static compile, else the dynamic
        model's. Called under the lock."""
        return (self._static.get(key) if self.static_shapes else None) or self._dynamic_request()

    def settings(self) -> Dict[str, object]:
        """The compiled model's effective settings, for reports."""
        import openvino.properties as props  # openvino: the openvino extra
        import openvino.properties.hint as hints

        self._dynamic_request()
        get = self.compiled.get_property
        return {"precision": self.precision, "ir_precision": self.ir_precision,
                "inference_precision": self.inference_precision, "bf16_inputs": list(self.bf16_inputs),
                "dynamic_quantization_group_size": int(get("DYNAMIC_QUANTIZATION_GROUP_SIZE")),
                "performance_hint": str(get(hints.performance_mode())),
                "num_streams": int(get(props.num_streams())),
                "inference_num_threads": int(get(props.inference_num_threads())),
                "enable_cpu_pinning": bool(get(hints.enable_cpu_pinning()))}

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        check_feeds(os.path.basename(self.path), feeds, self.input_names, self.input_dtypes, self.input_shapes)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        names = list(outputs or self.output_names)
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise SamrtError(f"{os.path.basename(self.path)}: got outputs {unknown}, expected some of {self.output_names}")
        key = self._shape_key(feeds)
        if self.static_shapes and key not in self._static:
            self.compile_static(feeds)  # first sight of this shape (once; checked, see the class docstring)
        with self._lock:
            # inputs are read in place (the caller's arrays stay untouched until infer returns);
            # outputs are copied out (share_outputs=False)
            result = self._request_for(key).infer(self._ov_feeds(feeds), share_inputs=True)
            by_name = _by_name(result)
        return {n: by_name[n] for n in names}


def _by_name(result) -> Dict[str, np.ndarray]:
    """An infer result by every name of each output port (a port can carry several tensor names,
    e.g. after NNCF's weight compression, and `get_any_name` may answer any of them)."""
    return {name: value for port, value in result.items() for name in port.get_names()}


def _static_disagreement(got: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> Optional[str]:
    """Why a static compile's outputs `got` are not the f32 model's `ref` (None: they agree)."""
    if "low_res_masks" in ref:
        agree = float(np.mean((got["low_res_masks"] > 0) == (ref["low_res_masks"] > 0)))
        diff = float(np.max(np.abs(got["iou_predictions"] - ref["iou_predictions"]))) if ref["iou_predictions"].size else 0.0
        if not np.all(np.isfinite(got["low_res_masks"])) or agree < STATIC_MIN_AGREEMENT or diff > STATIC_MAX_SCORE_DIFF:
            return (f"mask pixels agree {agree:.4f} (>= {STATIC_MIN_AGREEMENT} expected), scores differ by up to "
                    f"{diff:.4f} (<= {STATIC_MAX_SCORE_DIFF} expected)")
        return None
    for name, r in ref.items():
        g = got[name].astype(np.float64).ravel()
        r = r.astype(np.float64).ravel()
        cosine = float(g @ r / max(np.linalg.norm(g) * np.linalg.norm(r), 1e-30)) if r.size else 1.0
        if not np.all(np.isfinite(g)) or cosine < STATIC_MIN_COSINE:
            return f"{name}: cosine similarity {cosine:.6f} ({STATIC_MIN_COSINE} expected at least)"
    return None


def _save_ir(model, dst_xml: str, precision: str) -> str:
    ov = _ov()
    if not dst_xml.endswith(".xml"):
        raise ValueError(f"dst_xml: got {dst_xml!r}, expected a path ending in .xml")
    model.set_rt_info(precision, _RT_KEY)
    ov.save_model(model, dst_xml, compress_to_fp16=False)  # keep fp32 weights: precision is a runtime hint
    return dst_xml


def ir_from_onnx(src: str, dst_xml: str, precision: str = "fp32") -> str:
    """Convert an ONNX graph to OpenVINO IR (dst_xml and its .bin), fp32 weights, `precision`
    ("fp32" or "bf16") recorded in the IR for the runner's compile-time hint. Returns dst_xml."""
    if precision not in _HINTS:
        raise ValueError(f"precision: got {precision!r}, expected one of {tuple(_HINTS)} (int8: int8_ir_from_onnx)")
    return _save_ir(_ov().convert_model(src), dst_xml, precision)


def dynamic_group_size(model) -> int:
    """The largest of `DYNAMIC_GROUP_SIZES` that divides the input size of every MatMul with a
    constant (weight) operand of `model` (0 when none does)."""
    sizes = set()
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        if any(i.get_source_output().get_node().get_type_name() == "Constant" for i in op.inputs()):
            k = op.input(0).get_partial_shape()[-1]
            if k.is_static:
                sizes.add(k.get_length())
    return next((g for g in DYNAMIC_GROUP_SIZES if sizes and all(k % g == 0 for k in sizes)), 0)


def dynamic_int8_ir_from_onnx(src: str, dst_xml: str) -> Tuple[str, Dict[str, object]]:
    """An int8-dynamic encoder IR: the weights of its linear layers (MatMul with a weight) int8,
    symmetric per output channel (`nncf.compress_weights`, INT8_SYM); convolutions (the patch
    embedding, the neck) and products of two activations (attention) stay in float. At run time
    OpenVINO quantises each linear layer's input to int8 in groups of `dynamic_group_size` values
    (recorded in the IR; `OpenVINORunner` sets DYNAMIC_QUANTIZATION_GROUP_SIZE from it) and runs
    the products on the CPU's int8 dot-product units. No calibration: seconds to build.
    Returns (dst_xml, details for the engine report)."""
    import nncf  # nncf: the openvino extra

    nncf.set_log_level(logging.WARNING)
    model = _ov().convert_model(src)
    group = dynamic_group_size(model)
    if not group:
        raise SamrtError(f"{os.path.basename(src)}: no run-time quantisation group of {DYNAMIC_GROUP_SIZES} divides "
                         "the input size of every linear layer; expected an encoder with such sizes "
                         "(build --precision bf16 or int8 instead)")
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM,
                                       ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    compressed.set_rt_info(str(group), _DQ_KEY)
    layers = sum(1 for op in compressed.get_ops()  # one int8 weight constant per compressed layer
                 if op.get_type_name() == "Constant" and op.get_element_type() == _ov().Type.i8)
    details = {"tool": f"nncf {nncf.__version__} compress_weights", "weights": "int8, symmetric, per output channel",
               "activations": f"int8, quantised at run time by OpenVINO in groups of {group} values",
               "float": "convolutions (patch embedding, neck), attention products, LayerNorm, Softmax, GELU",
               "dynamic_quantization_group_size": group, "int8_layers": layers, "calibration_images": 0}
    return _save_ir(compressed, dst_xml, "int8-dynamic"), details


def int8_float_nodes(model, weight_name_parts: Sequence[str] = INT8_FLOAT_WEIGHTS,
                     attention_products: bool = False) -> List[str]:
    """Names of the MatMul/Convolution nodes of `model` (an openvino.Model) to keep in float:
    those consuming a weight whose name contains one of `weight_name_parts`, and, with
    `attention_products`, every MatMul of two activations (queries x keys, attention x values)."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        consts = [n.get_friendly_name() for n in sources if n.get_type_name() == "Constant"]
        if any(part in c for c in consts for part in weight_name_parts) or (
                attention_products and op.get_type_name() == "MatMul" and not consts):
            names.append(op.get_friendly_name())
    return names


@dataclass
class AccuracyControl:
    """NNCF's accuracy-controlled quantisation (`nncf.quantize_with_accuracy_control`): after the
    INT8 recipe, layers go back to float, the most sensitive first (ranked on `ranking_subset`
    items), until `metric` over `items` drops by at most `max_drop` from the float model's, or
    `max_iterations` layers were returned. `items`: validation inputs as `{"image": x, ...}`
    (the rest is the metric's); `metric(output, item) -> float` scores the model's output on one item."""

    items: Sequence[dict]
    metric: Callable[[np.ndarray, dict], float]
    max_drop: float
    max_iterations: int = 10
    ranking_subset: int = 2


def int8_ir_from_onnx(src: str, dst_xml: str, calibration_images: Sequence[np.ndarray], image_size: int,
                      float_weights: Sequence[str] = INT8_FLOAT_WEIGHTS, attention_products_float: bool = True,
                      smooth_quant_alpha: float = 0.95, input_name: str = "image",
                      accuracy_control: Optional[AccuracyControl] = None) -> Tuple[str, List[str]]:
    """INT8 encoder IR by NNCF post-training quantisation, calibrated on `calibration_images`
    (HxWx3 uint8 RGB, preprocessed as the pipeline does to `image_size`).

    Transformer preset (`ModelType.TRANSFORMER`: symmetric int8 weights per channel, asymmetric
    activations, LayerNorm/Softmax/GELU in float), SmoothQuant on MatMuls with `smooth_quant_alpha`
    (negative: off), fast bias correction, and the layers of `int8_float_nodes(float_weights,
    attention_products_float)` kept in float. With `accuracy_control`, NNCF then returns the most
    sensitive layers to float until the metric holds (`AccuracyControl`). Returns (dst_xml, the
    names of the MatMul/Convolution layers left in float: the recipe's and the restored ones).
    """
    import nncf  # nncf: the openvino extra

    if not calibration_images:
        raise ValueError("calibration_images: got none, expected at least one image")
    samples = [{input_name: P.preprocess_image(im, image_size)[0]} for im in calibration_images]
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every node it leaves unquantised
    model = _ov().convert_model(src)
    kept = int8_float_nodes(model, float_weights, attention_products_float)
    common = dict(model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples), fast_bias_correction=True,
                  ignored_scope=nncf.IgnoredScope(names=kept))
    advanced = nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha))
    if accuracy_control is None:
        quantized = nncf.quantize(model, nncf.Dataset(samples), advanced_parameters=advanced, **common)
    else:
        ac = accuracy_control

        def validate(compiled, items):
            scores = [float(ac.metric(compiled({input_name: item[input_name]})[0], item)) for item in items]
            return float(np.mean(scores)), scores

        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters  # nncf: the openvino extra

        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(samples), nncf.Dataset(list(ac.items)), validate, max_drop=ac.max_drop,
            drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=ac.max_iterations, ranking_subset_size=ac.ranking_subset), **common)
    return _save_ir(quantized, dst_xml, "int8"), float_layers(quantized)


def float_layers(model) -> List[str]:
    """MatMul/Convolution layers of an (NNCF) model that no quantiser feeds: they run in float."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        if all(i.get_source_output().get_node().get_type_name() != "FakeQuantize" for i in op.inputs()):
            names.append(op.get_friendly_name())
    return names


def _file_facts(xml_path: str) -> Dict[str, object]:
    bin_path = xml_path[: -len(".xml")] + ".bin"
    h = hashlib.sha256()
    with open(bin_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"weights_file": os.path.basename(bin_path), "weights_bytes": os.path.getsize(bin_path),
            "weights_sha256": h.hexdigest()}


def build_openvino_engine(onnx_path: str, out: str, precision: str,
                          calibration: Optional[Sequence[np.ndarray]], image_size: int,
                          accuracy_control: Optional[AccuracyControl] = None) -> Tuple[OpenVINORunner, dict]:
    """Write the IR `out` (*.xml) for `precision` from an exported graph and compile it.

    Returns (runner, details for the engine report: the effective inference precision and
    settings, bf16 support on this CPU, the quantisation recipe for int8, versions)."""
    if precision not in PRECISIONS:
        raise SamrtError(f"--precision: got {precision!r}, expected one of {PRECISIONS} for --backend openvino")
    support = bf16_support()
    details: Dict[str, object] = {"bf16_support": support, "openvino": openvino_version(), "ir_weights": "fp32"}
    t0 = time.perf_counter()
    if precision in ("int8", "int8-dynamic") and not onnx_path.endswith(".encoder.onnx"):
        raise SamrtError(f"--backend openvino --precision {precision}: the decoders stay in float (fp32 or bf16); "
                         "quantise the encoder")
    if precision == "int8-dynamic":
        details["quantization"] = dynamic_int8_ir_from_onnx(onnx_path, out)[1]
        details["ir_weights"] = "int8 (linear layers, with their scales), fp32 elsewhere"
    elif precision == "int8":
        import nncf  # nncf: the openvino extra

        if onnx_path.endswith(".decoder.onnx"):
            raise SamrtError("--backend openvino --precision int8: the decoder stays in float (fp32 or bf16); "
                             "quantise the encoder")
        recipe = int8_float_nodes(_ov().convert_model(onnx_path), INT8_FLOAT_WEIGHTS, True)
        _, kept = int8_ir_from_onnx(onnx_path, out, calibration, image_size, accuracy_control=accuracy_control)
        details["quantization"] = {
            "tool": f"nncf {nncf.__version__}", "model_type": "transformer", "preset": "mixed",
            "smooth_quant_alpha_matmul": 0.95, "fast_bias_correction": True,
            "float_weights": list(INT8_FLOAT_WEIGHTS), "attention_products": "float", "float_nodes": kept,
            "calibration_images": len(calibration),
            "accuracy_control": None if accuracy_control is None else {
                "tool": "nncf.quantize_with_accuracy_control", "metric": "mean mask IoU against fp32 (centre clicks)",
                "validation_images": len(accuracy_control.items), "max_drop": accuracy_control.max_drop,
                "max_layers_restored": accuracy_control.max_iterations,
                "restored_to_float": sorted(set(kept) - set(recipe))},
        }
    else:
        ir_from_onnx(onnx_path, out, precision)
    details["convert_s"] = round(time.perf_counter() - t0, 2)
    details.update(_file_facts(out))
    if precision != "fp32" and support["mode"] != "native":
        details["bf16_note"] = support["message"]
        log.warning("%s: %s", os.path.basename(out), support["message"])
    runner = OpenVINORunner(out, precision)
    details["runtime"] = runner.settings()
    return runner, details
