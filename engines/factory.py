"""One call from an engine file to its runner, chosen by the file's extension."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from samrt.cpus import usable_cpus
from samrt.errors import SamrtError

from .openvino_engine import OpenVINORunner
from .runner import OnnxRuntimeRunner, Runner
from .tensorrt_engine import TensorRTRunner

__all__ = ["runner_for_engine", "ENGINE_SUFFIXES"]

ENGINE_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino", ".plan": "tensorrt"}


def runner_for_engine(path: str, device: str = "cpu", threads: Optional[int] = None, static_shapes: int = 0,
                      snippets: bool = True, dynamic: bool = True, memory_arena: bool = True,
                      bf16_inputs: Sequence[str] = ()) -> Runner:
    """A Runner for an engine built by `samrt build-engine` (or an exported graph).

    `.onnx` -> OnnxRuntimeRunner (`device` "cpu" or "cuda"; `threads`: intra-op threads);
    `.xml` -> OpenVINORunner on the CPU (its precision as recorded in the IR; `threads`:
    INFERENCE_NUM_THREADS; `static_shapes`: compiles for that many recurring input shapes, see
    OpenVINORunner; `snippets`: OpenVINO's Snippets fusion, off for decoders; `dynamic` False: the
    dynamic model compiled only when a shape needs it; `memory_arena`: ONNX Runtime's CPU arena, off
    for encoders, see OnnxRuntimeRunner; `bf16_inputs`: inputs an OpenVINO model running in bf16
    takes as bf16 bits, see OpenVINORunner; other runners take them in float32); `.plan` ->
    TensorRTRunner (CUDA). `threads` None: `samrt.cpus.usable_cpus()` (the CPUs this process may
    use: affinity and cgroup quota, or SAMRT_THREADS). Raises SamrtError for another extension or an
    impossible device.
    """
    ext = os.path.splitext(path)[1]
    backend = ENGINE_SUFFIXES.get(ext)
    if backend is None:
        raise SamrtError(f"engine {path!r}: got extension {ext!r}, expected one of {sorted(ENGINE_SUFFIXES)}")
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(path, device, threads or usable_cpus(), memory_arena=memory_arena)
    if backend == "openvino":
        if device != "cpu":
            raise SamrtError(f"engine {path!r}: got device {device!r}, expected 'cpu' (samrt runs OpenVINO on the CPU)")
        return OpenVINORunner(path, threads=threads, static_shapes=static_shapes, snippets=snippets, dynamic=dynamic,
                              bf16_inputs=bf16_inputs)
    if device != "cuda":
        raise SamrtError(f"engine {path!r}: got device {device!r}, expected 'cuda' for a TensorRT plan")
    return TensorRTRunner(path)
