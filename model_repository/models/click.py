"""The click path: the steps of the `sam_decode` ensemble (rendered from `samrt.wire.click_path`)
and the one-shot `sam_segment`.

CPU variant: `sam_mask_decoder` checks and completes the prompts (SAM's rules, `logic.prepare_prompts`),
owns the embedding cache and runs the decoder (`samrt.engines.decoders`: the fast decoder by
default, whose per-image tensors are computed when an image is put in the cache and kept with its
embedding), Triton's dynamic batcher gathering prompts of all clients and images;
`sam_mask_upscale` and `sam_mask_rle` produce `masks` and `masks_rle` (Triton prunes them when a
request does not ask for those outputs). Production variant: `sam_prompt_prep` checks the prompts,
`sam_embedding_cache` owns the cache and hands the native `sam_prompt_decoder` each prompt's
embedding; `sam_mask_select` picks the masks SamPredictor returns.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

import numpy as np

from samrt import processing as P
from samrt import prompts, wire
from samrt.errors import InputError

from .. import logic
from .base import PythonModel, bls, decoder_engine, error_response, input_array, log, response
from .encode import cache_model, encode, image_from_request

__all__ = ["PromptPrepModel", "MaskDecoderModel", "CacheModel", "MaskSelectModel", "MaskUpscaleModel", "MaskRleModel",
           "SegmentModel"]


class _CacheOwner(PythonModel):
    """The embedding cache and its own requests, for the model that owns it (sam_mask_decoder or
    sam_embedding_cache). Requests carry Triton's batch dim (1 for these).

    put: image_id + image_embeddings + original_size + cache_key -> found; only the models of this
    server hold the key (`logic.check_cache_key`: a put without it is refused, INVALID_ARG), and a
    cached entry is never replaced by another embedding of the same image (`EmbeddingCache.put`).
    ask (only `found` and/or `original_size` requested): whether the id is cached and its size,
    without touching the LRU order. get (no prompt_coords): found, image_embeddings, original_size;
    an id it does not hold answers found false with zeros, not an error: Triton 2.51's BLS hands
    callers every error as INTERNAL, so callers raise NOT_FOUND."""

    model: wire.WireModel

    def _init_cache(self, params: Dict[str, str]) -> None:
        self.cache = logic.cache_from_params(params)  # memory, and a disk tier with cache_dir
        self.missing = np.zeros([1] + [int(d) for d in params["embedding_shape"].split(",")], np.float32)
        self.image_size = int(params["image_size"])
        self.cache_key = logic.internal_cache_key()  # no key in the environment: the model does not load

    def _cache_request(self, request, image_id: str):
        """The response to a put/ask/get request; None for a decode request."""
        emb = input_array(request, "image_embeddings")
        if emb is not None:
            logic.check_cache_key(input_array(request, "cache_key"), self.cache_key, self.model.name)
            checked = logic.cache_entry(emb, input_array(request, "original_size"), self.missing.shape[1:])
            state = self._image_state(checked.embeddings)
            kept = self._kept_embedding(state)  # a view into the state when it holds the embedding
            entry = logic.CacheEntry(checked.embeddings if kept is None else kept, checked.original_size, state)
            try:
                self.cache.put(image_id, entry)
            except ValueError as e:  # an embedding larger than the whole cache: the caller's request
                raise InputError(f"{self.model.name}: {e}") from None
            return response(self.model, {"found": np.array([[True]])})
        if input_array(request, "prompt_coords") is not None or input_array(request, "point_coords") is not None:
            return None
        wanted = request.requested_output_names()
        if wanted and set(wanted) <= {"found", "original_size"}:
            entry = self.cache.peek(image_id)
            return response(self.model, {"found": np.array([[entry is not None]]),
                                         "original_size": np.asarray([entry.original_size if entry else (0, 0)])})
        try:
            entry = self.cache.get(image_id)
        except logic.UnknownImageError:
            return response(self.model, {"found": np.array([[False]]), "image_embeddings": self.missing,
                                         "original_size": np.zeros((1, 2))})
        return response(self.model, {"found": np.array([[True]]), "image_embeddings": entry.embeddings[None],
                                     "original_size": np.asarray([entry.original_size])})

    def _image_state(self, embeddings: np.ndarray) -> Dict[str, np.ndarray]:
        """The decoder's per-image tensors for an embedding [C,E,E], kept with it (none here)."""
        return {}

    def _kept_embedding(self, state: Dict[str, np.ndarray]):
        return None

    def _decode_entry(self, request, image_id: str):
        """The cache entry a decode request names (UnknownImageError: NOT_FOUND) and its points in
        the encoder's resized frame."""
        entry = self.cache.get(image_id)
        coords, labels = input_array(request, "prompt_coords"), input_array(request, "prompt_labels")
        # the first place that knows the image's size: points far outside it are refused here
        prompts.check_points_in_image(coords, labels, entry.original_size)
        return entry, prompts.decoder_coords(coords, labels, entry.original_size, self.image_size)


class PromptPrepModel(PythonModel):
    """sam_prompt_prep (production variant), the click path's first step: prompts checked
    (INVALID_ARG naming what was received) and completed, `logic.prepare_prompts`."""

    error_name = wire.SAM_DECODE.name

    def setup(self, params) -> None:
        self.low_res_size = int(params["low_res_size"])

    def _one(self, request):
        return response(wire.SAM_PROMPT_PREP, logic.prepare_prompts(
            input_array(request, "point_coords"), input_array(request, "point_labels"),
            input_array(request, "mask_input"), input_array(request, "multimask_output"), self.low_res_size))


class MaskDecoderModel(_CacheOwner):
    """sam_mask_decoder (CPU variant): prompt checks, the embedding cache and the decoder in one
    process. Decode requests of different clients and images, batched by Triton over prompts, run
    through the decoder per image (prompts of one image and point count together), each image's
    embedding and per-image tensors read in place."""

    model = wire.SAM_MASK_DECODER
    error_name = wire.SAM_DECODE.name

    def setup(self, params) -> None:
        self._init_cache(params)
        self.decoder = decoder_engine(params)
        self.low_res_size = self.decoder.low_res_size
        try:  # compile (and check) the shapes of ordinary clicks now, not on the first user's click
            self.decoder.warm_up()
        except Exception as e:  # a warm-up only: the model serves anyway
            log.warning("sam_mask_decoder: warm-up decode failed: %s", e)

    def _image_state(self, embeddings: np.ndarray) -> Dict[str, np.ndarray]:
        return self.decoder.prepare_image(embeddings[None])

    def _kept_embedding(self, state: Dict[str, np.ndarray]):
        return self.decoder.embeddings_of(state)

    def _batch(self, requests):
        responses: List[object] = [None] * len(requests)
        jobs: Dict[int, tuple] = {}
        for i, request in enumerate(requests):
            try:
                image_id = logic.single_image_id(input_array(request, "image_id"))
                responses[i] = self._cache_request(request, image_id)
                if responses[i] is None:
                    prep = logic.prepare_prompts(
                        input_array(request, "point_coords"), input_array(request, "point_labels"),
                        input_array(request, "mask_input"), input_array(request, "multimask_output"), self.low_res_size,
                        zeros_for_missing_mask=False)
                    entry = self.cache.get(image_id)
                    # the first place that knows the image's size: points far outside it are refused here
                    prompts.check_points_in_image(prep["prompt_coords"], prep["prompt_labels"], entry.original_size)
                    coords = prompts.decoder_coords(prep["prompt_coords"], prep["prompt_labels"], entry.original_size,
                                                    self.image_size)
                    jobs[i] = (image_id, entry, coords, prep)
            except Exception as e:
                responses[i] = error_response(e, self.error_name)
        groups = defaultdict(list)  # one decoder run per image and point count
        for i, (image_id, _, coords, _) in jobs.items():
            groups[(image_id, coords.shape[1])].append(i)
        for idxs in groups.values():
            self._run_group(idxs, jobs, requests, responses)
        return responses

    def _run_group(self, idxs, jobs, requests, responses) -> None:
        entry = jobs[idxs[0]][1]
        preps = [jobs[i][3] for i in idxs]
        masks = None  # a mask tensor only when some prompt has a mask prompt (zeros for the others)
        if any(p["prompt_mask"] is not None for p in preps):
            m = self.low_res_size
            masks = np.concatenate([p["prompt_mask"] if p["prompt_mask"] is not None else
                                    np.zeros((len(p["prompt_labels"]), 1, m, m), np.float32) for p in preps])
        try:
            low_res, iou = self.decoder.decode(
                entry.embeddings[None], entry.image_state, np.concatenate([jobs[i][2] for i in idxs]),
                np.concatenate([p["prompt_labels"] for p in preps]), masks,
                np.concatenate([p["has_mask_input"] for p in preps]).reshape(-1))
        except Exception as e:
            for i in idxs:
                responses[i] = error_response(e, "decoder")
            return
        start = 0
        for i, prep in zip(idxs, preps):
            n = len(jobs[i][2])
            sl = slice(start, start + n)
            start += n
            try:
                low, score = P.select_masks(low_res[sl], iou[sl], bool(prep["multimask"].reshape(-1)[0]))
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
        # a repository rendered before low_res_size was passed here: SAM's low-res masks are a quarter of the input
        self.low_res_size = int(params.get("low_res_size", self.image_size // 4))
        self.cache = cache_model(params)

    def _one(self, request):
        image = image_from_request(request, self.max_pixels, self.image_size, wire.SAM_SEGMENT.name)
        coords, labels = input_array(request, "point_coords"), input_array(request, "point_labels")
        if coords is None or coords.ndim != 2 or labels is None:
            raise InputError("sam_segment: expected point_coords [N,2] and point_labels [N], got "
                             f"{None if coords is None else list(coords.shape)} and "
                             f"{None if labels is None else list(labels.shape)}")
        options = {opt: input_array(request, opt) for opt in ("mask_input", "multimask_output")}
        options = {opt: v[None] for opt, v in options.items() if v is not None}
        # every rule sam_decode's prompt step applies, here (the mask's shape and logit bound too)
        logic.prepare_prompts(coords[None], labels[None], options.get("mask_input"),
                              options.get("multimask_output"), self.low_res_size)
        prompts.check_points_in_image(coords, labels, image.shape[:2])
        image_id = encode(image, self.image_size, self.cache)
        dec_in = {"image_id": np.array([[image_id.encode()]], dtype=object),
                  "point_coords": coords[None], "point_labels": labels[None], **options}
        wanted = request.requested_output_names() or ["masks", "iou_predictions", "low_res_masks"]
        out = bls(wire.SAM_DECODE, dec_in, list(wanted))
        return response(wire.SAM_SEGMENT, {k: v[0] for k, v in out.items()})
