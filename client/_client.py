"""SamClient: samrt's wire API (`samrt.wire`) over Triton's gRPC or HTTP client (tritonclient).

Inputs are checked and packed from the wire declaration before anything is sent
(`client._requests`); each request goes to its image's replica (`client._routing`: one URL is a
ring of one) through that replica's endpoint (`client._endpoints`: Triton's error codes as typed
errors, lost connections retried with exponential backoff for idempotent requests, timeouts
never, shared memory).

Threads: one SamClient may be shared by any number of threads; each caller gets its own answer
(gRPC: tritonclient's client is thread-safe; HTTP: one tritonclient client per thread; shared
memory: a region per request in flight, `client._shm`).
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from samrt import wire
from samrt.amg import AmgOptions
from samrt.errors import (AccessDeniedError, ImageNotCachedError, InvalidRequestError, ServerError, ServerTimeoutError,
                          ServerUnavailableError)

from ._endpoints import Endpoint, admin_key_or_env, protocol_module
from ._requests import (DEFAULT_OUTPUTS, MAX_RESPONSE_BYTES, EncodeResult, Prompts, _image_id, _outputs, amg_inputs,
                        answer_size, cache_get_inputs, check_cached, decode_inputs, decode_output_specs, encode_inputs, encode_priority,
                        join_answers, masks_here, pack_decode, parse_amg, parse_encode, parse_model_info, parse_size,
                        prompts_per_request, segment_inputs, split_prompts, wire_outputs)
from ._routing import DOWN_FOR, Ring, call, merge_statistics, routing_id, split_urls

__all__ = [
    "SamClient",
    "EncodeResult",
    "ServerError",
    "InvalidRequestError",
    "ImageNotCachedError",
    "ServerUnavailableError",
    "ServerTimeoutError",
    "AccessDeniedError",
    "DEFAULT_OUTPUTS",
    # the pure request functions, for code that imported them from here
    "decode_inputs",
    "encode_inputs",
    "segment_inputs",
    "parse_model_info",
    "prompts_per_request",
]


class SamClient:
    """Blocking client, safe to share between threads. `url` is host:port of the gRPC (default
    8001) or HTTP (8000) endpoint, or several replicas (a list, or one comma-separated string):
    then each image goes to one replica by a consistent hash of its image_id, and a replica that
    stops answering is left out for `down_for` seconds (`client._routing`)."""

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "localhost:8001",
        protocol: str = "grpc",
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        shared_memory: bool = False,
        down_for: float = DOWN_FOR,
        admin_key: Optional[str] = None,
    ) -> None:
        """`timeout`: seconds for any one call (gRPC: its deadline; HTTP: connecting, and each
        wait for the server's bytes); `ServerTimeoutError` when it passes, never retried.
        `shared_memory`: pass numeric tensors through system shared memory (server on this host);
        regions are unregistered and unlinked by `close()` or at exit. A samrt server registers
        shared memory only for its admin key: `admin_key` (None: the SAMRT_ADMIN_KEY environment
        variable; `AccessDeniedError` without it). Nothing else the SDK does needs it.
        `retries` and `backoff` apply per replica, before it is marked down."""
        protocol_module(protocol)  # a bad protocol fails here, before any connection
        urls = split_urls(url, protocol)
        self.url, self.protocol = ",".join(urls), protocol
        self.shared_memory = shared_memory
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_response_bytes = MAX_RESPONSE_BYTES  # decode() splits requests whose answer would be larger
        self.ring = Ring(urls, down_for)
        # one endpoint per replica (one for one URL), in the ring's order
        key = admin_key_or_env(admin_key) if shared_memory else None  # sent only where it is needed
        self.replicas = [Endpoint(u, protocol, timeout, retries, backoff, shared_memory, key) for u in urls]
        self._info: Optional[dict] = None
        self._sizes: Dict[str, Tuple[int, int]] = {}  # image_id -> original size, for output buffers
        self._aliases: Dict[str, str] = {}  # server's image_id -> the id it was routed by, when they differ

    # -- transport -------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        inputs: Dict[str, Tuple[np.ndarray, str]],
        outputs: Sequence[str],
        output_specs: Optional[Dict[str, Tuple[np.dtype, Tuple[int, ...]]]] = None,
        idempotent: bool = True,
        headers: Optional[Dict[str, str]] = None,
    ) -> Dict[str, np.ndarray]:
        """One request: {name: (array, triton dtype)} in, {name: array} out. With shared memory,
        numeric inputs and the outputs listed in `output_specs` (dtype, shape) go through it.
        `idempotent` False: never retried (an expensive job the server may still be computing).
        Several replicas: routed by the `x-samrt-image-id` header in `headers` (none: any replica)."""
        key = (headers or {}).get(wire.IMAGE_ID_HEADER, "")
        return self._infer(key, model, inputs, outputs, output_specs, idempotent, headers)

    def _infer(self, key: str, model: str, inputs, outputs, output_specs=None, idempotent: bool = True,
               headers: Optional[Dict[str, str]] = None, priority: int = 0) -> Dict[str, np.ndarray]:
        return call(self.ring, self.replicas, key, lambda i, replica: replica.infer(
            model, inputs, list(outputs), output_specs, idempotent, headers, priority))

    def is_ready(self) -> bool:
        """Whether the server answers; several replicas: whether at least one does."""
        return any(replica.is_ready() for replica in self.replicas)

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            time.sleep(0.2)
        raise ServerUnavailableError(f"{self.protocol}://{self.url}: not ready after {timeout:.0f} s")

    def statistics(self, model: str) -> dict:
        """Triton's statistics of `model` as a dict, counters as ints for both protocols. Several
        replicas: summed over those that answer (`replica_statistics` gives each one's)."""
        return merge_statistics([s for s in self.replica_statistics(model).values() if s is not None])

    def replica_statistics(self, model: str) -> Dict[str, Optional[dict]]:
        """{replica url: Triton's statistics of `model`, or None when it does not answer}."""
        out: Dict[str, Optional[dict]] = {}
        for replica in self.replicas:
            try:
                out[replica.url] = replica.statistics(model)
            except ServerUnavailableError:
                out[replica.url] = None
        return out

    def model_info(self) -> dict:
        """What the served model expects (image_size, low_res_size, max_prompts) and, when the encoder
        is an optimized engine, its accuracy report against fp32 (encoder_engine). Several
        replicas (which serve the same model): the first that answers."""
        if self._info is None:
            self._info = call(self.ring, self.replicas, "", lambda i, replica: parse_model_info(
                replica.model_config(wire.SAM_DECODE.name), replica.model_config("sam_image_encoder")))
        return self._info

    def close(self) -> None:
        """Closes the connections and unregisters and unlinks the shared-memory regions."""
        for replica in self.replicas:
            replica.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the wire API ----------------------------------------------------------------------
    def encode(self, image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None,
               background: bool = False) -> EncodeResult:
        """Embed an image on the server (cached by pixel hash); returns its id and size. The id
        is computed here too (`samrt.wire.image_id_of`), sent as the `x-samrt-image-id` header,
        and with several replicas picks the replica.

        `background=True` marks work nobody waits for yet (prefetch, pre-encoding a dataset): it
        is sent with Triton's background priority (`samrt.wire.BACKGROUND_PRIORITY`), so an
        ordinary (foreground) encode is served before the background ones already queued."""
        inputs = encode_inputs(image, image_bytes)
        key = routing_id(image, image_bytes)
        out = self._infer(key or "", wire.SAM_ENCODE.name, inputs, ["image_id", "original_size"],
                          headers={wire.IMAGE_ID_HEADER: key} if key else None,
                          priority=encode_priority(background))
        result = parse_encode(out)
        if key and result.image_id != key:  # the server decoded the bytes otherwise: keep them together
            self._aliases[result.image_id] = key
        self._sizes[result.image_id] = result.original_size
        return result

    def decode(
        self,
        image_id: str,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
    ) -> Dict[str, np.ndarray]:
        """P prompts for one encoded image. Coordinates in original-image pixels; labels 1 fg,
        0 bg, 2/3 box corners, -1 padding; checked here as the server checks them (InputError).
        Returns arrays with the prompt as leading dim. Stateless: any thread may click any image
        it holds the id of.

        Several replicas: goes to the image's replica; if that one is down, to the next, which
        answers ImageNotCachedError (encode again there; TritonSamPredictor does).

        `masks` are made here from the low-res logits the server sends (`wire_outputs`: the same
        masks as the server's upscaling step, fewer bytes on the wire); `SamClient.infer` asks the
        server for its own.

        Any P: above the server's prompt limit (`model_info()["max_prompts"]`), or when the answer
        would exceed `max_response_bytes` (gRPC's 2 GiB message; `low_res_masks` is
        P x C x 256 x 256 x 4 bytes), the prompts go in several requests whose answers are joined in order."""
        image_id, outputs = _image_id(image_id), _outputs(outputs)
        low_res = self.model_info()["low_res_size"] if mask_input is not None else None
        return self._decode_prompts(image_id, Prompts.check(point_coords, point_labels, mask_input, multimask_output,
                                                           low_res), outputs)

    def _decode_prompts(self, image_id: str, prompts: Prompts, outputs: Sequence[str] = DEFAULT_OUTPUTS):
        """`decode` for prompts checked already (`client.Prompts`: TritonSamPredictor's)."""
        image_id, outputs = _image_id(image_id), _outputs(outputs)
        info = self.model_info()
        c = 3 if prompts.multimask_output else 1
        original = self.image_size(image_id)  # asked once per image not encoded here
        sent = wire_outputs(outputs)  # masks are made here from the low-res logits (wire_outputs)
        size = answer_size(prompts, original, sent)
        chunk = prompts_per_request(c, sent, info["max_prompts"], info["low_res_size"], size, self.max_response_bytes)
        key, headers = self._aliases.get(image_id, image_id), {wire.IMAGE_ID_HEADER: image_id}
        parts = []
        for part, n in split_prompts(pack_decode(image_id, prompts), chunk):
            specs = None
            if self.shared_memory:
                specs = decode_output_specs(n, c, original, info["low_res_size"])
            parts.append(self._infer(key, wire.SAM_DECODE.name, part, sent, specs, headers=headers))
        answer = parts[0] if len(parts) == 1 else join_answers(parts, sent)
        return masks_here(answer, outputs, original, info["image_size"])

    def image_size(self, image_id: str) -> Tuple[int, int]:
        """(H, W) of an image the server holds; ImageNotCachedError when it holds none by that id."""
        if image_id not in self._sizes:
            self._sizes[image_id] = parse_size(self._cache_get(image_id, ["found", "original_size"]))
        return self._sizes[image_id]

    def image_embedding(self, image_id: str) -> np.ndarray:
        """The server's embedding of an image: float32 [1,D,E,E] (SamPredictor.get_image_embedding's
        shape; [1,256,64,64] for the official models). ImageNotCachedError when it holds none."""
        out = self._cache_get(image_id, ["found", "image_embeddings", "original_size"])
        self._sizes[image_id] = parse_size(out)
        return out["image_embeddings"]

    def _cache_get(self, image_id: str, outputs) -> Dict[str, np.ndarray]:
        out = self._infer(self._aliases.get(image_id, image_id), self.model_info()["cache_model"],
                          cache_get_inputs(image_id), outputs, headers={wire.IMAGE_ID_HEADER: image_id})
        return check_cached(image_id, out)

    def segment(
        self,
        image: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        multimask_output: bool = True,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
    ) -> Dict[str, np.ndarray]:
        """One shot (sam_segment): image plus one prompt -> masks [C,H,W], scores [C], logits."""
        inputs = segment_inputs(image, point_coords, point_labels, multimask_output)
        key = routing_id(image)
        return self._infer(key, wire.SAM_SEGMENT.name, inputs, outputs, headers={wire.IMAGE_ID_HEADER: key})

    def amg(self, image: np.ndarray, options: Union[AmgOptions, dict, None] = None) -> list:
        """Automatic masks on the server (`sam_amg`): SamAutomaticMaskGenerator's records with COCO
        RLE segmentations; never retried (an expensive job the server may still be computing).
        `options`: SamAutomaticMaskGenerator's parameters by name (numbers of any kind, numpy
        included; None: its defaults), checked here. `TritonSamAutomaticMaskGenerator` wraps it."""
        inputs = amg_inputs(image, options)
        key = routing_id(image)
        return parse_amg(self._infer(key, wire.SAM_AMG.name, inputs, ["records"], idempotent=False,
                                     headers={wire.IMAGE_ID_HEADER: key}))

