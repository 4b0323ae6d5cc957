"""The encode path: `sam_image_encoder` (the encoder engine, batched by Triton) and `sam_encode`
(an image or its encoded bytes -> image_id, embedded on a cache miss), with the helpers the
other paths use to embed an image and to read the cache through BLS."""

from __future__ import annotations

import collections
from typing import Dict, Optional, Sequence

import numpy as np

from samrt import imageio
from samrt import processing as P
from samrt import wire
from samrt.errors import InputError

from .. import logic
from .base import (BlsError, PythonModel, bls, engine_runner, error_response, input_array, log, lower_priority,
                   response)

__all__ = ["ImageEncoderModel", "EncodeModel", "encode", "cached", "image_from_request", "cache_model", "id_tensor",
           "prepare_click_path"]

ENCODER = "sam_image_encoder"  # a graph model: its tensors are the ONNX graph's (samrt.spec)


def image_from_request(request, max_pixels: int, image_size: int, model: str) -> np.ndarray:
    """`image` (UINT8 HxWx3) or `image_bytes` (an encoded image, decoded by samrt.imageio: EXIF
    orientation applied, modes as its MODE_DECISIONS), checked against the pixel limit and for a
    shape whose resized side would be 0."""
    image, data = input_array(request, "image"), input_array(request, "image_bytes")
    if (image is None) == (data is None):
        raise InputError(f"{model}: got " + ("both image and image_bytes" if image is not None else
                         "neither image nor image_bytes") + ", expected exactly one of them")
    if image is None:
        image = imageio.decode_image_bytes(bytes(np.asarray(data).reshape(-1)[0]), max_pixels)
    image = P.check_image(image, max_pixels)
    h, w = image.shape[:2]
    imageio.check_resized_shape((h, w), P.get_preprocess_shape(h, w, image_size), image_size, model)
    return image


def id_tensor(image_id: str) -> np.ndarray:
    return np.array([image_id.encode()], dtype=object)


def cache_model(params: Dict[str, str]) -> wire.WireModel:
    """The model that owns the embedding cache in this repository (see samrt.model_repository.models)."""
    return wire.get_model(params.get("cache_model", wire.SAM_MASK_DECODER.name))


def cached(cache: wire.WireModel, image_id: str) -> Dict[str, np.ndarray]:
    """The cache's entry for `image_id`: image_embeddings [1,D,E,E], original_size [1,2];
    UnknownImageError (NOT_FOUND) when it holds none."""
    got = bls(cache, {"image_id": id_tensor(image_id)[None]}, ["found", "image_embeddings", "original_size"])
    if not got["found"].reshape(-1)[0]:
        raise logic.UnknownImageError(image_id)
    return got


def encode(image: np.ndarray, image_size: int, cache: wire.WireModel, low_res_size: Optional[int] = None) -> str:
    """Embed `image` unless the cache holds it already with the image's size; its id either way.
    An entry of another size is damaged (one id, one shape): it is embedded again and replaced.
    The put carries the server's internal key (`logic.internal_cache_key`). With `low_res_size`,
    the click path is prepared for a newly embedded image's size unless this process prepared
    that size recently (`prepare_click_path`)."""
    image_id = wire.image_id_of(image)
    key = id_tensor(image_id)[None]
    held = bls(cache, {"image_id": key}, ["found", "original_size"])
    if not held["found"].reshape(-1)[0] or tuple(held["original_size"].reshape(-1)) != image.shape[:2]:
        x, _ = P.preprocess_image(image, image_size)
        emb = bls(ENCODER, {"image": x}, ["image_embeddings"])["image_embeddings"]
        bls(cache, {"image_id": key, "image_embeddings": emb, "original_size": np.asarray([image.shape[:2]]),
                    "cache_key": id_tensor(logic.internal_cache_key())[None]}, ["found"])
        if low_res_size and _PREPARED.first_time(image.shape[:2]):
            prepare_click_path(image.shape[:2], low_res_size)
    return image_id


# The steps that turn logits into masks build weights per image size on first use (samrt.upscale's
# plans: 1-10 ms, more for large images). One request of zeros at encode time builds them in
# those processes, so the first click on a new image does not pay for them.
PREPARED_STEPS = (wire.SAM_MASK_UPSCALE, wire.SAM_MASK_RLE)


class _RecentSizes:
    """The last `n` image sizes this process prepared the click path for: a new image of one of
    them needs no preparing (its plans are still in samrt.upscale's cache, which holds 64 axis
    plans: 32 sizes), which saves two BLS calls (~2 ms) per new image."""

    def __init__(self, n: int = 16) -> None:
        self.n, self.sizes = n, collections.OrderedDict()

    def first_time(self, size: Sequence[int]) -> bool:
        key = tuple(int(v) for v in size)
        if key in self.sizes:
            self.sizes.move_to_end(key)
            return False
        self.sizes[key] = None
        if len(self.sizes) > self.n:
            self.sizes.popitem(last=False)
        return True


_PREPARED = _RecentSizes()


def prepare_click_path(original_size: Sequence[int], low_res_size: int) -> None:
    """Send each of PREPARED_STEPS one prompt of zero logits at `original_size` (H, W). Best
    effort: a failure is logged, the encode goes on."""
    feed = {"mask_logits": np.zeros((1, 1, low_res_size, low_res_size), np.float32),
            "original_size": np.asarray([original_size], np.int32)}
    for model in PREPARED_STEPS:
        try:
            bls(model, feed, [model.output_names[0]])
        except BlsError as e:
            log.warning("%s: preparing the click path for size %s failed: %s", model.name, tuple(original_size), e)


class ImageEncoderModel(PythonModel):
    """sam_image_encoder: the encoder engine (ONNX Runtime or OpenVINO), batched by Triton."""

    error_name = ENCODER

    def setup(self, params) -> None:
        lower_priority(params)
        # On a CPU a batch runs one image at a time: no throughput is lost (the cores are busy with
        # one image already), the activations held are one image's, and OpenVINO serves batch 1
        # from one static compile (~20% faster than its dynamic model for vit_b here), checked now;
        # the dynamic model is never compiled (one copy of the weights in memory, not two).
        self.one_at_a_time = params.get("device", "cpu") == "cpu"
        # ONNX Runtime's memory arena off: a run's activations go back after it (docs/memory.md)
        self.runner = engine_runner(params, static_shapes=1, dynamic=not self.one_at_a_time, memory_arena=False)
        side = int(self.runner.input_shapes["image"][-1])
        try:
            self.runner.run({"image": np.zeros((1, 3, side, side), np.float32)})
        except Exception as e:  # a warm-up only: the model serves anyway
            log.warning("sam_image_encoder: warm-up failed: %s", e)

    def _batch(self, requests):
        images = [input_array(r, "image") for r in requests]
        try:
            batch = np.concatenate(images, axis=0)
            if self.one_at_a_time:
                out = np.concatenate([self.runner.run({"image": batch[i:i + 1]})["image_embeddings"]
                                      for i in range(len(batch))])
            else:
                out = self.runner.run({"image": batch})["image_embeddings"]
        except Exception as e:  # one bad tensor must not take the batch down: one by one, each its own answer
            return [error_response(e, self.error_name)] if len(requests) == 1 else super()._batch(requests)
        sizes = np.cumsum([0] + [len(i) for i in images])
        return [response(None, {"image_embeddings": out[a:b]}) for a, b in zip(sizes[:-1], sizes[1:])]

    def _one(self, request):
        out = self.runner.run({"image": input_array(request, "image")})["image_embeddings"]
        return response(None, {"image_embeddings": out})


class EncodeModel(PythonModel):
    """sam_encode: image (UINT8 HxWx3) or image_bytes -> image_id, original_size; embeds on a miss."""

    error_name = wire.SAM_ENCODE.name

    def setup(self, params) -> None:
        lower_priority(params)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.cache = cache_model(params)
        self.low_res_size = int(params.get("low_res_size", 0))

    def _one(self, request):
        image = image_from_request(request, self.max_pixels, self.image_size, wire.SAM_ENCODE.name)
        image_id = encode(image, self.image_size, self.cache, self.low_res_size)
        return response(wire.SAM_ENCODE, {"image_id": id_tensor(image_id), "original_size": np.asarray(image.shape[:2])})
