"""Triton python-backend models. Each rendered `model.py` is one line that imports a class here.

Only runs inside Triton's python stub (`triton_python_backend_utils` is imported lazily).
Every request gets exactly one response; a bad request gets an error response and the other
requests of the batch go on.

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

from samrt import processing as P
from samrt.errors import InputError

from . import logic

log = logging.getLogger("samrt.server")


def _pb():
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _params(args) -> Dict[str, str]:
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def _input(request, name: str) -> Optional[np.ndarray]:
    t = _pb().get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _error(message: str):
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def _unexpected(model: str, e: Exception):
    """An error nobody planned for still answers its own request only, and is logged."""
    log.exception("%s: unexpected error", model)
    return _error(f"{model}: internal error ({type(e).__name__}: {e}); the server goes on")


def _response(outputs: Dict[str, np.ndarray]):
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in outputs.items()])


def _bls(model_name: str, inputs: Dict[str, np.ndarray], outputs: List[str]) -> Dict[str, np.ndarray]:
    pb = _pb()
    req = pb.InferenceRequest(
        model_name=model_name,
        inputs=[pb.Tensor(k, v) for k, v in inputs.items()],
        requested_output_names=outputs,
    )
    resp = req.exec()
    if resp.has_error():
        raise _BlsError(resp.error().message())
    return {name: pb.get_output_tensor_by_name(resp, name).as_numpy() for name in outputs}


class _BlsError(RuntimeError):
    """An error answered by a model called through BLS; its message goes to the caller as is."""


class BlsRunner:
    """samrt.engines.Runner over a model of the same server (the production variant's native decoder)."""

    def __init__(self, model_name: str, mask_size: int) -> None:
        self.model_name = model_name
        self.output_names = ["low_res_masks", "iou_predictions"]
        self.input_shapes = {"mask_input": ("num_prompts", 1, mask_size, mask_size)}

    def run(self, feeds, outputs=None):
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        return _bls(self.model_name, feeds, list(outputs or self.output_names))


def _decoder_runner(params):
    if params.get("decoder_model"):
        return BlsRunner(params["decoder_model"], int(params["low_res_size"]))
    from samrt.engines import OnnxRuntimeRunner

    return OnnxRuntimeRunner(params["onnx_path"], params.get("device", "cpu"), _ort_threads())


def _ort_threads() -> int:
    return int(os.environ.get("SAMRT_ORT_THREADS", "0")) or (os.cpu_count() or 1)


def _image_from_request(request, max_pixels: int, model: str) -> np.ndarray:
    """`image` (UINT8 HxWx3) or `image_bytes` (an encoded image), checked against the pixel limit."""
    image, data = _input(request, "image"), _input(request, "image_bytes")
    if (image is None) == (data is None):
        raise InputError(f"{model}: got " + ("both image and image_bytes" if image is not None else
                         "neither image nor image_bytes") + ", expected exactly one of them")
    if image is None:
        image = logic.decode_image_bytes(bytes(np.asarray(data).reshape(-1)[0]), max_pixels)
    return P.check_image(image, max_pixels)


def _ids(arr: np.ndarray) -> str:
    v = np.asarray(arr).reshape(-1)[0]
    return v.decode() if isinstance(v, bytes) else str(v)


class CacheModel:
    """sam_embedding_cache: put (image_id + image_embeddings + original_size) or get (image_id)."""

    def initialize(self, args) -> None:
        self.cache = logic.EmbeddingCache(int(_params(args)["cache_bytes"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                image_id = _ids(_input(request, "image_id"))
                emb = _input(request, "image_embeddings")
                if emb is not None:
                    size = _input(request, "original_size").reshape(-1)
                    self.cache.put(image_id, logic.CacheEntry(np.array(emb, dtype=np.float32), (int(size[0]), int(size[1]))))
                    responses.append(_response({"found": np.array([True])}))
                    continue
                wanted = request.requested_output_names()
                if wanted and set(wanted) <= {"found"}:
                    responses.append(_response({"found": np.array([image_id in self.cache])}))
                    continue
                entry = self.cache.get(image_id)
                responses.append(_response({
                    "found": np.array([True]),
                    "image_embeddings": entry.embeddings,
                    "original_size": np.asarray(entry.original_size, dtype=np.int32),
                }))
            except (InputError, ValueError) as e:
                responses.append(_error(str(e)))
            except Exception as e:  # one response per request, whatever happens
                responses.append(_unexpected("sam_embedding_cache", e))
        return responses


class ImageEncoderModel:
    """sam_image_encoder: ONNX Runtime over the exported encoder, batched by Triton."""

    def initialize(self, args) -> None:
        from samrt.engines import OnnxRuntimeRunner

        params = _params(args)
        self.runner = OnnxRuntimeRunner(params["onnx_path"], params.get("device", "cpu"), _ort_threads())

    def execute(self, requests):
        images = [_input(r, "image") for r in requests]
        try:
            out = self.runner.run({"image": np.concatenate(images, axis=0)})["image_embeddings"]
        except Exception as e:  # one bad tensor must not take the batch down: retry one by one
            return [self._single(img) for img in images] if len(images) > 1 else [_error(f"encoder: {e}")]
        sizes = np.cumsum([0] + [len(i) for i in images])
        return [_response({"image_embeddings": out[a:b]}) for a, b in zip(sizes[:-1], sizes[1:])]

    def _single(self, image):
        try:
            return _response(self.runner.run({"image": image}))
        except Exception as e:
            return _error(f"encoder: {e}")


class EncodeModel:
    """sam_encode: image (UINT8 HxWx3) or image_bytes -> image_id, original_size; embeds on a miss."""

    def initialize(self, args) -> None:
        params = _params(args)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            image = _image_from_request(request, self.max_pixels, "sam_encode")
            image_id = logic.image_id_of(image)
            size = np.asarray(image.shape[:2], dtype=np.int32)
            if not _bls("sam_embedding_cache", {"image_id": np.array([image_id.encode()], dtype=object)}, ["found"])["found"][0]:
                x, _ = P.preprocess_image(image, self.image_size)
                emb = _bls("sam_image_encoder", {"image": x}, ["image_embeddings"])["image_embeddings"]
                _bls("sam_embedding_cache", {"image_id": np.array([image_id.encode()], dtype=object),
                                             "image_embeddings": emb[0], "original_size": size}, ["found"])
            return _response({"image_id": np.array([image_id.encode()], dtype=object), "original_size": size})
        except (InputError, _BlsError) as e:
            return _error(str(e))
        except Exception as e:
            return _unexpected("sam_encode", e)


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
        embeddings: Dict[str, np.ndarray] = {}
        for i, request in enumerate(requests):
            try:
                image_id = _ids(_input(request, "image_id"))
                if image_id not in embeddings:
                    got = _bls("sam_embedding_cache", {"image_id": np.array([image_id.encode()], dtype=object)},
                               ["image_embeddings", "original_size"])
                    embeddings[image_id] = got
                size = embeddings[image_id]["original_size"]
                parsed[i] = logic.parse_decode_request(
                    _input(request, "image_id"), _input(request, "point_coords"), _input(request, "point_labels"),
                    _input(request, "mask_input"), _input(request, "multimask_output"),
                    (int(size[0]), int(size[1])), self.image_size, self.low_res_size,
                )
            except (InputError, _BlsError) as e:
                responses[i] = _error(str(e))
            except Exception as e:
                responses[i] = _unexpected("sam_decode", e)
        by_points = defaultdict(list)
        for i, req in parsed.items():
            by_points[req.point_coords.shape[1]].append(i)
        for idxs in by_points.values():
            self._run_group([(i, parsed[i]) for i in idxs], embeddings, requests, responses)
        return responses

    def _run_group(self, group, embeddings, requests, responses) -> None:
        m = self.low_res_size
        feeds = {
            "image_embeddings": np.concatenate([
                np.broadcast_to(embeddings[r.image_id]["image_embeddings"][None],
                                (r.num_prompts,) + embeddings[r.image_id]["image_embeddings"].shape)
                for _, r in group]).astype(np.float32),
            "point_coords": np.concatenate([r.point_coords for _, r in group]),
            "point_labels": np.concatenate([r.point_labels for _, r in group]),
            "mask_input": np.concatenate([r.mask_input if r.mask_input is not None else
                                          np.zeros((r.num_prompts, 1, m, m), np.float32) for _, r in group]),
            "has_mask_input": np.concatenate([np.full(r.num_prompts, float(r.mask_input is not None), np.float32)
                                              for _, r in group]),
        }
        try:
            out = self.runner.run(feeds)
        except Exception as e:
            for i, _ in group:
                responses[i] = _error(f"decoder: {e}")
            return
        start = 0
        for i, r in group:
            sl = slice(start, start + r.num_prompts)
            start += r.num_prompts
            try:
                wanted = requests[i].requested_output_names() or ["masks", "iou_predictions", "low_res_masks"]
                responses[i] = _response(logic.postprocess_decode(
                    r, out["low_res_masks"][sl], out["iou_predictions"][sl], self.image_size, wanted))
            except Exception as e:
                responses[i] = _error(f"postprocess: {e}")


class SegmentModel:
    """sam_segment: one shot, image (or image_bytes) plus prompts -> masks, via sam_encode + sam_decode."""

    def initialize(self, args) -> None:
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                enc_in = {k: v for k in ("image", "image_bytes") if (v := _input(request, k)) is not None}
                image_id = _bls("sam_encode", enc_in, ["image_id"])["image_id"]
                coords, labels = _input(request, "point_coords"), _input(request, "point_labels")
                if coords is None or coords.ndim != 2 or labels is None:
                    raise InputError("sam_segment: expected point_coords [N,2] and point_labels [N], got "
                                     f"{None if coords is None else list(coords.shape)} and "
                                     f"{None if labels is None else list(labels.shape)}")
                dec_in = {"image_id": np.array([image_id.reshape(-1)[0]], dtype=object).reshape(1, 1),
                          "point_coords": coords[None].astype(np.float32),
                          "point_labels": labels[None]}
                for opt in ("mask_input", "multimask_output"):
                    v = _input(request, opt)
                    if v is not None:
                        dec_in[opt] = v[None]
                wanted = request.requested_output_names() or ["masks", "iou_predictions", "low_res_masks"]
                out = _bls("sam_decode", dec_in, list(wanted))
                responses.append(_response({k: v[0] for k, v in out.items()}))
            except (InputError, _BlsError) as e:
                responses.append(_error(str(e)))
            except Exception as e:
                responses.append(_unexpected("sam_segment", e))
        return responses


class AmgModel:
    """sam_amg: automatic mask generation on the server, one round trip per image.

    The image (and each crop) is embedded through sam_encode, so embeddings are cached like any
    other; the decoder runs in this process in batches of points_per_batch; the answer is the
    records as JSON with COCO RLE masks (compact on the wire)."""

    def initialize(self, args) -> None:
        params = _params(args)
        self.runner = _decoder_runner(params)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.low_res_size = int(self.runner.input_shapes["mask_input"][-1])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        from samrt import amg

        try:
            image = _image_from_request(request, self.max_pixels, "sam_amg")
            raw = _input(request, "options")
            fields = json.loads(bytes(raw.reshape(-1)[0]).decode()) if raw is not None else {}
            known = set(amg.AmgOptions.__dataclass_fields__)
            unknown = sorted(set(fields) - known)
            if unknown:
                raise InputError(f"options: got unknown {unknown}, expected names from {sorted(known)}")
            records = amg.generate_masks(image, self._set_crop, amg.AmgOptions(**fields), "coco_rle")
            return _response({"records": np.array([json.dumps(records).encode()], dtype=object)})
        except (InputError, _BlsError, TypeError, ValueError) as e:
            return _error(str(e))
        except Exception as e:
            return _unexpected("sam_amg", e)

    def _set_crop(self, crop: np.ndarray):
        from samrt.engines.amg import amg_crop_decoder  # shared with the in-process generator (Ray job)

        crop = np.ascontiguousarray(crop)
        image_id = _bls("sam_encode", {"image": crop}, ["image_id"])["image_id"]
        emb = _bls("sam_embedding_cache", {"image_id": image_id}, ["image_embeddings"])["image_embeddings"][None]
        return amg_crop_decoder(self.runner, emb, crop.shape[:2], self.image_size, self.low_res_size)
