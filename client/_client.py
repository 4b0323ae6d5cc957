"""SamClient: samrt's wire API (`samrt.wire`) over Triton's gRPC or HTTP client (tritonclient).

Inputs are checked and packed from the wire declaration before anything is sent; Triton's error
codes become typed errors (`samrt.errors`); lost connections are retried with exponential
backoff for idempotent requests (`client._transport`), timeouts never.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from samrt import wire
from samrt.errors import (ImageNotCachedError, InputError, InvalidRequestError, ServerError, ServerTimeoutError,
                          ServerUnavailableError)

from ._routing import DOWN_FOR, Ring, call, merge_statistics, routing_id, split_urls
from ._transport import TRANSPORT_EXCEPTIONS, Retry

__all__ = [
    "SamClient",
    "EncodeResult",
    "ServerError",
    "InvalidRequestError",
    "ImageNotCachedError",
    "ServerUnavailableError",
    "ServerTimeoutError",
    "DEFAULT_OUTPUTS",
]

DEFAULT_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
_ALL_OUTPUTS = wire.SAM_DECODE.output_names
# gRPC refuses messages of 2 GiB and more; an answer is kept below this, less room for framing.
MAX_RESPONSE_BYTES = (2 << 30) - (16 << 20)


@dataclass(frozen=True)
class EncodeResult:
    image_id: str
    original_size: Tuple[int, int]


def _protocol_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as mod  # tritonclient: the client extra
    elif protocol == "http":
        import tritonclient.http as mod  # tritonclient: the client extra
    else:
        raise ValueError(f"protocol: got {protocol!r}, expected 'grpc' or 'http'")
    return mod


def _ints(obj):
    """gRPC's JSON writes int64 counters as strings: turn them back into ints."""
    if isinstance(obj, dict):
        return {k: _ints(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_ints(v) for v in obj]
    return int(obj) if isinstance(obj, str) and obj.isdigit() else obj


def _not_found(model: str):
    """What NOT_FOUND means in an answer of `model`: an image the cache does not hold, for the
    models that look images up by id; anything else (an unknown model) stays a ServerError."""
    return ImageNotCachedError if model == wire.SAM_DECODE.name else ServerError


def check_prompts(point_coords, point_labels, mask_input, multimask_output,
                  low_res_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Prompts -> wire arrays with the prompt as leading dim ([N,2] is one prompt): shapes and
    integer labels are checked here (`mask_input` against the server's `low_res_size` m when
    given); the values (labels, finiteness, padding) by the server with `samrt.prompts`, which
    answers INVALID_ARG."""
    pc = np.asarray(point_coords, dtype=np.float32)
    if pc.ndim == 2:
        pc = pc[None]
    pl = np.asarray(point_labels)
    if pl.ndim == 1:
        pl = pl[None]
    if pc.ndim != 3 or pc.shape[-1] != 2:
        raise InputError(f"point_coords: got shape {list(pc.shape)}, expected [N,2] or [P,N,2]")
    if pl.shape != pc.shape[:2]:
        raise InputError(f"point_labels: got shape {list(pl.shape)}, expected {list(pc.shape[:2])}")
    if pc.shape[0] == 0 or pc.shape[1] == 0:
        raise InputError(f"point_coords: got shape {list(pc.shape)} (no prompts or no points), expected "
                         "at least one prompt of at least one point")
    if not np.issubdtype(pl.dtype, np.integer) and not np.all(np.equal(np.mod(pl, 1), 0)):
        raise InputError(f"point_labels: got non-integer values of dtype {pl.dtype}, expected integers")
    arrays = {"point_coords": pc, "point_labels": pl}
    if mask_input is not None:
        m = np.asarray(mask_input, dtype=np.float32)
        if m.ndim == 3:
            m = m[None]
        side = low_res_size or "m"
        if (m.ndim != 4 or m.shape[0] != pc.shape[0] or m.shape[1] != 1
                or (low_res_size and m.shape[2:] != (low_res_size, low_res_size))):
            raise InputError(f"mask_input: got shape {list(np.shape(mask_input))}, expected [1,{side},{side}] or "
                             f"[P,1,{side},{side}] with P = {pc.shape[0]} (the low_res_masks of an earlier answer)")
        arrays["mask_input"] = m
    arrays["multimask_output"] = np.full((pc.shape[0], 1), bool(multimask_output))
    return arrays


class SamClient:
    """Blocking client. `url` is host:port of the gRPC (default 8001) or HTTP (8000) endpoint, or
    several replicas (a list, or one comma-separated string): then each image goes to one replica
    by a consistent hash of its image_id, and a replica that stops answering is left out for
    `down_for` seconds (`client._routing`)."""

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "localhost:8001",
        protocol: str = "grpc",
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        shared_memory: bool = False,
        down_for: float = DOWN_FOR,
    ) -> None:
        """`shared_memory`: pass numeric tensors through system shared memory (server on this host).
        `retries` and `backoff` apply per replica, before it is marked down."""
        urls = split_urls(url)
        self.url, self.protocol = ",".join(urls), protocol
        self.shared_memory = shared_memory
        self._shm = None  # (handle, name, size) of this client's region
        self._sizes: Dict[str, Tuple[int, int]] = {}  # image_id -> original size, for output buffers
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_response_bytes = MAX_RESPONSE_BYTES  # decode() splits requests whose answer would be larger
        self._mod = _protocol_module(protocol)
        # Several replicas: one single-URL client each, routed by image_id (client._routing).
        self.ring: Optional[Ring] = None
        self.replicas: Sequence["SamClient"] = ()
        self._aliases: Dict[str, str] = {}  # server's image_id -> the id it was routed by, when they differ
        if len(urls) > 1:
            self.ring = Ring(urls, down_for)
            self.replicas = [SamClient(u, protocol, timeout, retries, backoff, shared_memory) for u in urls]
            self._client = None
            return
        if protocol == "http":
            self._client = self._mod.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self._client = self._mod.InferenceServerClient(url)

    # -- transport -------------------------------------------------------------------------
    def _input(self, name: str, array: np.ndarray, dtype: str):
        t = self._mod.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    def _call(self, fn, *args, idempotent: bool = True, not_found=ServerError, **kwargs):
        """fn(*args, **kwargs) with the shared retry policy (client._transport.Retry)."""
        retry = Retry(self.retries, self.backoff, f"{self.protocol}://{self.url}", idempotent, not_found)
        while True:
            try:
                return fn(*args, **kwargs)
            except TRANSPORT_EXCEPTIONS as e:
                time.sleep(retry.failed(e))

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
        if self.ring is not None:
            key = (headers or {}).get(wire.IMAGE_ID_HEADER, "")
            return call(self.ring, self.replicas, key,
                        lambda i, c: c.infer(model, inputs, outputs, output_specs, idempotent, headers))
        use_shm = self.shared_memory
        placed: Dict[str, Tuple[int, int]] = {}
        if use_shm:
            offset = 0
            for name, (arr, dtype) in inputs.items():
                if dtype != "BYTES":
                    placed[name] = (offset, arr.nbytes)
                    offset += -(-arr.nbytes // 64) * 64
            for name, (dt, shape) in (output_specs or {}).items():
                if name in outputs:
                    n = int(np.prod(shape)) * np.dtype(dt).itemsize
                    placed[name] = (offset, n)
                    offset += -(-n // 64) * 64
            self._ensure_region(offset)
            from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

            for name, (arr, dtype) in inputs.items():
                if name in placed:
                    shm.set_shared_memory_region(self._shm[0], [np.ascontiguousarray(arr)], offset=placed[name][0])

        def send():
            ins, outs = [], []
            for k, (a, d) in inputs.items():
                t = self._mod.InferInput(k, list(a.shape), d)
                if k in placed:
                    t.set_shared_memory(self._shm[1], placed[k][1], offset=placed[k][0])
                else:
                    t.set_data_from_numpy(a)
                ins.append(t)
            for o in outputs:
                r = self._mod.InferRequestedOutput(o)
                if o in placed:
                    r.set_shared_memory(self._shm[1], placed[o][1], offset=placed[o][0])
                outs.append(r)
            if self.protocol == "grpc":
                return self._client.infer(model, ins, outputs=outs, client_timeout=self.timeout, headers=headers)
            return self._client.infer(model, ins, outputs=outs, headers=headers)

        result = self._call(send, idempotent=idempotent, not_found=_not_found(model))
        out = {}
        for o in outputs:
            if o in placed:
                from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

                dt, shape = output_specs[o]
                out[o] = shm.get_contents_as_numpy(self._shm[0], np.dtype(dt), shape, offset=placed[o][0]).copy()
            else:
                out[o] = result.as_numpy(o)
        return out

    def _ensure_region(self, nbytes: int) -> None:
        if self._shm is not None and self._shm[2] >= nbytes:
            return
        from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

        self._release_region()
        size = max(nbytes, 1 << 20) * 2
        name = f"samrt_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        handle = shm.create_shared_memory_region(name, "/" + name, size)
        self._call(self._client.register_system_shared_memory, name, "/" + name, size)
        self._shm = (handle, name, size)

    def _release_region(self) -> None:
        if self._shm is None:
            return
        from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

        handle, name, _ = self._shm
        self._shm = None
        try:
            self._client.unregister_system_shared_memory(name)
        except Exception:
            pass
        shm.destroy_shared_memory_region(handle)

    def is_ready(self) -> bool:
        """Whether the server answers; several replicas: whether at least one does."""
        if self.ring is not None:
            return any(c.is_ready() for c in self.replicas)
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

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
        if self.ring is not None:
            return merge_statistics([s for s in self.replica_statistics(model).values() if s is not None])
        if self.protocol == "grpc":
            stats = self._call(self._client.get_inference_statistics, model, as_json=True)
        else:
            stats = self._call(self._client.get_inference_statistics, model)
        return _ints(stats["model_stats"][0])

    def replica_statistics(self, model: str) -> Dict[str, Optional[dict]]:
        """{replica url: Triton's statistics of `model`, or None when it does not answer}."""
        if self.ring is None:
            return {self.url: self.statistics(model)}
        out: Dict[str, Optional[dict]] = {}
        for url, c in zip(self.ring.urls, self.replicas):
            try:
                out[url] = c.statistics(model)
            except ServerUnavailableError:
                out[url] = None
        return out

    def model_info(self) -> dict:
        """What the served model expects (image_size, low_res_size, max_prompts) and, when the encoder
        is an optimized engine, its accuracy report against fp32 (encoder_engine). Several
        replicas (which serve the same model): the first that answers."""
        if self.ring is not None:
            return call(self.ring, self.replicas, "", lambda i, c: c.model_info())
        if getattr(self, "_info", None) is None:
            if self.protocol == "grpc":
                cfg = self._call(self._client.get_model_config, "sam_decode", as_json=True)["config"]
            else:
                cfg = self._call(self._client.get_model_config, "sam_decode")
            if self.protocol == "grpc":
                enc = self._call(self._client.get_model_config, "sam_image_encoder", as_json=True)["config"]
            else:
                enc = self._call(self._client.get_model_config, "sam_image_encoder")
            self._info = parse_model_info(cfg, enc)
        return self._info

    def close(self) -> None:
        for c in self.replicas:
            c.close()
        if self._client is None:
            return
        self._release_region()
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the wire API ----------------------------------------------------------------------
    def encode(self, image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None) -> EncodeResult:
        """Embed an image on the server (cached by pixel hash); returns its id and size. The id
        is computed here too (`samrt.wire.image_id_of`), sent as the `x-samrt-image-id` header,
        and with several replicas picks the replica."""
        inputs = encode_inputs(image, image_bytes)
        key = routing_id(image, image_bytes)
        if self.ring is None:
            return self._encode(inputs, key)
        result = call(self.ring, self.replicas, key or "", lambda i, c: c._encode(inputs, key))
        if key and result.image_id != key:  # the server decoded the bytes otherwise: keep them together
            self._aliases[result.image_id] = key
        return result

    def _encode(self, inputs, key: Optional[str]) -> EncodeResult:
        headers = {wire.IMAGE_ID_HEADER: key} if key else None
        result = parse_encode(self.infer("sam_encode", inputs, ["image_id", "original_size"], headers=headers))
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
        0 bg, 2/3 box corners, -1 padding. Returns arrays with the prompt as leading dim.

        Several replicas: goes to the image's replica; if that one is down, to the next, which
        answers ImageNotCachedError (encode again there; TritonSamPredictor does).

        Any P: above the server's prompt limit (`model_info()["max_prompts"]`), or when the answer
        would exceed `max_response_bytes` (gRPC's 2 GiB message; `masks` alone is P x C x H x W
        bytes), the prompts go in several requests whose answers are joined in order."""
        image_id = getattr(image_id, "image_id", image_id)  # an EncodeResult stands for its id
        if self.ring is not None:
            return call(self.ring, self.replicas, self._aliases.get(image_id, image_id),
                        lambda i, c: c.decode(image_id, point_coords, point_labels, mask_input, multimask_output,
                                              outputs))
        low_res = self.model_info()["low_res_size"] if mask_input is not None else None
        inputs = decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs, low_res)
        p, c = inputs["point_coords"][0].shape[0], 3 if multimask_output else 1
        chunk = self._prompts_per_request(image_id, c, outputs)
        if p <= chunk:
            return self._decode_one(image_id, inputs, p, c, outputs)
        return join_answers([self._decode_one(image_id, part, n, c, outputs)
                             for part, n in split_prompts(inputs, chunk)], outputs)

    def _decode_one(self, image_id, inputs, p: int, c: int, outputs) -> Dict[str, np.ndarray]:
        specs = None
        if self.shared_memory and image_id in self._sizes:
            m = self.model_info()["low_res_size"]
            specs = {"masks": (np.bool_, (p, c) + self._sizes[image_id]), "iou_predictions": (np.float32, (p, c)),
                     "low_res_masks": (np.float32, (p, c, m, m))}
        return self.infer("sam_decode", inputs, list(outputs), specs, headers={wire.IMAGE_ID_HEADER: image_id})

    def _prompts_per_request(self, image_id: str, c: int, outputs: Sequence[str]) -> int:
        info = self.model_info()
        size = self.image_size(image_id) if {"masks", "masks_rle"} & set(outputs) else (0, 0)
        return prompts_per_request(c, outputs, info["max_prompts"], info["low_res_size"], size, self.max_response_bytes)

    def image_size(self, image_id: str) -> Tuple[int, int]:
        """(H, W) of an image the server holds; ImageNotCachedError when it holds none by that id."""
        if image_id not in self._sizes:
            out = self._cache_get(image_id, ["found", "original_size"])
            self._sizes[image_id] = tuple(int(v) for v in out["original_size"].reshape(-1))
        return self._sizes[image_id]

    def image_embedding(self, image_id: str) -> np.ndarray:
        """The server's embedding of an image: float32 [1,D,E,E] (SamPredictor.get_image_embedding's
        shape; [1,256,64,64] for the official models). ImageNotCachedError when it holds none."""
        out = self._cache_get(image_id, ["found", "image_embeddings", "original_size"])
        self._sizes[image_id] = tuple(int(v) for v in out["original_size"].reshape(-1))
        return out["image_embeddings"]

    def _cache_get(self, image_id: str, outputs) -> Dict[str, np.ndarray]:
        out = self.infer(self.model_info()["cache_model"], cache_get_inputs(image_id), outputs,
                         headers={wire.IMAGE_ID_HEADER: image_id})
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
        return self.infer("sam_segment", inputs, list(outputs), headers={wire.IMAGE_ID_HEADER: routing_id(image)})


def parse_model_info(decode_config: dict, encoder_config: dict) -> dict:
    """model_info() from the configs of sam_decode and sam_image_encoder (ModelConfig as JSON)."""
    dims = {i["name"]: i["dims"] for i in decode_config["input"]}
    report = encoder_config.get("parameters", {}).get("engine_report", {}).get("string_value")
    return {
        "image_size": int(decode_config["parameters"]["image_size"]["string_value"]),
        "low_res_size": int(dims["mask_input"][-1]),
        "max_prompts": int(decode_config.get("max_batch_size", 0)),
        # the model that owns the embedding cache (samrt.model_repository.models)
        "cache_model": decode_config["parameters"].get("cache_model", {}).get("string_value", "sam_embedding_cache"),
        "encoder_engine": json.loads(report) if report else None,
    }


def prompts_per_request(c: int, outputs: Sequence[str], max_prompts: int, low_res_size: int,
                        original_size: Tuple[int, int], max_bytes: int) -> int:
    """How many prompts one sam_decode request may carry: at most the server's `max_prompts`
    (0: no limit), and an answer below `max_bytes`, counting per prompt and mask C x H x W bytes
    for `masks` (bool), as much again for `masks_rle` (an upper bound), 4 m^2 for `low_res_masks`."""
    h, w = original_size
    per_mask = {"masks": h * w, "masks_rle": h * w, "iou_predictions": 4, "low_res_masks": 4 * low_res_size ** 2}
    per_prompt = c * sum(per_mask[o] for o in outputs)
    return max(1, min(max_prompts or (1 << 31), max_bytes // max(per_prompt, 1)))


def split_prompts(inputs: Dict[str, Tuple[np.ndarray, str]], chunk: int):
    """decode_inputs' packed arrays in slices of `chunk` prompts: [(inputs, P of the slice)]."""
    p = inputs["point_coords"][0].shape[0]
    return [({k: (a[i:i + chunk], d) for k, (a, d) in inputs.items()}, min(chunk, p - i)) for i in range(0, p, chunk)]


def join_answers(parts, outputs: Sequence[str]) -> Dict[str, np.ndarray]:
    """The answers of split_prompts' requests, in order, as one answer."""
    return {o: np.concatenate([part[o] for part in parts], axis=0) for o in outputs}


def cache_get_inputs(image_id: str) -> Dict[str, Tuple[np.ndarray, str]]:
    """The cache owner's inputs for a get of `image_id` (Triton's batch dim first: [1,1])."""
    if not isinstance(image_id, str) or not image_id:
        raise InputError(f"image_id: got {image_id!r}, expected the id sam_encode answered (a string)")
    return {"image_id": wire.SAM_MASK_DECODER.input("image_id").pack([[image_id.encode()]])}


def check_cached(image_id: str, out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A cache get's answer, or ImageNotCachedError when the cache does not hold the id."""
    if not bool(out["found"].reshape(-1)[0]):
        # the words of sam_decode's NOT_FOUND, so both ways of asking read the same
        raise ImageNotCachedError(f"image_id {image_id!r}: not in the embedding cache (unknown or evicted); "
                                  f"encode the image again with sam_encode", "found=false")
    return out


def encode_inputs(image: Optional[np.ndarray], image_bytes: Optional[bytes]) -> Dict[str, Tuple[np.ndarray, str]]:
    """`sam_encode`'s inputs: exactly one of image (HxWx3 uint8 RGB) or image_bytes."""
    model = wire.SAM_ENCODE
    if (image is None) == (image_bytes is None):
        raise InputError("encode: expected exactly one of image (HxWx3 uint8) or image_bytes")
    if image is not None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"image: got dtype {image.dtype} shape {list(image.shape)}, expected HxWx3 uint8")
        return {"image": model.input("image").pack(image)}
    return {"image_bytes": model.input("image_bytes").pack([bytes(image_bytes)])}


def parse_encode(out: Dict[str, np.ndarray]) -> EncodeResult:
    size = out["original_size"].reshape(-1)
    return EncodeResult(out["image_id"].reshape(-1)[0].decode(), (int(size[0]), int(size[1])))


def decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs,
                  low_res_size: Optional[int] = None):
    """`sam_decode`'s inputs for P prompts on one image, packed as the wire declares them."""
    model = wire.SAM_DECODE
    bad = [o for o in outputs if o not in model.output_names]
    if bad:
        raise InputError(f"outputs: got {bad}, expected names from {list(model.output_names)}")
    image_id = getattr(image_id, "image_id", image_id)  # an EncodeResult stands for its id
    if not isinstance(image_id, str):
        raise InputError(f"image_id: got {type(image_id).__name__}, expected the str id that encode() returned")
    arrays = check_prompts(point_coords, point_labels, mask_input, multimask_output, low_res_size)
    p = arrays["point_coords"].shape[0]
    arrays["image_id"] = np.full((p, 1), image_id.encode(), dtype=object)
    return {name: model.input(name).pack(arr) for name, arr in arrays.items()}


def segment_inputs(image, point_coords, point_labels, multimask_output):
    """`sam_segment`'s inputs: an image and one prompt."""
    model = wire.SAM_SEGMENT
    arrays = check_prompts(point_coords, point_labels, None, multimask_output)
    if arrays["point_coords"].shape[0] != 1:
        raise InputError("segment: expected one prompt ([N,2] points); use encode + decode for many")
    inputs = encode_inputs(image, None)
    inputs.update({name: model.input(name).pack(arrays[name][0])
                   for name in ("point_coords", "point_labels", "multimask_output")})
    return inputs
