"""Triton python-backend models. Each rendered `model.py` is one line that imports a class here.

Only runs inside Triton's python stub (`triton_python_backend_utils` is imported lazily).
Tensor names and dtypes come from the wire declaration (`samrt.wire`); prompt rules from
`samrt.prompts`. Every request gets exactly one response; a bad request gets an error response
with Triton's code (INVALID_ARG for bad input, NOT_FOUND for an unknown or evicted image_id,
UNAVAILABLE for overload) and the other requests of the batch go on.

The click path, `sam_decode`, is a Triton ensemble (rendered from `samrt.wire.click_path`):
`sam_prompt_prep` checks and completes the prompts, the mask decoder step runs the engine with
Triton's dynamic batcher gathering prompts of all clients and images, `sam_mask_upscale` and
`sam_mask_rle` produce `masks` and `masks_rle` (Triton prunes them when a request does not ask
for those outputs).

Where the embedding lives, and why. An embedding is 4 MiB (official models); a click is a few
hundred bytes. Python-backend models are separate processes, and a tensor that passes between
two of them is copied through shared memory. So the model that runs the decoder also owns the
cache: in the CPU variant `sam_mask_decoder` is the cache and the engine in one process, and a
click reads its embedding in place (an earlier design fetched it from a cache model through BLS:
4 MiB copied twice per click). The encode path (`sam_encode`, `sam_amg`) stores and fetches
embeddings there through BLS, once per image, not per click. The cache keeps its byte bound,
its LRU order and its NOT_FOUND error (`logic.EmbeddingCache`); it lives and dies with that
process (the launcher's watchdog restarts it, and images are then encoded again). The price: one
decoder process per server (instance count 1; a second instance would hold a second cache). On
a CPU one decoder instance uses the cores it is given; beyond that, scale out with replicas and
image-affine routing (README, "Several replicas").

The production variant runs the decoder in a native backend (TensorRT / ONNX Runtime /
OpenVINO), which cannot own a cache: there `sam_embedding_cache` owns it and hands the native
`sam_prompt_decoder` each prompt's embedding as an ensemble tensor (the decoder graph takes one
embedding row per prompt: P x 4 MiB per request, copied once into Triton's memory). On a GPU that
tensor is copied to the device anyway (4 MiB is ~0.1 ms over PCIe 5); this variant was rendered
and its ensemble checked by tests, not run (no GPU, no NVIDIA container here).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np

from samrt import imageio
from samrt import processing as P
from samrt import prompts, wire
from samrt.errors import InputError

from . import logic

log = logging.getLogger("samrt.server")

# Error codes, by name of TritonError's constants.
INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL = "INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"


def _pb():
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _params(args) -> Dict[str, str]:
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def _input(request, name: str) -> Optional[np.ndarray]:
    t = _pb().get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _error(message: str, code: str = INVALID_ARG):
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, getattr(pb.TritonError, code)))


def _error_for(e: Exception, model: str):
    """The error response for an exception: its code says what kind of failure it was."""
    if isinstance(e, _BlsError):
        return _error(str(e), e.code)
    if isinstance(e, logic.UnknownImageError):
        return _error(str(e), NOT_FOUND)
    if isinstance(e, InputError):
        return _error(str(e), INVALID_ARG)
    if isinstance(e, MemoryError):
        return _error(f"{model}: out of memory for this request ({e}); send fewer prompts per request", UNAVAILABLE)
    log.exception("%s: unexpected error", model)  # nobody planned for it: still answers its own request only
    return _error(f"{model}: internal error ({type(e).__name__}: {e}); the server goes on", INTERNAL)


def _response(model: wire.WireModel, outputs: Dict[str, np.ndarray]):
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[pb.Tensor(k, model.output(k).pack(v)[0]) for k, v in outputs.items()])


class _BlsError(RuntimeError):
    """An error answered by a model called through BLS; its message and code go to the caller as are."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _code_name(error) -> str:
    pb = _pb()
    code = error.code() if hasattr(error, "code") else None
    for name in (INVALID_ARG, NOT_FOUND, UNAVAILABLE):
        if code is not None and code == getattr(pb.TritonError, name, object()):
            return name
    return INTERNAL


def _bls(model: wire.WireModel, inputs: Dict[str, np.ndarray], outputs: List[str]) -> Dict[str, np.ndarray]:
    pb = _pb()
    req = pb.InferenceRequest(
        model_name=model.name,
        inputs=[pb.Tensor(k, model.input(k).pack(v)[0]) for k, v in inputs.items()],
        requested_output_names=outputs,
    )
    resp = req.exec()
    if resp.has_error():
        raise _BlsError(resp.error().message(), _code_name(resp.error()))
    return {name: pb.get_output_tensor_by_name(resp, name).as_numpy() for name in outputs}


class BlsRunner:
    """samrt.engines.Runner over a model of the same server (the production variant's native decoder)."""

    def __init__(self, model_name: str, mask_size: int) -> None:
        self.model_name = model_name
        self.output_names = ["low_res_masks", "iou_predictions"]
        self.input_shapes = {"mask_input": ("num_prompts", 1, mask_size, mask_size)}

    def run(self, feeds, outputs=None):
        pb = _pb()
        req = pb.InferenceRequest(
            model_name=self.model_name,
            inputs=[pb.Tensor(k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in feeds.items()],
            requested_output_names=list(outputs or self.output_names))
        resp = req.exec()
        if resp.has_error():
            raise _BlsError(resp.error().message(), _code_name(resp.error()))
        return {n: pb.get_output_tensor_by_name(resp, n).as_numpy() for n in (outputs or self.output_names)}


# Input shapes an OpenVINO decoder would compile statically: 0, since static bf16 compiles gave
# wrong answers (see samrt.engines.openvino_engine.OpenVINORunner).
DECODER_STATIC_SHAPES = 0


def _engine_runner(params, static_shapes: int = 0):
    """The runner for the model's engine file (samrt.engines.runner_for_engine: OpenVINO for an IR
    .xml, ONNX Runtime for .onnx, TensorRT for .plan)."""
    from samrt.engines import runner_for_engine

    return runner_for_engine(params["engine_path"], params.get("device", "cpu"), _ort_threads(), static_shapes)


def _decoder_runner(params):
    if params.get("decoder_model"):
        return BlsRunner(params["decoder_model"], int(params["low_res_size"]))
    return _engine_runner(params, DECODER_STATIC_SHAPES)


def _lower_priority(params: Dict[str, str]) -> None:
    """Clicks before encodes: background work (image encoding, automatic masks) runs under
    Linux's SCHED_IDLE policy, so it gets a core only when the interactive decoder does not need
    it. Called in `initialize`, before the engine's threads exist: they inherit the policy."""
    policy = params.get("background_priority", "idle")
    if policy == "idle" and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as e:  # not allowed here: say so, serve anyway
            log.warning("could not lower the priority of background work: %s", e)
    elif policy not in ("idle", "normal"):
        raise ValueError(f"background_priority: got {policy!r}, expected 'idle' or 'normal'")


def _ort_threads() -> int:
    return int(os.environ.get("SAMRT_ORT_THREADS", "0")) or (os.cpu_count() or 1)


def _image_from_request(request, max_pixels: int, image_size: int, model: str) -> np.ndarray:
    """`image` (UINT8 HxWx3) or `image_bytes` (an encoded image, decoded by samrt.imageio: EXIF
    orientation applied, modes as its MODE_DECISIONS), checked against the pixel limit and for a
    shape whose resized side would be 0."""
    image, data = _input(request, "image"), _input(request, "image_bytes")
    if (image is None) == (data is None):
        raise InputError(f"{model}: got " + ("both image and image_bytes" if image is not None else
                         "neither image nor image_bytes") + ", expected exactly one of them")
    if image is None:
        image = imageio.decode_image_bytes(bytes(np.asarray(data).reshape(-1)[0]), max_pixels)
    image = P.check_image(image, max_pixels)
    h, w = image.shape[:2]
    imageio.check_resized_shape((h, w), P.get_preprocess_shape(h, w, image_size), image_size, model)
    return image


def _ids(arr: np.ndarray) -> str:
    v = np.asarray(arr).reshape(-1)[0]
    return v.decode() if isinstance(v, bytes) else str(v)


def _id_tensor(image_id: str) -> np.ndarray:
    return np.array([image_id.encode()], dtype=object)


def _cache_model(params: Dict[str, str]) -> wire.WireModel:
    """The model that owns the embedding cache in this repository (see the module docstring)."""
    return wire.get_model(params.get("cache_model", wire.SAM_MASK_DECODER.name))


def _cached(cache: wire.WireModel, image_id: str) -> Dict[str, np.ndarray]:
    """The cache's entry for `image_id`: image_embeddings [1,D,E,E], original_size [1,2];
    UnknownImageError (NOT_FOUND) when it holds none."""
    got = _bls(cache, {"image_id": _id_tensor(image_id)[None]}, ["found", "image_embeddings", "original_size"])
    if not got["found"].reshape(-1)[0]:
        raise logic.UnknownImageError(image_id)
    return got


class _CacheOwner:
    """The embedding cache and its own requests, for the model that owns it (sam_mask_decoder or
    sam_embedding_cache). Requests carry Triton's batch dim (1 for these).

    put: image_id + image_embeddings + original_size -> found. ask (only `found` requested):
    whether the id is cached, without touching the LRU order. get (no prompt_coords): found,
    image_embeddings, original_size; an id it does not hold answers found false with zeros, not an
    error: Triton 2.51's BLS hands callers every error as INTERNAL, so callers raise NOT_FOUND."""

    model: wire.WireModel

    def _init_cache(self, params: Dict[str, str]) -> None:
        self.cache = logic.EmbeddingCache(int(params["cache_bytes"]))
        self.missing = np.zeros([1] + [int(d) for d in params["embedding_shape"].split(",")], np.float32)

    def _cache_request(self, request, image_id: str):
        """The response to a put/ask/get request; None for a decode request."""
        emb = _input(request, "image_embeddings")
        if emb is not None:
            size = _input(request, "original_size").reshape(-1)
            try:
                self.cache.put(image_id, logic.CacheEntry(np.array(emb.reshape(emb.shape[-3:]), dtype=np.float32),
                                                          (int(size[0]), int(size[1]))))
            except ValueError as e:  # an embedding larger than the whole cache: the caller's request
                raise InputError(f"{self.model.name}: {e}") from None
            return _response(self.model, {"found": np.array([[True]])})
        if _input(request, "prompt_coords") is not None:
            return None
        wanted = request.requested_output_names()
        if wanted and set(wanted) <= {"found"}:
            return _response(self.model, {"found": np.array([[image_id in self.cache]])})
        try:
            entry = self.cache.get(image_id)
        except logic.UnknownImageError:
            return _response(self.model, {"found": np.array([[False]]), "image_embeddings": self.missing,
                                          "original_size": np.zeros((1, 2))})
        return _response(self.model, {"found": np.array([[True]]), "image_embeddings": entry.embeddings[None],
                                      "original_size": np.asarray([entry.original_size])})

    def _decode_entry(self, request, image_id: str):
        """The cache entry a decode request names (UnknownImageError: NOT_FOUND) and its points in
        the encoder's resized frame."""
        entry = self.cache.get(image_id)
        coords = prompts.apply_coords(_input(request, "prompt_coords"), entry.original_size, self.image_size)
        return entry, coords


class ImageEncoderModel:
    """sam_image_encoder: the encoder engine (ONNX Runtime or OpenVINO), batched by Triton."""

    def initialize(self, args) -> None:
        params = _params(args)
        _lower_priority(params)
        self.runner = _engine_runner(params)

    def execute(self, requests):
        pb = _pb()
        images = [_input(r, "image") for r in requests]
        try:
            out = self.runner.run({"image": np.concatenate(images, axis=0)})["image_embeddings"]
        except Exception as e:  # one bad tensor must not take the batch down: retry one by one
            return [self._single(img) for img in images] if len(images) > 1 else [_error(f"encoder: {e}", INTERNAL)]
        sizes = np.cumsum([0] + [len(i) for i in images])
        return [pb.InferenceResponse(output_tensors=[pb.Tensor("image_embeddings", out[a:b])])
                for a, b in zip(sizes[:-1], sizes[1:])]

    def _single(self, image):
        pb = _pb()
        try:
            out = self.runner.run({"image": image})["image_embeddings"]
            return pb.InferenceResponse(output_tensors=[pb.Tensor("image_embeddings", out)])
        except Exception as e:
            return _error(f"encoder: {e}", INTERNAL)


def _encode(image: np.ndarray, image_size: int, cache: wire.WireModel) -> str:
    """Embed `image` unless the cache holds it already; its id either way."""
    image_id = wire.image_id_of(image)
    key = _id_tensor(image_id)[None]
    if not _bls(cache, {"image_id": key}, ["found"])["found"].reshape(-1)[0]:
        x, _ = P.preprocess_image(image, image_size)
        pb = _pb()
        req = pb.InferenceRequest(model_name="sam_image_encoder", inputs=[pb.Tensor("image", x)],
                                  requested_output_names=["image_embeddings"])
        resp = req.exec()
        if resp.has_error():
            raise _BlsError(resp.error().message(), _code_name(resp.error()))
        emb = pb.get_output_tensor_by_name(resp, "image_embeddings").as_numpy()
        _bls(cache, {"image_id": key, "image_embeddings": emb, "original_size": np.asarray([image.shape[:2]])},
             ["found"])
    return image_id


class EncodeModel:
    """sam_encode: image (UINT8 HxWx3) or image_bytes -> image_id, original_size; embeds on a miss."""

    def initialize(self, args) -> None:
        params = _params(args)
        _lower_priority(params)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.cache = _cache_model(params)

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            image = _image_from_request(request, self.max_pixels, self.image_size, wire.SAM_ENCODE.name)
            image_id = _encode(image, self.image_size, self.cache)
            return _response(wire.SAM_ENCODE, {"image_id": _id_tensor(image_id), "original_size": np.asarray(image.shape[:2])})
        except Exception as e:
            return _error_for(e, wire.SAM_ENCODE.name)


class PromptPrepModel:
    """sam_prompt_prep, the click path's first step: prompts checked (INVALID_ARG naming what was
    received) and completed, `logic.prepare_prompts`."""

    def initialize(self, args) -> None:
        self.low_res_size = int(_params(args)["low_res_size"])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            return _response(wire.SAM_PROMPT_PREP, logic.prepare_prompts(
                _input(request, "point_coords"), _input(request, "point_labels"), _input(request, "mask_input"),
                _input(request, "multimask_output"), self.low_res_size))
        except Exception as e:
            return _error_for(e, wire.SAM_DECODE.name)


class MaskDecoderModel(_CacheOwner):
    """sam_mask_decoder (CPU variant): the embedding cache and the decoder engine in one process.
    Decode requests of different clients and images, batched by Triton over prompts, run through
    the engine together (one run per distinct point count), each image's embedding read in place."""

    model = wire.SAM_MASK_DECODER

    def initialize(self, args) -> None:
        params = _params(args)
        self._init_cache(params)
        self.runner = _engine_runner(params, DECODER_STATIC_SHAPES)
        self.image_size = int(params["image_size"])
        self.low_res_size = int(self.runner.input_shapes["mask_input"][-1])
        self._warm_up()

    def _warm_up(self) -> None:
        """One click's decode at load time, so the first user's click does not pay for the engine's
        first run."""
        from samrt.engines.runner import run_decoder

        try:
            emb = np.zeros((1,) + tuple(int(d) for d in self.runner.input_shapes["image_embeddings"][1:]), np.float32)
            run_decoder(self.runner, emb, np.zeros((1, 2, 2), np.float32), np.array([[1.0, -1.0]], np.float32),
                        None, self.low_res_size)
        except Exception as e:  # a warm-up only: the model serves anyway
            log.warning("sam_mask_decoder: warm-up decode failed: %s", e)

    def execute(self, requests):
        responses: List[object] = [None] * len(requests)
        decodes: Dict[int, tuple] = {}
        for i, request in enumerate(requests):
            try:
                image_id = logic.single_image_id(_input(request, "image_id"))
                responses[i] = self._cache_request(request, image_id)
                if responses[i] is None:
                    entry, coords = self._decode_entry(request, image_id)
                    decodes[i] = (image_id, entry, coords)
            except Exception as e:
                responses[i] = _error_for(e, wire.SAM_DECODE.name)
        by_points = defaultdict(list)
        for i, (_, _, coords) in decodes.items():
            by_points[coords.shape[1]].append(i)
        for idxs in by_points.values():
            self._run_group(idxs, decodes, requests, responses)
        return responses

    def _run_group(self, idxs, decodes, requests, responses) -> None:
        from samrt.engines.runner import run_decoder

        entries = {}
        for i in idxs:  # the group's images, once each
            entries.setdefault(decodes[i][0], decodes[i][1])
        ids = list(entries)
        emb = entries[ids[0]].embeddings[None] if len(ids) == 1 else np.stack([entries[k].embeddings for k in ids])
        rows = np.concatenate([np.full(len(decodes[i][2]), ids.index(decodes[i][0])) for i in idxs])
        feed = {k: np.concatenate([_input(requests[i], k) for i in idxs]) for k in ("prompt_labels", "prompt_mask",
                                                                                   "has_mask_input")}
        try:
            low_res, iou = run_decoder(self.runner, emb, np.concatenate([decodes[i][2] for i in idxs]),
                                       feed["prompt_labels"], feed["prompt_mask"], self.low_res_size,
                                       has_mask_input=feed["has_mask_input"].reshape(-1), embedding_rows=rows)
        except Exception as e:
            for i in idxs:
                responses[i] = _error_for(e, "decoder")
            return
        start = 0
        for i in idxs:
            entry, n = decodes[i][1], len(decodes[i][2])
            sl = slice(start, start + n)
            start += n
            try:
                multimask = logic.parse_multimask(_input(requests[i], "multimask"))
                low, score = P.select_masks(low_res[sl], iou[sl], multimask)
                out = {"low_res_masks": low, "iou_predictions": score, "mask_logits": low,
                       "original_size": np.tile(np.asarray(entry.original_size, np.int32), (n, 1))}
                wanted = requests[i].requested_output_names() or list(out)
                responses[i] = _response(self.model, {k: v for k, v in out.items() if k in wanted})
            except Exception as e:
                responses[i] = _error_for(e, "decoder")


class CacheModel(_CacheOwner):
    """sam_embedding_cache (production variant): the embedding cache; for a decode request it
    hands the native decoder each prompt's embedding and its points in the resized frame."""

    model = wire.SAM_EMBEDDING_CACHE

    def initialize(self, args) -> None:
        params = _params(args)
        self._init_cache(params)
        self.image_size = int(params["image_size"])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            image_id = logic.single_image_id(_input(request, "image_id"))
            answer = self._cache_request(request, image_id)
            if answer is not None:
                return answer
            entry, coords = self._decode_entry(request, image_id)
            p = len(coords)
            return _response(self.model, {
                "point_coords": coords,
                "image_embeddings": np.broadcast_to(entry.embeddings, (p,) + entry.embeddings.shape),
                "original_size": np.tile(np.asarray(entry.original_size, np.int32), (p, 1))})
        except Exception as e:
            return _error_for(e, self.model.name)


class MaskSelectModel:
    """sam_mask_select (production variant): the native decoder's 4 masks -> the ones SamPredictor
    returns (`processing.select_masks`)."""

    def initialize(self, args) -> None:
        pass

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            low, iou = P.select_masks(_input(request, "all_low_res_masks"), _input(request, "all_iou_predictions"),
                                      logic.parse_multimask(_input(request, "multimask")))
            return _response(wire.SAM_MASK_SELECT, {"low_res_masks": low, "iou_predictions": iou, "mask_logits": low})
        except Exception as e:
            return _error_for(e, wire.SAM_MASK_SELECT.name)


class MaskUpscaleModel:
    """sam_mask_upscale: logits [P,C,m,m] -> masks [P,C,H,W] at the original size, with
    Sam.postprocess_masks' values (`logic.upscaled_masks`, `samrt.upscale`)."""

    model = wire.SAM_MASK_UPSCALE

    def initialize(self, args) -> None:
        self.image_size = int(_params(args)["image_size"])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _masks(self, request) -> np.ndarray:
        size = _input(request, "original_size").reshape(-1, 2)[0]
        original = (int(size[0]), int(size[1]))
        input_size = prompts.get_preprocess_shape(original[0], original[1], self.image_size)
        return logic.upscaled_masks(_input(request, "mask_logits"), input_size, original, self.image_size)

    def _one(self, request):
        try:
            return _response(self.model, {"masks": self._masks(request)})
        except Exception as e:
            return _error_for(e, self.model.name)


class MaskRleModel(MaskUpscaleModel):
    """sam_mask_rle: logits [P,C,m,m] -> masks at the original size as COCO RLE JSON [P,C]
    (pycocotools). It upscales on its own: Triton runs it only when `masks_rle` is asked for."""

    model = wire.SAM_MASK_RLE

    def _one(self, request):
        try:
            return _response(self.model, {"masks_rle": logic.masks_to_rle(self._masks(request))})
        except Exception as e:
            return _error_for(e, self.model.name)


class SegmentModel:
    """sam_segment: one shot, image (or image_bytes) plus one prompt -> masks: encodes like
    sam_encode (in this process), then decodes through sam_decode. Inputs are checked here, so
    bad ones get INVALID_ARG (an error that comes back through BLS would arrive as INTERNAL)."""

    def initialize(self, args) -> None:
        params = _params(args)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.cache = _cache_model(params)

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            image = _image_from_request(request, self.max_pixels, self.image_size, wire.SAM_SEGMENT.name)
            coords, labels = _input(request, "point_coords"), _input(request, "point_labels")
            if coords is None or coords.ndim != 2 or labels is None:
                raise InputError("sam_segment: expected point_coords [N,2] and point_labels [N], got "
                                 f"{None if coords is None else list(coords.shape)} and "
                                 f"{None if labels is None else list(labels.shape)}")
            prompts.complete_prompts(*prompts.check_points(coords[None], labels[None]))
            image_id = _encode(image, self.image_size, self.cache)
            dec_in = {"image_id": np.array([[image_id.encode()]], dtype=object),
                      "point_coords": coords[None], "point_labels": labels[None]}
            for opt in ("mask_input", "multimask_output"):
                v = _input(request, opt)
                if v is not None:
                    dec_in[opt] = v[None]
            wanted = request.requested_output_names() or ["masks", "iou_predictions", "low_res_masks"]
            out = _bls(wire.SAM_DECODE, dec_in, list(wanted))
            return _response(wire.SAM_SEGMENT, {k: v[0] for k, v in out.items()})
        except Exception as e:
            return _error_for(e, wire.SAM_SEGMENT.name)


class AmgModel:
    """sam_amg: automatic mask generation on the server, one round trip per image.

    The image (and each crop) is embedded through sam_encode, so embeddings are cached like any
    other; the decoder runs in this process in batches of points_per_batch; the answer is the
    records as JSON with COCO RLE masks (compact on the wire)."""

    def initialize(self, args) -> None:
        params = _params(args)
        _lower_priority(params)
        self.runner = _decoder_runner(params)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.low_res_size = int(self.runner.input_shapes["mask_input"][-1])
        self.cache = _cache_model(params)

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        from samrt import amg

        try:
            image = _image_from_request(request, self.max_pixels, self.image_size, wire.SAM_AMG.name)
            raw = _input(request, "options")
            fields = json.loads(bytes(raw.reshape(-1)[0]).decode()) if raw is not None else {}
            records = amg.generate_masks(image, self._set_crop, amg.AmgOptions.from_fields(fields), "coco_rle",
                                         should_stop=_cancelled(request))
            return _response(wire.SAM_AMG, {"records": np.array([json.dumps(records).encode()], dtype=object)})
        except amg.AmgCancelled as e:  # [robust] the client has gone: stop, answer CANCELLED
            log.info("%s: %s", wire.SAM_AMG.name, e)
            return _error(str(e), CANCELLED)
        except (TypeError, ValueError) as e:
            return _error_for(e if isinstance(e, InputError) else InputError(str(e)), wire.SAM_AMG.name)
        except Exception as e:
            return _error_for(e, wire.SAM_AMG.name)

    def _set_crop(self, crop: np.ndarray):
        from samrt.engines.amg import amg_crop_decoder  # shared with the in-process generator (Ray job)

        crop = np.ascontiguousarray(crop)
        image_id = _encode(crop, self.image_size, self.cache)
        emb = _cached(self.cache, image_id)["image_embeddings"]
        return amg_crop_decoder(self.runner, emb, crop.shape[:2], self.image_size, self.low_res_size)


# -- [robust] abandoned requests: Triton marks a gRPC request cancelled when its client goes --
CANCELLED = "CANCELLED"


def _cancelled(request):
    """A `should_stop()` for samrt.amg: true once Triton has marked `request` cancelled (its
    gRPC call was cancelled or its deadline passed; Triton 2.51 marks no HTTP request, even when
    its connection closed: measured, see README)."""
    check = getattr(request, "is_cancelled", None)
    return (lambda: bool(check())) if check is not None else None
