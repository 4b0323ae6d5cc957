"""One runner interface over inference backends: inputs by name in, outputs by name out.

Used by the local predictor, the Triton python models, the benchmarks and the accuracy
checks. `OnnxRuntimeRunner` checks inputs against the graph's declared metadata once per
call (names, dtypes, ranks, fixed sizes) and says what it got and what it expected.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from samrt import prompts
from samrt.errors import InputError

__all__ = ["Runner", "OnnxRuntimeRunner", "check_feeds", "default_providers", "run_decoder", "DECODER_CHUNK",
           "ARENA_DECODER_CHUNK", "BF16_BITS", "to_bf16_bits", "from_bf16_bits"]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


# numpy has no bfloat16: a bf16 tensor travels as its bit patterns in a uint16 array (the upper
# half of the float32's bits, rounded), and a runner names the inputs it takes that way.
BF16_BITS = np.uint16


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 array of the bfloat16 bits, rounded to nearest even (the rounding of
    OpenVINO's CPU plugin when its bf16 inference converts an f32 input, so a bf16 engine answers
    the same to either). NaN stays NaN (a quiet NaN), infinities stay infinite."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    bits = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(BF16_BITS)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    if nan.any():
        bits[nan] = (u[nan] >> np.uint32(16)).astype(BF16_BITS) | BF16_BITS(0x0040)
    return bits


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 (exact: every bf16 value is a float32)."""
    return (np.asarray(bits, dtype=BF16_BITS).astype(np.uint32) << np.uint32(16)).view(np.float32)


class Runner:
    """Interface: `run(feeds) -> {output name: array}`; `input_shapes` as declared by the graph.
    `bf16_inputs`: the inputs it takes as bfloat16 bits (`to_bf16_bits`, dtype `BF16_BITS`), none
    unless the runner says so (OpenVINORunner in bf16)."""

    input_names: List[str]
    output_names: List[str]
    input_shapes: Dict[str, tuple]
    bf16_inputs: Tuple[str, ...] = ()

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
    """ONNX Runtime session over one .onnx file.

    `memory_arena` False: ONNX Runtime's CPU memory arena is off, so a run's intermediate tensors go
    back to the system when it ends. For the image encoder (few, large runs) that is what keeps a
    server's memory flat: with the arena, vit_b's encoder process held 3.8 GB after one 1024 x 1024
    image and 6.9 GB after the second (the arena grows and keeps its peak), without it 1.2 GB after
    each, at the same speed (docs/memory.md). Decoders (many small runs) keep it on."""

    def __init__(self, path: str, device: str = "cpu", intra_op_threads: Optional[int] = None,
                 memory_arena: bool = True) -> None:
        import onnxruntime as ort  # onnxruntime: the cpu or gpu extra

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path!r}: no such file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = memory_arena
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


# Prompts per decoder run: memory grows with this chunk, not with the number of prompts asked.
DECODER_CHUNK = 16
# Prompts per run of an automatic-masks decoder on ONNX Runtime: its CPU arena keeps the largest
# run's activations for the life of the process. Measured on SAM's fast decoder (the same for every
# model type), 64 prompts, AMD EPYC 2 cores, 2026-12-05: chunk 16 kept 0.97 GiB after the runs,
# 4 kept 0.26 GiB and was 9% slower; the arena off kept 0.05 GiB and was 34% slower (each run's
# memory faulted in afresh). docs/memory.md.
ARENA_DECODER_CHUNK = 4


def run_decoder(
    decoder: Runner,
    image_embeddings: np.ndarray,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    mask_input: Optional[np.ndarray],
    low_res_size: int,
    chunk: int = DECODER_CHUNK,
    has_mask_input: Optional[np.ndarray] = None,
    embedding_rows: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The decoder graph over P prompts, `chunk` prompts per run -> (low_res_masks [P,4,m,m],
    iou_predictions [P,4]) float32, all mask tokens (select with `processing.select_masks`).

    `image_embeddings` [1,D,E,E] (shared by every prompt) or [P,D,E,E], or [U,D,E,E] with
    `embedding_rows` [P] saying which embedding each prompt uses (prompts of several images in one
    run); `point_coords` [P,N,2] in the resized frame; `point_labels` [P,N]; `mask_input`
    [P,1,m,m] or None; `has_mask_input` [P] when only some rows have a mask prompt. Memory grows
    with `chunk`, not with P: embeddings are gathered per chunk."""
    p = point_coords.shape[0]
    emb = np.asarray(image_embeddings, dtype=np.float32)
    if embedding_rows is None:
        if emb.shape[0] not in (1, p):
            raise InputError(f"image_embeddings: got {emb.shape[0]} rows for {p} prompts, expected 1 or {p}")
        embedding_rows = np.zeros(p, np.intp) if emb.shape[0] == 1 else np.arange(p)
    embedding_rows = np.asarray(embedding_rows, np.intp)
    if embedding_rows.shape != (p,):
        raise InputError(f"embedding_rows: got shape {list(embedding_rows.shape)}, expected [{p}]")
    feeds = prompts.decoder_feeds(emb[:1], point_coords, point_labels, mask_input, low_res_size, has_mask_input)
    del feeds["image_embeddings"]
    low_res: Optional[np.ndarray] = None
    iou: Optional[np.ndarray] = None
    for start in range(0, p, max(1, chunk)):
        sl = slice(start, start + max(1, chunk))
        part = {k: np.ascontiguousarray(v[sl]) for k, v in feeds.items()}
        part["image_embeddings"] = np.ascontiguousarray(emb[embedding_rows[sl]])
        out = decoder.run(part, ["low_res_masks", "iou_predictions"])
        if low_res is None:
            low_res = np.empty((p,) + out["low_res_masks"].shape[1:], np.float32)
            iou = np.empty((p,) + out["iou_predictions"].shape[1:], np.float32)
        low_res[sl] = out["low_res_masks"]
        iou[sl] = out["iou_predictions"]
    return low_res, iou
