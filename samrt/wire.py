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
    "SAM_PROMPT_PREP",
    "SAM_MASK_DECODER",
    "SAM_MASK_SELECT",
    "SAM_MASK_UPSCALE",
    "SAM_MASK_RLE",
    "CLICK_STEPS",
    "EnsembleStep",
    "click_path",
    "NUMPY_DTYPES",
    "get_model",
    "model_from_graph",
    "markdown_table",
    "IMAGE_ID_HEADER",
    "ADMIN_KEY_HEADER",
    "ADMIN_KEY_ENV",
    "RESTRICTED_APIS",
    "admin_headers",
    "image_id_of",
    "FOREGROUND_PRIORITY",
    "BACKGROUND_PRIORITY",
    "PRIORITY_LEVELS",
]

Dim = Union[int, str]

# Triton datatype -> numpy dtype (BYTES travel as object arrays of bytes).
NUMPY_DTYPES: Dict[str, type] = {"UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32,
                                 "BOOL": np.bool_, "BYTES": np.object_}
_SPEC_TO_TRITON = {"float32": "FP32", "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "bool": "BOOL"}

# Every request that names an image carries its id in this header too (HTTP header / gRPC
# metadata), so a load balancer can route on it (NGINX: `hash $http_x_samrt_image_id consistent`).
IMAGE_ID_HEADER = "x-samrt-image-id"

# Triton's administrative APIs that a samrt server serves only to requests carrying its admin key
# (tritonserver's --http-restricted-api / --grpc-restricted-protocol). Open to every client: health,
# metadata, inference, model-config (the SDK's model_info) and statistics (read-only counters, also
# on the metrics port). Restricted: loading and unloading models, registering shared memory (a
# region names a file in the server's /dev/shm that the server maps and writes), trace and log settings.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
# The admin key's header (HTTP header; over gRPC, Triton expects it prefixed, see `admin_headers`)
# and the environment variable that gives it to `samrt serve`, the launcher and the SDK.
ADMIN_KEY_HEADER = "samrt-admin-key"
ADMIN_KEY_ENV = "SAMRT_ADMIN_KEY"


def admin_headers(protocol: str, key: Optional[str]) -> Dict[str, str]:
    """The header that opens the restricted APIs (`RESTRICTED_APIS`) for `protocol` ('grpc' or
    'http'); none without a key. Triton 2.51 reads `<key name>` from HTTP requests and
    `triton-grpc-protocol-<key name>` from gRPC metadata (measured)."""
    if not key:
        return {}
    return {("triton-grpc-protocol-" if protocol == "grpc" else "") + ADMIN_KEY_HEADER: key}
# Triton request priorities of `sam_encode` (its queue's `priority_levels`; 1 is served first): the
# image a person is looking at is foreground, the default, so a client that sends no priority is
# served as one; prefetch and pre-encoding work is background (the SDK's `encode(background=True)`).
# A foreground encode waits for the encodes already running, never for the queued background ones.
FOREGROUND_PRIORITY = 1
BACKGROUND_PRIORITY = 2
PRIORITY_LEVELS = 2


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
# -- the click path: `sam_decode` is a Triton ensemble of these internal steps ------------------
# CPU variant:        sam_mask_decoder (prompt checks + cache + engine) -> sam_mask_upscale / sam_mask_rle
# production variant: sam_prompt_prep -> sam_embedding_cache -> sam_prompt_decoder (native engine)
#                     -> sam_mask_select -> sam_mask_upscale -> sam_mask_rle
# Triton prunes the steps whose outputs a request does not ask for (no `masks`: no upscaling).
# No ensemble output is also another step's input: Triton 2.51's pruning counts such a tensor
# twice and prunes the step that makes it (measured: "unexpected deadlock"), so the decoder
# hands the postprocessing steps their own copy of the logits, `mask_logits`.
_PREP_OUTPUTS = (
    WireTensor("prompt_coords", "FP32", ("N", 2), "points in original pixels, the padding point added"),
    WireTensor("prompt_labels", "FP32", ("N",), "labels as the decoder graph takes them (-1 padding)"),
    WireTensor("prompt_mask", "FP32", (1, "m", "m"), "mask_input, zeros where none was sent"),
    WireTensor("has_mask_input", "FP32", (1,), "1 where mask_input was sent"),
    WireTensor("multimask", "BOOL", (1,), "multimask_output, true where none was sent"),
)
SAM_PROMPT_PREP = WireModel(
    "sam_prompt_prep", "ensemble step 1: check the prompts (SAM's rules, samrt.prompts) and complete them",
    inputs=(_POINT_COORDS, _POINT_LABELS, _MASK_INPUT, _MULTIMASK),
    outputs=_PREP_OUTPUTS, batch="P", public=False,
)

# The cache owner's own requests: put (sam_encode, sam_segment and sam_amg through BLS, with the
# server's internal key), get and ask (those, and the SDK's image_embedding / image_size).
_ID = WireTensor("image_id", "BYTES", (1,), "hash of the pixels")
_MASK_LOGITS = WireTensor("mask_logits", "FP32", ("C", "m", "m"), "low_res_masks again, for the postprocessing steps")
_PUT_EMBEDDINGS = WireTensor("image_embeddings", "FP32", ("D", "E", "E"), "put: the embedding to store", optional=True)
_PUT_SIZE = WireTensor("original_size", "INT32", (2,), "put: (H, W) of the image", optional=True)
# Only the models of the same server hold this key (the launcher's per-server secret,
# model_repository.logic.CACHE_KEY_ENV); a put without it is refused, so no client can write the cache.
_PUT_KEY = WireTensor("cache_key", "BYTES", (1,), "put: the server's internal key; a put without it is refused",
                      optional=True)
_FOUND = WireTensor("found", "BOOL", (1,), "get: whether the id is cached")
_GOT_EMBEDDINGS = WireTensor("image_embeddings", "FP32", ("D", "E", "E"), "get: the cached embedding")
_SIZE = WireTensor("original_size", "INT32", (2,), "(H, W) of the image")


def _optional(tensors) -> Tuple[WireTensor, ...]:
    return tuple(WireTensor(t.name, t.datatype, t.dims, t.meaning, optional=True) for t in tensors)


SAM_MASK_DECODER = WireModel(
    "sam_mask_decoder",
    "ensemble step 1 (CPU variant): the embedding cache's owner and the decoder engine in one process: "
    "prompts checked (SAM's rules, samrt.prompts) and decoded, dynamically batched over prompts of all "
    "clients and images",
    inputs=(_ID,) + _optional((_POINT_COORDS, _POINT_LABELS)) + (_MASK_INPUT, _MULTIMASK, _PUT_EMBEDDINGS, _PUT_SIZE,
            _PUT_KEY),
    outputs=(WireTensor("low_res_masks", "FP32", ("C", "m", "m"), "logits of the masks multimask asks for"),
             WireTensor("iou_predictions", "FP32", ("C",), "predicted IoU of each mask"),
             _MASK_LOGITS, _SIZE, _FOUND, _GOT_EMBEDDINGS),
    batch="P", public=False,
)
SAM_EMBEDDING_CACHE = WireModel(
    "sam_embedding_cache",
    "ensemble step 2 (production variant): the embedding cache's owner; hands the native decoder its feeds",
    inputs=(_ID, WireTensor("prompt_coords", "FP32", ("N", 2), "decode: points in original pixels", optional=True),
            _PUT_EMBEDDINGS, _PUT_SIZE, _PUT_KEY),
    outputs=(WireTensor("point_coords", "FP32", ("N", 2), "decode: points in the encoder's resized frame"),
             WireTensor("image_embeddings", "FP32", ("D", "E", "E"), "decode: each prompt's embedding; get: the cached one"),
             _SIZE, _FOUND),
    batch="P", public=False,
)
SAM_MASK_SELECT = WireModel(
    "sam_mask_select", "production variant: the 3 multimask outputs or the single-mask token's (multimask)",
    inputs=(WireTensor("all_low_res_masks", "FP32", (4, "m", "m"), "the decoder graph's low_res_masks"),
            WireTensor("all_iou_predictions", "FP32", (4,), "the decoder graph's iou_predictions"),
            _PREP_OUTPUTS[4]),
    outputs=(WireTensor("low_res_masks", "FP32", ("C", "m", "m"), "selected logits"),
             WireTensor("iou_predictions", "FP32", ("C",), "selected predicted IoU"), _MASK_LOGITS),
    batch="P", public=False,
)
SAM_MASK_UPSCALE = WireModel(
    "sam_mask_upscale", "low-res logits -> masks at the original size (Sam.postprocess_masks, samrt.upscale)",
    inputs=(_MASK_LOGITS, _SIZE), outputs=(_MASK_OUTPUTS[0],), batch="P", public=False,
)
SAM_MASK_RLE = WireModel(
    "sam_mask_rle", "low-res logits -> masks at the original size as COCO RLE JSON (pycocotools)",
    inputs=(_MASK_LOGITS, _SIZE), outputs=(_MASK_OUTPUTS[3],), batch="P", public=False,
)

@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: the model, and which ensemble tensor feeds each of its inputs
    (`inputs`: step input -> tensor) and receives each of its outputs (`outputs`: step output -> tensor)."""

    model: str
    inputs: Tuple[Tuple[str, str], ...]
    outputs: Tuple[Tuple[str, str], ...]


def _same(*names: str) -> Tuple[Tuple[str, str], ...]:
    return tuple((n, n) for n in names)


def click_path(native: bool) -> Tuple[EnsembleStep, ...]:
    """The steps of the `sam_decode` ensemble. CPU variant (`native` False): two steps, the
    decoder step (`sam_mask_decoder`: prompt checks, the cache and the engine in one process, so
    a click crosses one process boundary before its masks) and the postprocessing one. Production
    variant: `sam_embedding_cache` feeds the native `sam_prompt_decoder` (tensor names of the
    decoder graph, `samrt.spec.decoder_spec`)."""
    tail = (EnsembleStep(SAM_MASK_UPSCALE.name, _same("mask_logits", "original_size"), _same("masks")),
            EnsembleStep(SAM_MASK_RLE.name, _same("mask_logits", "original_size"), _same("masks_rle")))
    if not native:
        return (EnsembleStep(SAM_MASK_DECODER.name, _same(*SAM_DECODE.input_names),
                             _same("low_res_masks", "iou_predictions", "mask_logits", "original_size")),) + tail
    prep = EnsembleStep(SAM_PROMPT_PREP.name, _same(*SAM_PROMPT_PREP.input_names),
                        _same(*SAM_PROMPT_PREP.output_names))
    return (prep,
            EnsembleStep(SAM_EMBEDDING_CACHE.name, _same("image_id", "prompt_coords"),
                         (("point_coords", "decoder_point_coords"), ("image_embeddings", "decoder_image_embeddings"),
                          ("original_size", "original_size"))),
            EnsembleStep("sam_prompt_decoder",
                         (("image_embeddings", "decoder_image_embeddings"), ("point_coords", "decoder_point_coords"),
                          ("point_labels", "prompt_labels"), ("mask_input", "prompt_mask"),
                          ("has_mask_input", "has_mask_input")),
                         (("low_res_masks", "all_low_res_masks"), ("iou_predictions", "all_iou_predictions"))),
            EnsembleStep(SAM_MASK_SELECT.name, _same("all_low_res_masks", "all_iou_predictions", "multimask"),
                         _same("low_res_masks", "iou_predictions", "mask_logits"))) + tail


CLICK_STEPS: Tuple[WireModel, ...] = (SAM_PROMPT_PREP, SAM_MASK_DECODER, SAM_EMBEDDING_CACHE, SAM_MASK_SELECT,
                                      SAM_MASK_UPSCALE, SAM_MASK_RLE)
PUBLIC_MODELS: Tuple[WireModel, ...] = (SAM_ENCODE, SAM_DECODE, SAM_SEGMENT, SAM_AMG)
MODELS: Dict[str, WireModel] = {m.name: m for m in PUBLIC_MODELS + CLICK_STEPS}


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
