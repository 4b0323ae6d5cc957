"""The wire API, declared once: every Triton model samrt serves, with each input and output
(Triton datatype, shape, optional or not, meaning).

Derived from it: the rendered `config.pbtxt` files (`samrt.model_repository.render`), the
python-backend models' tensor names and dtypes, the SDK's request packing (sync and asyncio),
and the README's wire table (`markdown_table()`; `tests/test_wire.py` fails when they disagree).
The graph-facing models (`sam_image_encoder`, `sam_prompt_decoder`) derive from the ONNX I/O spec
(`samrt.spec`) instead, since they carry the graphs' own tensors.

Shapes: ints are fixed; letters are symbolic. Batched models (`batch` set) have Triton's batch
dimension in front (`max_batch_size` > 0), written here as `batch` in the table. Symbols:
`P` prompts, `N` points per prompt, `H`/`W` image size, `C` masks per prompt (3 or 1),
`m` the low-res mask side (256 for the official models); for images, `C` the channels (3), `S` the encoder's input side, `E` the
embedding side, `D` the embedding channels. Importable without torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .spec import GraphSpec, SamConfig

__all__ = [
    "WireTensor",
    "WireModel",
    "MODELS",
    "PUBLIC_MODELS",
    "SAM_ENCODE",
    "SAM_DECODE",
    "SAM_SEGMENT",
    "SAM_AMG",
    "SAM_EMBEDDING_CACHE",
    "NUMPY_DTYPES",
    "get_model",
    "model_from_graph",
    "markdown_table",
    "IMAGE_ID_HEADER",
    "image_id_of",
]

Dim = Union[int, str]

# Triton datatype -> numpy dtype (BYTES travel as object arrays of bytes).
NUMPY_DTYPES: Dict[str, type] = {"UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32,
                                 "BOOL": np.bool_, "BYTES": np.object_}
_SPEC_TO_TRITON = {"float32": "FP32", "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "bool": "BOOL"}

# Every request that names an image carries its id in this header too (HTTP header / gRPC
# metadata), so a load balancer can route on it (NGINX: `hash $http_x_samrt_image_id consistent`).
IMAGE_ID_HEADER = "x-samrt-image-id"


@dataclass(frozen=True)
class WireTensor:
    """One tensor of a Triton model: Triton datatype, shape without the batch dim, meaning."""

    name: str
    datatype: str
    dims: Tuple[Dim, ...]
    meaning: str
    optional: bool = False

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(NUMPY_DTYPES[self.datatype])

    @property
    def config_type(self) -> str:
        """Triton's ModelConfig data_type (BYTES is TYPE_STRING)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else "TYPE_" + self.datatype

    def config_dims(self, sizes: Dict[str, int]) -> list:
        """dims for config.pbtxt: symbols in `sizes` resolved, the others variable (-1)."""
        return [d if isinstance(d, int) else int(sizes.get(d, -1)) for d in self.dims]

    def pack(self, array) -> Tuple[np.ndarray, str]:
        """`array` as this tensor's numpy dtype, C-contiguous, with its Triton datatype."""
        if self.datatype == "BYTES":
            return np.asarray(array, dtype=object), self.datatype
        return np.ascontiguousarray(array, dtype=self.numpy_dtype), self.datatype


@dataclass(frozen=True)
class WireModel:
    """One Triton model: name, inputs, outputs; `batch` names Triton's batch dim (None: unbatched)."""

    name: str
    summary: str
    inputs: Tuple[WireTensor, ...]
    outputs: Tuple[WireTensor, ...]
    batch: Optional[str] = None
    public: bool = True

    def input(self, name: str) -> WireTensor:
        return self._find(self.inputs, name, "input")

    def output(self, name: str) -> WireTensor:
        return self._find(self.outputs, name, "output")

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def _find(self, tensors, name: str, kind: str) -> WireTensor:
        for t in tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.name}: got {kind} {name!r}, expected one of {[t.name for t in tensors]}")

    def config_io(self, sizes: Dict[str, int]) -> Dict[str, list]:
        """`input` and `output` lists in ModelConfig's JSON form."""
        def io(t: WireTensor) -> dict:
            d = {"name": t.name, "data_type": t.config_type, "dims": t.config_dims(sizes)}
            if t.optional:
                d["optional"] = True
            return d

        return {"input": [io(t) for t in self.inputs], "output": [io(t) for t in self.outputs]}


# C is checked by the model (3, RGB), so a wrong channel count gets samrt's own error naming the shape.
_IMAGE = WireTensor("image", "UINT8", ("H", "W", "C"), "RGB pixels, C = 3; send exactly one of `image` and `image_bytes`",
                    optional=True)
_IMAGE_BYTES = WireTensor("image_bytes", "BYTES", (1,), "an encoded image (JPEG, PNG, ...)", optional=True)
_POINT_COORDS = WireTensor("point_coords", "FP32", ("N", 2), "(x, y) in original-image pixels")
_POINT_LABELS = WireTensor("point_labels", "INT32", ("N",),
                           "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding")
_MASK_INPUT = WireTensor("mask_input", "FP32", (1, "m", "m"), "low-res logits of an earlier answer", optional=True)
_MULTIMASK = WireTensor("multimask_output", "BOOL", (1,), "3 masks (true, the default) or 1", optional=True)
_MASK_OUTPUTS = (
    WireTensor("masks", "BOOL", ("C", "H", "W"), "masks at the original size"),
    WireTensor("iou_predictions", "FP32", ("C",), "predicted IoU of each mask"),
    WireTensor("low_res_masks", "FP32", ("C", "m", "m"), "logits, for `mask_input` of a next click"),
    WireTensor("masks_rle", "BYTES", ("C",), "each mask as COCO RLE JSON"),
)

SAM_ENCODE = WireModel(
    "sam_encode", "embed an image once (cached on the server by the hash of its pixels)",
    inputs=(_IMAGE, _IMAGE_BYTES),
    outputs=(WireTensor("image_id", "BYTES", (1,), "hash of the decoded pixels"),
             WireTensor("original_size", "INT32", (2,), "(H, W)")),
)
SAM_DECODE = WireModel(
    "sam_decode", "P prompts on one encoded image -> masks; requests of all clients are batched over prompts",
    inputs=(WireTensor("image_id", "BYTES", (1,), "from sam_encode"), _POINT_COORDS, _POINT_LABELS, _MASK_INPUT,
            _MULTIMASK),
    outputs=_MASK_OUTPUTS,
    batch="P",
)
SAM_SEGMENT = WireModel(
    "sam_segment", "one shot: an image and one prompt -> masks",
    inputs=(_IMAGE, _IMAGE_BYTES, _POINT_COORDS, _POINT_LABELS, _MASK_INPUT, _MULTIMASK),
    outputs=_MASK_OUTPUTS,
)
SAM_AMG = WireModel(
    "sam_amg", "automatic mask generation on the server, one round trip per image",
    inputs=(_IMAGE, _IMAGE_BYTES,
            WireTensor("options", "BYTES", (1,), "JSON of SamAutomaticMaskGenerator's parameters", optional=True)),
    outputs=(WireTensor("records", "BYTES", (1,), "JSON list of SamAutomaticMaskGenerator's records, COCO RLE"),),
)
SAM_EMBEDDING_CACHE = WireModel(
    "sam_embedding_cache", "the embedding cache's owner: put (with image_embeddings) or get",
    inputs=(WireTensor("image_id", "BYTES", (1,), "hash of the pixels"),
            WireTensor("image_embeddings", "FP32", ("D", "E", "E"), "the embedding to store", optional=True),
            WireTensor("original_size", "INT32", (2,), "(H, W) of the image", optional=True)),
    outputs=(WireTensor("found", "BOOL", (1,), "whether the id is cached"),
             WireTensor("image_embeddings", "FP32", ("D", "E", "E"), "the cached embedding"),
             WireTensor("original_size", "INT32", (2,), "(H, W) of the image")),
    public=False,
)

PUBLIC_MODELS: Tuple[WireModel, ...] = (SAM_ENCODE, SAM_DECODE, SAM_SEGMENT, SAM_AMG)
MODELS: Dict[str, WireModel] = {m.name: m for m in PUBLIC_MODELS + (SAM_EMBEDDING_CACHE,)}


def get_model(name: str) -> WireModel:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"got model {name!r}, expected one of {sorted(MODELS)}") from None


def model_from_graph(name: str, spec: GraphSpec, batch_axis: str, summary: str) -> WireModel:
    """A Triton model that is an exported graph: its tensors come from the ONNX I/O spec, with
    the graph's `batch_axis` as Triton's batch dim (graph-facing models: encoder and decoder)."""
    def tensors(specs) -> Tuple[WireTensor, ...]:
        out = []
        for t in specs:
            if not t.shape or t.shape[0] != batch_axis:
                raise ValueError(f"{spec.name}.{t.name}: got shape {t.shape}, expected {batch_axis!r} first")
            out.append(WireTensor(t.name, _SPEC_TO_TRITON[t.dtype], tuple(t.shape[1:]), f"graph tensor {t.name}"))
        return tuple(out)

    return WireModel(name, summary, tensors(spec.inputs), tensors(spec.outputs), batch=batch_axis, public=False)


def config_sizes(cfg: SamConfig) -> Dict[str, int]:
    """Values of the fixed symbols for a model configuration."""
    return {"m": cfg.low_res_size, "S": cfg.image_size, "E": cfg.embedding_size, "D": cfg.prompt_embed_dim}


def _shape(model: WireModel, t: WireTensor) -> str:
    dims = ([model.batch] if model.batch else []) + list(t.dims)
    return "[" + ",".join(str(d) for d in dims) + "]"


def markdown_table(models=PUBLIC_MODELS) -> str:
    """The README's wire table: one row per tensor."""
    rows = ["| model | | tensor | datatype | shape | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for m in models:
        first = True
        for direction, tensors in (("in", m.inputs), ("out", m.outputs)):
            for t in tensors:
                meaning = ("optional; " if t.optional else "") + t.meaning
                rows.append(f"| {('`' + m.name + '`') if first else ''} | {direction} | `{t.name}` | {t.datatype} "
                            f"| {_shape(m, t)} | {meaning} |")
                first = False
    return "\n".join(rows)


def image_id_of(image: np.ndarray) -> str:
    """An image's id on the wire: a hash of its decoded pixels and their shape, so the same
    picture gets the same id on every server, and a client can compute it without asking."""
    h = hashlib.sha256()
    h.update(np.asarray(image.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:32]


if __name__ == "__main__":  # prints the README's wire table
    print(markdown_table())
