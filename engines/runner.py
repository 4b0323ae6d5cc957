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

__all__ = ["Runner", "OnnxRuntimeRunner", "default_providers"]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class Runner:
    """Interface: `run(feeds) -> {output name: array}`; `input_shapes` as declared by the graph."""

    input_names: List[str]
    output_names: List[str]
    input_shapes: Dict[str, tuple]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        raise NotImplementedError


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
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self._inputs]
        if missing or extra:
            raise InputError(f"{os.path.basename(self.path)}: got inputs {sorted(feeds)}, expected {self.input_names}")
        for name, arr in feeds.items():
            want = self.input_dtypes[name]
            if want is not None and arr.dtype != want:
                raise InputError(f"{name}: got dtype {arr.dtype}, expected {np.dtype(want)}")
            shape = self.input_shapes[name]
            if arr.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, arr.shape)):
                raise InputError(f"{name}: got shape {tuple(arr.shape)}, expected {list(shape)}")

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        names = list(outputs or self.output_names)
        return dict(zip(names, self.session.run(names, dict(feeds))))
