"""What every python-backend model shares: the request loop, the error codes, the one BLS call.

`PythonModel.execute` gives each request exactly one response; an exception raised for one
request becomes that request's error response with Triton's code (`error_response`), and the
other requests of the batch go on. A model class holds only what differs: `setup(params)` and
`_one(request)`, or `_batch(requests)` for a model that runs its batch together.

Only runs inside Triton's python stub (`triton_python_backend_utils` is imported there).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from samrt import wire
from samrt.engines import runner_for_engine
from samrt.engines.decoders import STATIC_SHAPES, decoder_from_paths
from samrt.engines.factory import ENGINE_SUFFIXES
from samrt.engines.runner import DECODER_CHUNK
from samrt.errors import InputError

from .. import logic

__all__ = ["PythonModel", "bls", "BlsError", "error", "error_response", "response", "input_array", "engine_runner", "decoder_engine",
           "lower_priority", "INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL", "CANCELLED"]

log = logging.getLogger("samrt.server")

# Error codes, by name of TritonError's constants. CANCELLED: Triton marked the request
# cancelled (its gRPC client has gone).
INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL, CANCELLED = "INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL", "CANCELLED"

def _pb():
    import triton_python_backend_utils as pb_utils  # exists only inside Triton's python-backend stub

    return pb_utils


def model_params(args) -> Dict[str, str]:
    """The `parameters` of the model's config.pbtxt, as strings."""
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def input_array(request, name: str) -> Optional[np.ndarray]:
    """The request's input `name` as numpy (None when the request does not carry it)."""
    t = _pb().get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def error(message: str, code: str = INVALID_ARG):
    """An error response with Triton's code `code` (a name of TritonError's constants)."""
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, getattr(pb.TritonError, code)))


def error_response(e: Exception, model: str):
    """The error response for an exception: its code says what kind of failure it was."""
    if isinstance(e, BlsError):
        return error(str(e), e.code)
    if isinstance(e, logic.UnknownImageError):
        return error(str(e), NOT_FOUND)
    if isinstance(e, InputError):
        return error(str(e), INVALID_ARG)
    if isinstance(e, MemoryError):
        return error(f"{model}: out of memory for this request ({e}); send fewer prompts per request", UNAVAILABLE)
    log.exception("%s: unexpected error", model)  # nobody planned for it: still answers its own request only
    return error(f"{model}: internal error ({type(e).__name__}: {e}); the server goes on", INTERNAL)


def response(model: Optional[wire.WireModel], outputs: Dict[str, np.ndarray]):
    """A response carrying `outputs`, each packed as `model`'s wire declaration says (None: a graph
    model's outputs, which go as they are)."""
    pb = _pb()
    pack = (lambda k, v: v) if model is None else (lambda k, v: model.output(k).pack(v)[0])
    return pb.InferenceResponse(output_tensors=[pb.Tensor(k, pack(k, v)) for k, v in outputs.items()])


class BlsError(RuntimeError):
    """An error answered by a model called through BLS; its message and code go to the caller as are."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _code_name(err) -> str:
    pb = _pb()
    code = err.code() if hasattr(err, "code") else None
    for name in (INVALID_ARG, NOT_FOUND, UNAVAILABLE):
        if code is not None and code == getattr(pb.TritonError, name, object()):
            return name
    return INTERNAL


def bls(model: Union[wire.WireModel, str], inputs: Dict[str, np.ndarray], outputs: Sequence[str]) -> Dict[str, np.ndarray]:
    """Call another model of this server (Triton's BLS) and return the `outputs` it answered.

    `model`: a wire model (its inputs are packed as `samrt.wire` declares them) or the name of a
    graph model (`sam_image_encoder`, `sam_prompt_decoder`: the arrays go as they are). An error
    answer raises BlsError with the callee's message and code."""
    pb = _pb()
    if isinstance(model, wire.WireModel):
        name, tensors = model.name, [pb.Tensor(k, model.input(k).pack(v)[0]) for k, v in inputs.items()]
    else:
        name, tensors = model, [pb.Tensor(k, v) for k, v in inputs.items()]
    resp = pb.InferenceRequest(model_name=name, inputs=tensors, requested_output_names=list(outputs)).exec()
    if resp.has_error():
        raise BlsError(resp.error().message(), _code_name(resp.error()))
    return {n: pb.get_output_tensor_by_name(resp, n).as_numpy() for n in outputs}


class PythonModel:
    """The request loop of every samrt python-backend model (Triton's `TritonPythonModel`).

    Triton calls `initialize(args)` once and `execute(requests)` per batch. Subclasses implement
    `setup(params)` (the config's parameters) and `_one(request)` -> its response, or override
    `_batch(requests)` to run the batch together (each request still gets exactly one response,
    an exception answers only its own request). `error_name` names the model in error messages:
    the model the caller asked for."""

    error_name = "samrt"

    def initialize(self, args) -> None:
        self.setup(model_params(args))

    def setup(self, params: Dict[str, str]) -> None:
        pass

    def execute(self, requests) -> List[object]:
        return self._batch(requests)

    def _batch(self, requests) -> List[object]:
        return [self._answer(r) for r in requests]

    def _answer(self, request):
        """`_one(request)`, or the error response its exception maps to."""
        try:
            return self._one(request)
        except Exception as e:
            return error_response(e, self.error_name)

    def _one(self, request):
        raise NotImplementedError


def engine_runner(params: Dict[str, str], static_shapes: int = 0, dynamic: bool = True,
                  memory_arena: bool = True):
    """The runner for the model's engine file (samrt.engines.runner_for_engine: OpenVINO for an IR
    .xml, ONNX Runtime for .onnx, TensorRT for .plan), with as many threads as this process may use
    (`samrt.cpus.usable_cpus`, or SAMRT_THREADS); OpenVINO compiles up to `static_shapes` recurring
    input shapes statically (each checked when compiled); `memory_arena`: ONNX Runtime's (off for
    the encoder: see OnnxRuntimeRunner)."""
    return runner_for_engine(params["engine_path"], params.get("device", "cpu"), static_shapes=static_shapes,
                             dynamic=dynamic, memory_arena=memory_arena)


def decoder_engine(params: Dict[str, str], onnxruntime_chunk: Optional[int] = None):
    """The model's mask decoder (`samrt.engines.decoders`) from its `decoder_engine` parameter: JSON
    {"decoder": path} (the classic graph) or the fast decoder's three files; OpenVINO decoders
    compile the shapes they meet statically, each checked when compiled. `onnxruntime_chunk`:
    prompts per run when the engines are ONNX Runtime's (default: DECODER_CHUNK)."""
    paths = json.loads(params["decoder_engine"])
    onnxruntime = all(ENGINE_SUFFIXES.get(os.path.splitext(p)[1]) == "onnxruntime" for p in paths.values())
    chunk = onnxruntime_chunk if onnxruntime and onnxruntime_chunk else DECODER_CHUNK
    return decoder_from_paths(paths, params.get("device", "cpu"), static_shapes=STATIC_SHAPES, chunk=chunk)


def lower_priority(params: Dict[str, str]) -> None:
    """Clicks before encodes: background work (image encoding, automatic masks) runs under
    Linux's SCHED_IDLE policy, so it gets a core only when the interactive decoder does not need
    it. Called in `setup`, before the engine's threads exist: they inherit the policy."""
    policy = params.get("background_priority", "idle")
    if policy == "idle" and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as e:  # not allowed here: say so, serve anyway
            log.warning("could not lower the priority of background work: %s", e)
    elif policy not in ("idle", "normal"):
        raise ValueError(f"background_priority: got {policy!r}, expected 'idle' or 'normal'")

