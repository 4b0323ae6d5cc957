"""One runner interface over inference backends: inputs by name in, outputs by name out.

Used by the local predictor, the Triton python models, the benchmarks and the accuracy
checks. `OnnxRuntimeRunner` checks inputs against the graph's declared metadata once per
call (names, dtypes, ranks, fixed sizes) and says what it got and what it expected.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from samrt.errors import InputError

__all__ = ["Runner", "OnnxRuntimeRunner", "check_feeds", "default_providers"]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class Runner:
    """Interface: `run(feeds) -> {output name: array}`; `input_shapes` as declared by the graph."""

    input_names: List[str]
    output_names: List[str]
    input_shapes: Dict[str, tuple]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        raise NotImplementedError


def check_feeds(label: str, feeds: Mapping[str, np.ndarray], input_names: Sequence[str],
                input_dtypes: Mapping[str, Optional[type]], input_shapes: Mapping[str, tuple]) -> None:
    """Raise InputError unless `feeds` has exactly `input_names`, each of its declared dtype, rank and
    fixed sizes (a dimension that is not a non-negative int, e.g. 'num_prompts' or -1, is dynamic)."""
    missing = [n for n in input_names if n not in feeds]
    extra = [n for n in feeds if n not in input_shapes]
    if missing or extra:
        raise InputError(f"{label}: got inputs {sorted(feeds)}, expected {list(input_names)}")
    for name, arr in feeds.items():
        want = input_dtypes.get(name)
        if want is not None and arr.dtype != want:
            raise InputError(f"{name}: got dtype {arr.dtype}, expected {np.dtype(want)}")
        shape = input_shapes[name]
        if arr.ndim != len(shape) or any(isinstance(d, int) and d >= 0 and d != s for d, s in zip(shape, arr.shape)):
            raise InputError(f"{name}: got shape {tuple(arr.shape)}, expected {list(shape)}")


def default_providers(device: str = "cpu") -> List[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device: got {device!r}, expected 'cpu' or 'cuda'")


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime session over one .onnx file."""

    def __init__(self, path: str, device: str = "cpu", intra_op_threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path!r}: no such file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        self.path = path
        self.session = ort.InferenceSession(path, opts, providers=default_providers(device))
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(self._inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shapes = {n: tuple(i.shape) for n, i in self._inputs.items()}
        self.input_dtypes = {n: _ORT_DTYPES.get(i.type) for n, i in self._inputs.items()}

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        check_feeds(os.path.basename(self.path), feeds, self.input_names, self.input_dtypes, self.input_shapes)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        names = list(outputs or self.output_names)
        return dict(zip(names, self.session.run(names, dict(feeds))))
