"""TensorRT plans from samrt's ONNX graphs, and a runner over them (TensorRT 10.x and 11.x).

Runs wherever `tensorrt` imports (e.g. NGC's Triton container); nothing here is mocked.
- FP16: on 10.x the FP16 builder flag with per-layer FP32 constraints on normalisation,
  softmax and reductions (OBEY_PRECISION_CONSTRAINTS); on 11.x, where precision flags are
  gone, a strongly typed network built from samrt's FP16 ONNX (those ops already FP32).
- INT8: explicit quantisation from the QDQ ONNX (engines.onnxruntime_engines.int8_onnx_from_onnx).
- Optimisation profiles (min/opt/max) from the I/O spec's symbolic axes; a timing cache file.
Buffers are torch CUDA tensors (no pycuda).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from samrt.errors import SamrtError
from samrt.spec import GraphSpec

from .runner import Runner

__all__ = ["TensorRTUnavailable", "Profile", "profiles_from_spec", "plan_from_onnx", "TensorRTRunner", "tensorrt_version"]


class TensorRTUnavailable(SamrtError):
    """The `tensorrt` Python package (with its libraries) is not installed here."""


def _trt():
    try:
        import tensorrt as trt  # tensorrt: NVIDIA's container only
    except Exception as e:  # ImportError, or the PyPI stub failing to find libraries
        raise TensorRTUnavailable(
            f"TensorRT is not available here ({type(e).__name__}: {e}); build plans inside NVIDIA's "
            "Triton/TensorRT container (nvcr.io/nvidia/tritonserver:<ver>-py3) or install TensorRT"
        ) from None
    return trt


def tensorrt_version() -> Optional[str]:
    try:
        return _trt().__version__
    except TensorRTUnavailable:
        return None


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes for each input with symbolic axes."""

    shapes: Mapping[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]


def profiles_from_spec(spec: GraphSpec, ranges: Mapping[str, Tuple[int, int, int]]) -> Profile:
    """`ranges` gives (min, opt, max) per symbolic axis name, e.g. {"num_prompts": (1, 16, 256)}."""
    shapes = {}
    for t in spec.inputs:
        if not t.dynamic_axes:
            continue
        try:
            shapes[t.name] = tuple(t.concrete_shape(**{k: v[i] for k, v in ranges.items()}) for i in range(3))
        except KeyError as e:
            raise ValueError(f"profile: no (min, opt, max) for axis {e} of input {t.name}") from None
    return Profile(shapes)


def _is_sensitive(trt, layer) -> bool:
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    return layer.type in kinds or any(k in layer.name for k in ("LayerNorm", "layer_norm", "Softmax", "softmax"))


def plan_from_onnx(
    onnx_path: str,
    plan_path: str,
    precision: str,
    profile: Optional[Profile] = None,
    timing_cache: Optional[str] = None,
    workspace_bytes: int = 4 << 30,
    fp16_onnx_path: Optional[str] = None,
) -> dict:
    """Build and write a serialized plan plus `<plan>.json` metadata; returns the metadata.

    precision: "fp32", "fp16" or "int8" (then `onnx_path` must be the QDQ model).
    `fp16_onnx_path`: the FP16 ONNX for TensorRT versions without precision flags.
    """
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_typing = hasattr(trt.BuilderFlag, "FP16")
    source = onnx_path
    flags = 0
    if not weak_typing:  # TensorRT 11+: strong typing, types come from the graph
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if precision == "fp16":
            if not fp16_onnx_path:
                raise ValueError("TensorRT without precision flags needs fp16_onnx_path (samrt's FP16 ONNX)")
            source = fp16_onnx_path
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(source):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SamrtError(f"TensorRT could not parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    constrained: List[str] = []
    if weak_typing and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if _is_sensitive(trt, layer):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                constrained.append(layer.name)
    if profile is not None and profile.shapes:
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in profile.shapes.items():
            p.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(p)
    cache_bytes = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as f:
            cache_bytes = f.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SamrtError(f"TensorRT failed to build {plan_path} from {source} (see the TensorRT log above)")
    with open(plan_path, "wb") as f:
        f.write(plan)
    if timing_cache:
        with open(timing_cache, "wb") as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
    meta = {
        "tensorrt": trt.__version__,
        "precision": precision,
        "typing": "weak (precision flags)" if weak_typing else "strong",
        "source_onnx": os.path.basename(source),
        "profile": {k: [list(s) for s in v] for k, v in (profile.shapes if profile else {}).items()},
        "fp32_constrained_layers": len(constrained),
        "timing_cache": timing_cache,
    }
    with open(plan_path + ".json", "w") as f:
        json.dump(meta, f, indent=2)
    return meta


class TensorRTRunner(Runner):
    """Runs a plan on the current CUDA device; inputs and outputs are numpy (or torch CUDA) arrays."""

    def __init__(self, plan_path: str) -> None:
        trt = _trt()
        import torch  # torch: CUDA buffers (NVIDIA's container has it)

        self._torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(plan_path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise SamrtError(f"{plan_path}: TensorRT could not deserialize the plan (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in self.input_names}
        self._dtypes = {n: self._torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, trt, dt):
        t = self._torch
        return {trt.float32: t.float32, trt.float16: t.float16, trt.int32: t.int32, trt.int64: t.int64,
                trt.bool: t.bool, trt.uint8: t.uint8, trt.int8: t.int8}[dt]

    def run(self, feeds, outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        torch = self._torch
        keep = []
        for name in self.input_names:
            x = feeds[name]
            x = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
            x = x.to("cuda", self._dtypes[name]).contiguous()
            keep.append(x)
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        result = {}
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            result[name] = out
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise SamrtError("TensorRT execution failed")
        self.stream.synchronize()
        names = list(outputs or self.output_names)
        return {n: result[n].float().cpu().numpy() for n in names}
