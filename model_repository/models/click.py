"""The click path: the steps of the `sam_decode` ensemble (rendered from `samrt.wire.click_path`)
and the one-shot `sam_segment`.

CPU variant: `sam_prompt_prep` checks and completes the prompts; `sam_mask_decoder` owns the
embedding cache and runs the decoder engine, Triton's dynamic batcher gathering prompts of all
clients and images; `sam_mask_upscale` and `sam_mask_rle` produce `masks` and `masks_rle` (Triton
prunes them when a request does not ask for those outputs). Production variant: `sam_embedding_cache`
owns the cache and hands the native `sam_prompt_decoder` each prompt's embedding; `sam_mask_select`
picks the masks SamPredictor returns.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

import numpy as np

from samrt import processing as P
from samrt import prompts, wire
from samrt.engines.runner import run_decoder
from samrt.errors import InputError

from .. import logic
from .base import (DECODER_STATIC_SHAPES, PythonModel, bls, engine_runner, error_response, input_array, log,
                   response)
from .encode import cache_model, encode, image_from_request

__all__ = ["PromptPrepModel", "MaskDecoderModel", "CacheModel", "MaskSelectModel", "MaskUpscaleModel", "MaskRleModel",
           "SegmentModel"]


class _CacheOwner(PythonModel):
    """The embedding cache and its own requests, for the model that owns it (sam_mask_decoder or
    sam_embedding_cache). Requests carry Triton's batch dim (1 for these).

    put: image_id + image_embeddings + original_size -> found. ask (only `found` requested):
    whether the id is cached, without touching the LRU order. get (no prompt_coords): found,
    image_embeddings, original_size; an id it does not hold answers found false with zeros, not an
    error: Triton 2.51's BLS hands callers every error as INTERNAL, so callers raise NOT_FOUND."""

    model: wire.WireModel

    def _init_cache(self, params: Dict[str, str]) -> None:
        self.cache = logic.cache_from_params(params)  # memory, and a disk tier with cache_dir
        self.missing = np.zeros([1] + [int(d) for d in params["embedding_shape"].split(",")], np.float32)
        self.image_size = int(params["image_size"])

    def _cache_request(self, request, image_id: str):
        """The response to a put/ask/get request; None for a decode request."""
        emb = input_array(request, "image_embeddings")
        if emb is not None:
            size = input_array(request, "original_size").reshape(-1)
            try:
                self.cache.put(image_id, logic.CacheEntry(np.array(emb.reshape(emb.shape[-3:]), dtype=np.float32),
                                                          (int(size[0]), int(size[1]))))
            except ValueError as e:  # an embedding larger than the whole cache: the caller's request
                raise InputError(f"{self.model.name}: {e}") from None
            return response(self.model, {"found": np.array([[True]])})
        if input_array(request, "prompt_coords") is not None:
            return None
        wanted = request.requested_output_names()
        if wanted and set(wanted) <= {"found"}:
            return response(self.model, {"found": np.array([[image_id in self.cache]])})
        try:
            entry = self.cache.get(image_id)
        except logic.UnknownImageError:
            return response(self.model, {"found": np.array([[False]]), "image_embeddings": self.missing,
                                         "original_size": np.zeros((1, 2))})
        return response(self.model, {"found": np.array([[True]]), "image_embeddings": entry.embeddings[None],
                                     "original_size": np.asarray([entry.original_size])})

    def _decode_entry(self, request, image_id: str):
        """The cache entry a decode request names (UnknownImageError: NOT_FOUND) and its points in
        the encoder's resized frame."""
        entry = self.cache.get(image_id)
        coords = prompts.apply_coords(input_array(request, "prompt_coords"), entry.original_size, self.image_size)
        return entry, coords


class PromptPrepModel(PythonModel):
    """sam_prompt_prep, the click path's first step: prompts checked (INVALID_ARG naming what was
    received) and completed, `logic.prepare_prompts`."""

    error_name = wire.SAM_DECODE.name

    def setup(self, params) -> None:
        self.low_res_size = int(params["low_res_size"])

    def _one(self, request):
        return response(wire.SAM_PROMPT_PREP, logic.prepare_prompts(
            input_array(request, "point_coords"), input_array(request, "point_labels"),
            input_array(request, "mask_input"), input_array(request, "multimask_output"), self.low_res_size))


class MaskDecoderModel(_CacheOwner):
    """sam_mask_decoder (CPU variant): the embedding cache and the decoder engine in one process.
    Decode requests of different clients and images, batched by Triton over prompts, run through
    the engine together (one run per distinct point count), each image's embedding read in place."""

    model = wire.SAM_MASK_DECODER
    error_name = wire.SAM_DECODE.name

    def setup(self, params) -> None:
        self._init_cache(params)
        self.runner = engine_runner(params, DECODER_STATIC_SHAPES)
        self.low_res_size = int(self.runner.input_shapes["mask_input"][-1])
        self._warm_up()

    def _warm_up(self) -> None:
        """One click's decode at load time, so the first user's click does not pay for the engine's
        first run."""
        try:
            emb = np.zeros((1,) + tuple(int(d) for d in self.runner.input_shapes["image_embeddings"][1:]), np.float32)
            run_decoder(self.runner, emb, np.zeros((1, 2, 2), np.float32), np.array([[1.0, -1.0]], np.float32),
                        None, self.low_res_size)
        except Exception as e:  # a warm-up only: the model serves anyway
            log.warning("sam_mask_decoder: warm-up decode failed: %s", e)

    def _batch(self, requests):
        responses: List[object] = [None] * len(requests)
        decodes: Dict[int, tuple] = {}
        for i, request in enumerate(requests):
            try:
                image_id = logic.single_image_id(input_array(request, "image_id"))
                responses[i] = self._cache_request(request, image_id)
                if responses[i] is None:
                    entry, coords = self._decode_entry(request, image_id)
                    decodes[i] = (image_id, entry, coords)
            except Exception as e:
                responses[i] = error_response(e, self.error_name)
        by_points = defaultdict(list)
        for i, (_, _, coords) in decodes.items():
            by_points[coords.shape[1]].append(i)
        for idxs in by_points.values():
            self._run_group(idxs, decodes, requests, responses)
        return responses

    def _run_group(self, idxs, decodes, requests, responses) -> None:
        entries = {}
        for i in idxs:  # the group's images, once each
            entries.setdefault(decodes[i][0], decodes[i][1])
        ids = list(entries)
        emb = entries[ids[0]].embeddings[None] if len(ids) == 1 else np.stack([entries[k].embeddings for k in ids])
        rows = np.concatenate([np.full(len(decodes[i][2]), ids.index(decodes[i][0])) for i in idxs])
        feed = {k: np.concatenate([input_array(requests[i], k) for i in idxs]) for k in ("prompt_labels", "prompt_mask",
                                                                                        "has_mask_input")}
        try:
            low_res, iou = run_decoder(self.runner, emb, np.concatenate([decodes[i][2] for i in idxs]),
                                       feed["prompt_labels"], feed["prompt_mask"], self.low_res_size,
                                       has_mask_input=feed["has_mask_input"].reshape(-1), embedding_rows=rows)
        except Exception as e:
            for i in idxs:
                responses[i] = error_response(e, "decoder")
            return
        start = 0
        for i in idxs:
            entry, n = decodes[i][1], len(decodes[i][2])
            sl = slice(start, start + n)
            start += n
            try:
                multimask = logic.parse_multimask(input_array(requests[i], "multimask"))
                low, score = P.select_masks(low_res[sl], iou[sl], multimask)
                out = {"low_res_masks": low, "iou_predictions": score, "mask_logits": low,
                       "original_size": np.tile(np.asarray(entry.original_size, np.int32), (n, 1))}
                wanted = requests[i].requested_output_names() or list(out)
                responses[i] = response(self.model, {k: v for k, v in out.items() if k in wanted})
            except Exception as e:
                responses[i] = error_response(e, "decoder")


class CacheModel(_CacheOwner):
    """sam_embedding_cache (production variant): the embedding cache; for a decode request it
    hands the native decoder each prompt's embedding and its points in the resized frame."""

    model = wire.SAM_EMBEDDING_CACHE
    error_name = wire.SAM_EMBEDDING_CACHE.name

    def setup(self, params) -> None:
        self._init_cache(params)

    def _one(self, request):
        image_id = logic.single_image_id(input_array(request, "image_id"))
        answer = self._cache_request(request, image_id)
        if answer is not None:
            return answer
        entry, coords = self._decode_entry(request, image_id)
        p = len(coords)
        return response(self.model, {
            "point_coords": coords,
            "image_embeddings": np.broadcast_to(entry.embeddings, (p,) + entry.embeddings.shape),
            "original_size": np.tile(np.asarray(entry.original_size, np.int32), (p, 1))})


class MaskSelectModel(PythonModel):
    """sam_mask_select (production variant): the native decoder's 4 masks -> the ones SamPredictor
    returns (`processing.select_masks`)."""

    error_name = wire.SAM_MASK_SELECT.name

    def _one(self, request):
        low, iou = P.select_masks(input_array(request, "all_low_res_masks"), input_array(request, "all_iou_predictions"),
                                  logic.parse_multimask(input_array(request, "multimask")))
        return response(wire.SAM_MASK_SELECT, {"low_res_masks": low, "iou_predictions": iou, "mask_logits": low})


class MaskUpscaleModel(PythonModel):
    """sam_mask_upscale: logits [P,C,m,m] -> masks [P,C,H,W] at the original size, with
    Sam.postprocess_masks' values (`logic.upscaled_masks`, `samrt.upscale`)."""

    model = wire.SAM_MASK_UPSCALE
    error_name = wire.SAM_MASK_UPSCALE.name

    def setup(self, params) -> None:
        self.image_size = int(params["image_size"])

    def _masks(self, request) -> np.ndarray:
        size = input_array(request, "original_size").reshape(-1, 2)[0]
        original = (int(size[0]), int(size[1]))
        input_size = prompts.get_preprocess_shape(original[0], original[1], self.image_size)
        return logic.upscaled_masks(input_array(request, "mask_logits"), input_size, original, self.image_size)

    def _one(self, request):
        return response(self.model, {"masks": self._masks(request)})


class MaskRleModel(MaskUpscaleModel):
    """sam_mask_rle: logits [P,C,m,m] -> masks at the original size as COCO RLE JSON [P,C]
    (pycocotools). It upscales on its own: Triton runs it only when `masks_rle` is asked for."""

    model = wire.SAM_MASK_RLE
    error_name = wire.SAM_MASK_RLE.name

    def _one(self, request):
        return response(self.model, {"masks_rle": logic.masks_to_rle(self._masks(request))})


class SegmentModel(PythonModel):
    """sam_segment: one shot, image (or image_bytes) plus one prompt -> masks: encodes like
    sam_encode (in this process), then decodes through sam_decode. Inputs are checked here, so
    bad ones get INVALID_ARG (an error that comes back through BLS would arrive as INTERNAL)."""

    error_name = wire.SAM_SEGMENT.name

    def setup(self, params) -> None:
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.cache = cache_model(params)

    def _one(self, request):
        image = image_from_request(request, self.max_pixels, self.image_size, wire.SAM_SEGMENT.name)
        coords, labels = input_array(request, "point_coords"), input_array(request, "point_labels")
        if coords is None or coords.ndim != 2 or labels is None:
            raise InputError("sam_segment: expected point_coords [N,2] and point_labels [N], got "
                             f"{None if coords is None else list(coords.shape)} and "
                             f"{None if labels is None else list(labels.shape)}")
        prompts.complete_prompts(*prompts.check_points(coords[None], labels[None]))
        image_id = encode(image, self.image_size, self.cache)
        dec_in = {"image_id": np.array([[image_id.encode()]], dtype=object),
                  "point_coords": coords[None], "point_labels": labels[None]}
        for opt in ("mask_input", "multimask_output"):
            v = input_array(request, opt)
            if v is not None:
                dec_in[opt] = v[None]
        wanted = request.requested_output_names() or ["masks", "iou_predictions", "low_res_masks"]
        out = bls(wire.SAM_DECODE, dec_in, list(wanted))
        return response(wire.SAM_SEGMENT, {k: v[0] for k, v in out.items()})
