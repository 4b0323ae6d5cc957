"""Triton python-backend models. Each rendered `model.py` is one line that imports a class here.

Only runs inside Triton's python stub (`triton_python_backend_utils` is imported lazily).
Tensor names and dtypes come from the wire declaration (`samrt.wire`); prompt rules from
`samrt.prompts`. Every request gets exactly one response; a bad request gets an error response
with Triton's code (INVALID_ARG for bad input, NOT_FOUND for an unknown or evicted image_id,
UNAVAILABLE for overload) and the other requests of the batch go on.

Where the embedding cache lives: python-backend models are separate processes, so the cache is
owned by one single-instance model, `sam_embedding_cache`, which does nothing slow. `sam_encode`
and `sam_decode` reach it through BLS; encoders and decoders can then be scaled to several
instances (processes) and still share one cache, and a long encode never blocks a lookup.
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


def _engine_runner(params):
    """The runner for the model's engine file (samrt.engines.runner_for_engine: OpenVINO for an IR
    .xml, ONNX Runtime for .onnx, TensorRT for .plan)."""
    from samrt.engines import runner_for_engine

    return runner_for_engine(params["engine_path"], params.get("device", "cpu"), _ort_threads())


def _decoder_runner(params):
    if params.get("decoder_model"):
        return BlsRunner(params["decoder_model"], int(params["low_res_size"]))
    return _engine_runner(params)


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


def _cached(image_id: str, outputs: List[str]) -> Dict[str, np.ndarray]:
    """The cache's entry for `image_id`; UnknownImageError (NOT_FOUND) when it holds none."""
    got = _bls(CACHE, {"image_id": _id_tensor(image_id)}, ["found"] + outputs)
    if not got["found"][0]:
        raise logic.UnknownImageError(image_id)
    return got


CACHE = wire.SAM_EMBEDDING_CACHE


class CacheModel:
    """sam_embedding_cache: put (image_id + image_embeddings + original_size) or get (image_id).

    A get of an id it does not hold answers `found` false (with zeros), not an error: Triton 2.51's
    BLS hands callers every error as INTERNAL, so the caller raises NOT_FOUND itself."""

    def initialize(self, args) -> None:
        params = _params(args)
        self.cache = logic.EmbeddingCache(int(params["cache_bytes"]))
        self.missing = np.zeros([int(d) for d in params["embedding_shape"].split(",")], np.float32)

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            image_id = _ids(_input(request, "image_id"))
            emb = _input(request, "image_embeddings")
            if emb is not None:
                size = _input(request, "original_size").reshape(-1)
                self.cache.put(image_id, logic.CacheEntry(np.array(emb, dtype=np.float32), (int(size[0]), int(size[1]))))
                return _response(CACHE, {"found": np.array([True])})
            wanted = request.requested_output_names()
            if wanted and set(wanted) <= {"found"}:
                return _response(CACHE, {"found": np.array([image_id in self.cache])})
            try:
                entry = self.cache.get(image_id)
            except logic.UnknownImageError:
                return _response(CACHE, {"found": np.array([False]), "image_embeddings": self.missing,
                                         "original_size": np.zeros(2)})
            return _response(CACHE, {"found": np.array([True]), "image_embeddings": entry.embeddings,
                                     "original_size": np.asarray(entry.original_size)})
        except ValueError as e:  # e.g. an embedding larger than the cache
            return _error(str(e), INVALID_ARG) if not isinstance(e, InputError) else _error_for(e, CACHE.name)
        except Exception as e:  # one response per request, whatever happens
            return _error_for(e, CACHE.name)


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


def _encode(image: np.ndarray, image_size: int) -> str:
    """Embed `image` unless the cache holds it already; its id either way."""
    image_id = wire.image_id_of(image)
    if not _bls(CACHE, {"image_id": _id_tensor(image_id)}, ["found"])["found"][0]:
        x, _ = P.preprocess_image(image, image_size)
        pb = _pb()
        req = pb.InferenceRequest(model_name="sam_image_encoder", inputs=[pb.Tensor("image", x)],
                                  requested_output_names=["image_embeddings"])
        resp = req.exec()
        if resp.has_error():
            raise _BlsError(resp.error().message(), _code_name(resp.error()))
        emb = pb.get_output_tensor_by_name(resp, "image_embeddings").as_numpy()
        _bls(CACHE, {"image_id": _id_tensor(image_id), "image_embeddings": emb[0],
                     "original_size": np.asarray(image.shape[:2])}, ["found"])
    return image_id


class EncodeModel:
    """sam_encode: image (UINT8 HxWx3) or image_bytes -> image_id, original_size; embeds on a miss."""

    def initialize(self, args) -> None:
        params = _params(args)
        _lower_priority(params)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            image = _image_from_request(request, self.max_pixels, self.image_size, wire.SAM_ENCODE.name)
            image_id = _encode(image, self.image_size)
            return _response(wire.SAM_ENCODE, {"image_id": _id_tensor(image_id), "original_size": np.asarray(image.shape[:2])})
        except Exception as e:
            return _error_for(e, wire.SAM_ENCODE.name)


class DecodeModel:
    """sam_decode: prompts for a cached image -> masks. Requests of different clients and images,
    batched by Triton, run through the decoder together (one run per distinct point count)."""

    def initialize(self, args) -> None:
        params = _params(args)
        self.runner = _decoder_runner(params)
        self.image_size = int(params["image_size"])
        self.low_res_size = int(self.runner.input_shapes["mask_input"][-1])

    def execute(self, requests):
        responses: List[object] = [None] * len(requests)
        parsed: Dict[int, logic.DecodeRequest] = {}
        embeddings: Dict[str, Dict[str, np.ndarray]] = {}
        for i, request in enumerate(requests):
            try:
                image_id = _ids(_input(request, "image_id"))
                if image_id not in embeddings:
                    embeddings[image_id] = _cached(image_id, ["image_embeddings", "original_size"])
                size = embeddings[image_id]["original_size"]
                parsed[i] = logic.parse_decode_request(
                    _input(request, "image_id"), _input(request, "point_coords"), _input(request, "point_labels"),
                    _input(request, "mask_input"), _input(request, "multimask_output"),
                    (int(size[0]), int(size[1])), self.image_size, self.low_res_size,
                )
            except Exception as e:
                responses[i] = _error_for(e, wire.SAM_DECODE.name)
        by_points = defaultdict(list)
        for i, req in parsed.items():
            by_points[req.point_coords.shape[1]].append(i)
        for idxs in by_points.values():
            self._run_group([(i, parsed[i]) for i in idxs], embeddings, requests, responses)
        return responses

    def _run_group(self, group, embeddings, requests, responses) -> None:
        from samrt.engines.runner import run_decoder

        ids = list(dict.fromkeys(r.image_id for _, r in group))  # the group's images, once each
        emb = np.stack([embeddings[i]["image_embeddings"] for i in ids])
        rows = np.concatenate([np.full(r.num_prompts, ids.index(r.image_id)) for _, r in group])
        m = self.low_res_size
        masks = [r.mask_input if r.mask_input is not None else np.zeros((r.num_prompts, 1, m, m), np.float32)
                 for _, r in group]
        has = np.concatenate([np.full(r.num_prompts, float(r.mask_input is not None), np.float32) for _, r in group])
        try:
            low_res, iou = run_decoder(self.runner, emb, np.concatenate([r.point_coords for _, r in group]),
                                       np.concatenate([r.point_labels for _, r in group]), np.concatenate(masks), m,
                                       has_mask_input=has, embedding_rows=rows)
        except Exception as e:
            for i, _ in group:
                responses[i] = _error_for(e, "decoder")
            return
        start = 0
        for i, r in group:
            sl = slice(start, start + r.num_prompts)
            start += r.num_prompts
            try:
                wanted = requests[i].requested_output_names() or ["masks", "iou_predictions", "low_res_masks"]
                responses[i] = _response(wire.SAM_DECODE, logic.postprocess_decode(
                    r, low_res[sl], iou[sl], self.image_size, wanted))
            except Exception as e:
                responses[i] = _error_for(e, "postprocess")


class SegmentModel:
    """sam_segment: one shot, image (or image_bytes) plus one prompt -> masks: encodes like
    sam_encode (in this process), then decodes through sam_decode. Inputs are checked here, so
    bad ones get INVALID_ARG (an error that comes back through BLS would arrive as INTERNAL)."""

    def initialize(self, args) -> None:
        params = _params(args)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])

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
            image_id = _encode(image, self.image_size)
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
        image_id = _encode(crop, self.image_size)
        emb = _cached(image_id, ["image_embeddings"])["image_embeddings"][None]
        return amg_crop_decoder(self.runner, emb, crop.shape[:2], self.image_size, self.low_res_size)


# -- [robust] abandoned requests: Triton marks a gRPC request cancelled when its client goes --
CANCELLED = "CANCELLED"


def _cancelled(request):
    """A `should_stop()` for samrt.amg: true once Triton has marked `request` cancelled (its
    gRPC call was cancelled or its deadline passed; Triton 2.51 marks no HTTP request, even when
    its connection closed: measured, see README)."""
    check = getattr(request, "is_cancelled", None)
    return (lambda: bool(check())) if check is not None else None
