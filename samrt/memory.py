"""What a server (or an export) will take from this machine's memory, estimated before it starts:
`samrt serve` refuses a start that will not fit, with the estimate's parts, instead of being
killed by the kernel half-way.

The estimate of a server (bytes, PSS summed over tritonserver and its model processes, under
load) is a sum of parts, each derived from the model's configuration (`samrt.spec.SamConfig`):

- "processes": tritonserver and the python-backend stubs with their libraries, the decoders and
  the requests in flight under load (`PROCESS_BASE`; the same for every model type: SAM's decoder
  is the same size in all);
- "encoder weights": the encoder's parameters (`encoder_params`, exact for SAM's ViT) times the
  bytes each takes resident in the serving engine (`WEIGHT_BYTES[(backend, precision)]`);
- "encoder weights file (mapped)": OpenVINO maps the IR's weights file and its pages stay
  resident beside the compiled copy (vit_h: 2.4 GiB; clean file pages, which the kernel can drop
  under pressure, but they count in the process's PSS);
- "encoder activations": the images the encoder runs at once (one on a CPU: `sam_image_encoder`
  runs a batch's images one at a time there; `encoder_batch` on a GPU), each the global-attention
  score tensor (heads x N^2 float32, N = (image_size / patch_size)^2 tokens; SAM's largest) times
  what the backend keeps alive at its peak (`ACTIVATION_FACTOR`);
- "automatic masks": `sam_amg`'s working memory while it generates (`AMG_WORKING`; it grows with
  the image's size, not the model's);
- "embedding cache": the cache's byte bound (`RepoOptions.cache_bytes`), reached under load.

The constants are measured (`samrt bench memory`, `samrt bench e2e`; docs/memory.md gives the
machine and the figures); the estimate is meant to err high, not to be exact.
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from samrt.errors import InsufficientMemoryError, SamrtError
from samrt.spec import SamConfig, get_config, resolve_model_type

__all__ = ["MemoryEstimate", "InsufficientMemoryError", "encoder_params", "decoder_params",
           "estimate_server_memory", "estimate_export_memory", "available_memory", "check_fits",
           "give_back_freed_memory", "estimate_build_memory"]

GIB = 2**30
MIB = 2**20

# Measured (docs/memory.md, vit_b under a 32-client soak, 2026-12-04): everything but the encoder's
# weights and activations and the embedding cache came to 1.3 GiB (vit_h with 4 clients: 1.3 GiB).
PROCESS_BASE = 1400 * MIB
# Resident bytes per encoder parameter, by (backend, precision) of the served encoder.
WEIGHT_BYTES: Dict[Tuple[str, str], float] = {
    ("onnxruntime", "fp32"): 4.0,
    ("onnxruntime", "int8"): 1.0,
    ("onnxruntime", "fp16"): 2.0,
    ("openvino", "fp32"): 4.0,
    ("openvino", "bf16"): 2.0,
    ("openvino", "int8"): 1.0,
    ("openvino", "int8-dynamic"): 1.0,  # int8 linear weights; the small convolutions in bf16
    ("tensorrt", "fp16"): 2.0,
    ("tensorrt", "int8"): 1.0,
}
# Bytes per parameter in an OpenVINO IR's weights file as samrt saves it (fp32 weights for the fp32
# and bf16 engines: `save_model(compress_to_fp16=False)`; the int8 engine's are int8).
IR_WEIGHT_BYTES: Dict[str, float] = {"fp32": 4.0, "bf16": 4.0, "int8": 1.0, "int8-dynamic": 1.0}
# Global-attention-score-sized tensors alive at the encoder's peak, per image, by backend
# (measured on vit_b, 2026-12-04: OpenVINO keeps ~1.7 after a run; ONNX Runtime, arena off,
# peaks at ~4.4 during one).
ACTIVATION_FACTOR: Dict[str, float] = {"openvino": 2.0, "onnxruntime": 4.5, "tensorrt": 4.5}
AMG_WORKING = 1024 * MIB  # sam_amg generating on a phone photo: its masks of a batch, RLE, records
DEFAULT_CACHE_BYTES = 1024 * MIB  # RepoOptions.cache_bytes
# An export holds the PyTorch model, the traced program and the ONNX graph being written, then
# runs both for the check. Measured (docs/memory.md, 2026-12-04): vit_h's export peaked at 10.3 GiB
# RSS (model 2.4 GiB), the tiny model's at 1.8 GiB; bytes per parameter at the peak and the
# encoder's activations in PyTorch and ONNX Runtime, in global-attention-score tensors:
EXPORT_BYTES_PER_PARAM = 8.0
EXPORT_BASE = 1500 * MIB
EXPORT_ACTIVATION_FACTOR = 5.0
# Building an engine: the engine's copies of the weights at the build's peak, bytes per parameter
# (OpenVINO reads the ONNX graph, converts, compiles and saves the IR; vit_h's build peaked at
# 16.0 GiB with the gate's fp32 reference beside it: docs/memory.md).
BUILD_ENGINE_BYTES_PER_PARAM = 12.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a server (or an export) will take, by part; `total` is their sum."""

    what: str
    parts: Dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if v)
        return f"{self.what}: about {self.total / GIB:.1f} GiB ({parts} GiB)"


def _cfg(model: "str | SamConfig") -> SamConfig:
    if isinstance(model, SamConfig):
        return model
    try:
        model_type = resolve_model_type(model)
    except KeyError as e:
        raise SamrtError(str(e.args[0])) from None
    if model_type in (None, "auto"):
        raise SamrtError(f"model type: got {model!r}, expected a model type (the estimate needs one)")
    return get_config(model_type)


def encoder_params(model: "str | SamConfig") -> int:
    """Parameters of SAM's image encoder (ViT + neck), exact: patch embedding, absolute position
    embedding, `depth` blocks (two LayerNorms, qkv, projection, MLP 4x, decomposed relative position
    tables of 2*size-1 rows per axis: size = window_size, or the token grid in global blocks), and the
    neck (1x1 and 3x3 convolutions without bias, two LayerNorms). Source: segment_anything/modeling/
    image_encoder.py (ImageEncoderViT, Block, Attention)."""
    cfg = _cfg(model)
    d, p, grid, out = cfg.encoder_embed_dim, cfg.patch_size, cfg.image_size // cfg.patch_size, cfg.prompt_embed_dim
    head_dim = d // cfg.encoder_num_heads
    block = 12 * d * d + 13 * d
    sizes = [grid if i in cfg.encoder_global_attn_indexes else cfg.window_size for i in range(cfg.encoder_depth)]
    rel = sum(2 * (2 * size - 1) * head_dim for size in sizes)
    neck = d * out + 2 * out + out * out * 9 + 2 * out
    return p * p * 3 * d + d + grid * grid * d + cfg.encoder_depth * block + rel + neck


def decoder_params(model: "str | SamConfig") -> int:
    """Parameters of the prompt encoder and mask decoder: 4,064,560 for SAM's (256-wide) decoder.
    Counted from the module definitions once (segment_anything 1.0), scaled by the width squared."""
    cfg = _cfg(model)
    return int(round(4_064_560 * (cfg.prompt_embed_dim / 256) ** 2))


def _attention_bytes(cfg: SamConfig) -> int:
    """One fp32 global-attention score tensor of one image: heads x N x N x 4 bytes."""
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    return cfg.encoder_num_heads * tokens * tokens * 4


def estimate_server_memory(model: "str | SamConfig", backend: str, precision: str, encoder_batch: int = 4,
                           cache_bytes: int = DEFAULT_CACHE_BYTES, amg: bool = True,
                           device: str = "cpu") -> MemoryEstimate:
    """The server's memory (PSS summed over its processes) under load, by part (see the module
    docstring). `backend`/`precision`: the served encoder's (`WEIGHT_BYTES` keys; SamrtError for
    another); `encoder_batch`: RepoOptions.encoder_max_batch (the images at once on a GPU; a CPU
    runs them one at a time); `amg`: whether `sam_amg` may run."""
    cfg = _cfg(model)
    if (backend, precision) not in WEIGHT_BYTES:
        raise SamrtError(f"encoder engine: got {backend} {precision}, expected one of "
                         f"{sorted(f'{b} {p}' for b, p in WEIGHT_BYTES)}")
    if encoder_batch < 1:
        raise SamrtError(f"encoder_batch: got {encoder_batch}, expected at least 1")
    at_once = 1 if device == "cpu" else encoder_batch
    parts = {
        "processes": PROCESS_BASE,
        "encoder weights": int(encoder_params(cfg) * WEIGHT_BYTES[(backend, precision)]),
        "encoder weights file (mapped)": int(encoder_params(cfg) * IR_WEIGHT_BYTES[precision])
        if backend == "openvino" else 0,
        "encoder activations": int(at_once * ACTIVATION_FACTOR[backend] * _attention_bytes(cfg)),
        "automatic masks": AMG_WORKING if amg else 0,
        "embedding cache": int(cache_bytes),
    }
    images = "one image at a time" if at_once == 1 else f"{at_once} images at once"
    return MemoryEstimate(f"a {cfg.model_type} server ({backend} {precision} encoder, {images})", parts)


def estimate_export_memory(model: "str | SamConfig") -> MemoryEstimate:
    """The peak of `samrt export` (PyTorch model, traced program, ONNX graph, the checks), by part."""
    cfg = _cfg(model)
    params = encoder_params(cfg) + decoder_params(cfg)
    return MemoryEstimate(f"the export of {cfg.model_type}", {
        "process": EXPORT_BASE,
        "weights, traced and written": int(params * EXPORT_BYTES_PER_PARAM),
        "encoder activations (PyTorch and ONNX Runtime)": int(EXPORT_ACTIVATION_FACTOR * _attention_bytes(cfg)),
    })


# An OpenVINO INT8 encoder's build (NNCF: statistics over every quantised layer's activations on
# the calibration images, SmoothQuant, the quantised copy beside the float model) holds about as much
# again as a float build. Measured: vit_b peaked at 14.9 GiB RSS (`/usr/bin/time -v samrt
# build-engine --precision int8`, AMD EPYC, 2026-12-06) against 7.7 GiB estimated for a float
# build. Not measured for vit_l / vit_h: the same ratio is assumed.
INT8_CALIBRATION_FACTOR = 1.0


def estimate_build_memory(model: "str | SamConfig", backend: str, precision: str = "fp32") -> MemoryEstimate:
    """The peak of building and gating one engine (`samrt.engines.build.build_engine`, what the
    first `samrt serve` runs): the accuracy gate's fp32 ONNX Runtime encoder (weights and one
    image's activations) beside the engine being built (OpenVINO: the model read, its compiled
    copy and the compile's working copy; `BUILD_ENGINE_BYTES_PER_PARAM`) and its activations; an
    OpenVINO int8 build adds its calibration (`INT8_CALIBRATION_FACTOR` of the rest).
    Measured: vit_h's launcher peaked at 16.0 GiB RSS building the OpenVINO fp32 encoder."""
    cfg = _cfg(model)
    if backend not in ACTIVATION_FACTOR:
        raise SamrtError(f"engine backend: got {backend!r}, expected one of {sorted(ACTIVATION_FACTOR)}")
    params = encoder_params(cfg)
    parts = {
        "process": EXPORT_BASE,
        "fp32 reference encoder (weights, activations)": int(params * 4 + ACTIVATION_FACTOR["onnxruntime"]
                                                             * _attention_bytes(cfg)),
        "engine being built (weights, activations)": int(params * BUILD_ENGINE_BYTES_PER_PARAM
                                                         + ACTIVATION_FACTOR[backend] * _attention_bytes(cfg)),
    }
    if backend == "openvino" and precision == "int8":
        parts["int8 calibration (NNCF statistics, quantised copy)"] = int(INT8_CALIBRATION_FACTOR * sum(parts.values()))
    return MemoryEstimate(f"building the {backend} {precision} engine of {cfg.model_type}", parts)


def available_memory(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """The kernel's estimate of memory available to a new workload (MemAvailable), bytes; None
    where it cannot be read."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(estimate: MemoryEstimate, available: Optional[int] = None, override: str = "",
               already_held: int = 0) -> None:
    """Raise InsufficientMemoryError when `estimate` exceeds `available` (default: MemAvailable
    now) plus `already_held` (bytes of the estimate this process holds already, e.g. a loaded
    checkpoint); the message gives the estimate's parts and, when given, how to go on anyway
    (`override`). Where the available memory cannot be read, nothing is checked."""
    available = available_memory() if available is None else available
    if available is not None:
        available += already_held
    if available is None or estimate.total <= available:
        return
    hint = f"; {override}" if override else ""
    raise InsufficientMemoryError(
        f"{estimate.describe()}; memory available on this machine: got {available / GIB:.1f} GiB, expected at "
        f"least {estimate.total / GIB:.1f} GiB: it would not fit{hint}")


def give_back_freed_memory() -> bool:
    """Collect Python's garbage and hand glibc's free heap pages back to the system
    (`malloc_trim(0)`). Blocks freed by an engine (a model compiled only for a check, a session
    closed) otherwise stay in the process: tensors of a few MiB to 32 MiB, an encoder's weights,
    come from the heap, which glibc does not shrink by itself. Returns False where the C library
    is not glibc (nothing is done but the collection)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
