"""AsyncSamClient: the asyncio twin of SamClient (same methods, as coroutines; no shared memory).

Requests are packed by the same functions as SamClient's, retried by the same policy
(`client._transport.Retry`), and routed across replicas by the same ring (`client._routing`)."""

from __future__ import annotations

import asyncio
import json
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from samrt import wire
from samrt.amg import AmgOptions
from samrt.errors import ServerError, ServerUnavailableError

from ._client import (
    DEFAULT_OUTPUTS,
    MAX_RESPONSE_BYTES,
    EncodeResult,
    _ints,
    _not_found,
    cache_get_inputs,
    check_cached,
    decode_inputs,
    encode_inputs,
    join_answers,
    parse_encode,
    parse_model_info,
    prompts_per_request,
    segment_inputs,
    split_prompts,
)
from ._routing import DOWN_FOR, Ring, acall, merge_statistics, routing_id, split_urls
from ._transport import TRANSPORT_EXCEPTIONS, Retry

__all__ = ["AsyncSamClient"]


class AsyncSamClient:
    """`url`: one endpoint, or several replicas (a list or a comma-separated string), routed as
    SamClient routes them."""

    def __init__(self, url: Union[str, Sequence[str]] = "localhost:8001", protocol: str = "grpc",
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5, down_for: float = DOWN_FOR) -> None:
        urls = split_urls(url)
        if protocol == "grpc":
            import tritonclient.grpc.aio as mod  # tritonclient: the client extra
        elif protocol == "http":
            import tritonclient.http.aio as mod  # tritonclient: the client extra
        else:
            raise ValueError(f"protocol: got {protocol!r}, expected 'grpc' or 'http'")
        self._mod, self.url, self.protocol = mod, ",".join(urls), protocol
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.ring: Optional[Ring] = None
        self.replicas: Sequence["AsyncSamClient"] = ()
        self._aliases: Dict[str, str] = {}
        if len(urls) > 1:
            self.ring = Ring(urls, down_for)
            self.replicas = [AsyncSamClient(u, protocol, timeout, retries, backoff) for u in urls]
            self._client = None
        else:
            self._client = mod.InferenceServerClient(self.url)
        self.max_response_bytes = MAX_RESPONSE_BYTES  # decode() splits requests whose answer would be larger
        self._info = None
        self._sizes: Dict[str, Tuple[int, int]] = {}

    async def _call(self, make, idempotent: bool = True, not_found=None):
        retry = Retry(self.retries, self.backoff, f"{self.protocol}://{self.url}", idempotent, not_found or ServerError)
        while True:
            try:
                return await make()
            except TRANSPORT_EXCEPTIONS as e:
                await asyncio.sleep(retry.failed(e))

    async def infer(self, model: str, inputs: Dict[str, Tuple[np.ndarray, str]], outputs: Sequence[str],
                    idempotent: bool = True, headers: Optional[Dict[str, str]] = None) -> Dict[str, np.ndarray]:
        if self.ring is not None:
            return await acall(self.ring, self.replicas, (headers or {}).get(wire.IMAGE_ID_HEADER, ""),
                               lambda i, c: c.infer(model, inputs, outputs, idempotent, headers))

        def build():
            ins = []
            for k, (a, d) in inputs.items():
                t = self._mod.InferInput(k, list(a.shape), d)
                t.set_data_from_numpy(a)
                ins.append(t)
            return ins, [self._mod.InferRequestedOutput(o) for o in outputs]

        async def send():
            ins, outs = build()
            if self.protocol == "grpc":
                return await self._client.infer(model, ins, outputs=outs, client_timeout=self.timeout, headers=headers)
            return await self._client.infer(model, ins, outputs=outs, timeout=int(self.timeout * 1e6), headers=headers)

        result = await self._call(send, idempotent, _not_found(model))
        return {o: result.as_numpy(o) for o in outputs}

    async def is_ready(self) -> bool:
        """Whether the server answers ready; several replicas: whether at least one does."""
        if self.ring is not None:
            return any(await asyncio.gather(*[c.is_ready() for c in self.replicas]))
        try:
            return bool(await self._client.is_server_ready())
        except Exception:
            return False

    async def encode(self, image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None) -> EncodeResult:
        inputs = encode_inputs(image, image_bytes)
        key = routing_id(image, image_bytes)
        result = parse_encode(await self.infer("sam_encode", inputs, ["image_id", "original_size"],
                                               headers={wire.IMAGE_ID_HEADER: key} if key else None))
        if key and result.image_id != key:  # the server decoded the bytes otherwise: keep them together
            self._aliases[result.image_id] = key
        self._sizes[result.image_id] = result.original_size
        return result

    async def decode(self, image_id: str, point_coords, point_labels, mask_input=None, multimask_output: bool = True,
                     outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        """As SamClient.decode, including the split above the server's prompt limit or the response limit."""
        image_id = getattr(image_id, "image_id", image_id)  # an EncodeResult stands for its id
        low_res = (await self.model_info())["low_res_size"] if mask_input is not None and self.ring is None else None
        inputs = decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs, low_res)
        if self.ring is not None:  # routed by the id it was encoded under; that replica's client splits
            return await acall(self.ring, self.replicas, self._aliases.get(image_id, image_id),
                               lambda i, c: c.decode(image_id, point_coords, point_labels, mask_input,
                                                     multimask_output, outputs))
        info = await self.model_info()
        size = await self.image_size(image_id) if {"masks", "masks_rle"} & set(outputs) else (0, 0)
        chunk = prompts_per_request(3 if multimask_output else 1, outputs, info["max_prompts"], info["low_res_size"],
                                    size, self.max_response_bytes)
        headers = {wire.IMAGE_ID_HEADER: image_id}
        parts = [await self.infer("sam_decode", part, list(outputs), headers=headers)
                 for part, _ in split_prompts(inputs, chunk)]
        return parts[0] if len(parts) == 1 else join_answers(parts, outputs)

    async def model_info(self) -> dict:
        """As SamClient.model_info."""
        if self.ring is not None:
            return await acall(self.ring, self.replicas, "", lambda i, c: c.model_info())
        if self._info is None:
            kw = {"as_json": True} if self.protocol == "grpc" else {}
            cfg = await self._call(lambda: self._client.get_model_config("sam_decode", **kw))
            enc = await self._call(lambda: self._client.get_model_config("sam_image_encoder", **kw))
            if self.protocol == "grpc":
                cfg, enc = cfg["config"], enc["config"]
            self._info = parse_model_info(cfg, enc)
        return self._info

    async def image_size(self, image_id: str) -> Tuple[int, int]:
        """As SamClient.image_size."""
        if image_id not in self._sizes:
            out = await self.infer((await self.model_info())["cache_model"], cache_get_inputs(image_id),
                                   ["found", "original_size"],
                                   headers={wire.IMAGE_ID_HEADER: image_id})
            self._sizes[image_id] = tuple(int(v) for v in check_cached(image_id, out)["original_size"].reshape(-1))
        return self._sizes[image_id]

    async def image_embedding(self, image_id: str) -> np.ndarray:
        """As SamClient.image_embedding: float32 [1,D,E,E]."""
        out = await self.infer((await self.model_info())["cache_model"], cache_get_inputs(image_id),
                               ["found", "image_embeddings", "original_size"], headers={wire.IMAGE_ID_HEADER: image_id})
        return check_cached(image_id, out)["image_embeddings"]

    async def segment(self, image, point_coords, point_labels, multimask_output: bool = True,
                      outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        return await self.infer("sam_segment", segment_inputs(image, point_coords, point_labels, multimask_output),
                                list(outputs), headers={wire.IMAGE_ID_HEADER: routing_id(image)})

    async def amg(self, image: np.ndarray, options: dict) -> list:
        """Automatic masks on the server (`sam_amg`): records with COCO RLE; never retried. `options`:
        SamAutomaticMaskGenerator's parameters by name (numbers of any kind, numpy included), checked here."""
        options = json.dumps(AmgOptions.from_fields(dict(options)).to_dict()).encode()
        out = await self.infer("sam_amg", {"image": wire.SAM_AMG.input("image").pack(image),
                                           "options": wire.SAM_AMG.input("options").pack([options])},
                               ["records"], idempotent=False, headers={wire.IMAGE_ID_HEADER: routing_id(image)})
        return json.loads(out["records"].reshape(-1)[0])

    async def statistics(self, model: str) -> dict:
        """As SamClient.statistics: several replicas summed over those that answer."""
        if self.ring is not None:
            return merge_statistics([s for s in (await self.replica_statistics(model)).values() if s is not None])
        if self.protocol == "grpc":
            stats = await self._call(lambda: self._client.get_inference_statistics(model, as_json=True))
        else:
            stats = await self._call(lambda: self._client.get_inference_statistics(model))
        return _ints(stats["model_stats"][0])

    async def replica_statistics(self, model: str) -> Dict[str, Optional[dict]]:
        """{replica url: Triton's statistics of `model`, or None when it does not answer}."""
        if self.ring is None:
            return {self.url: await self.statistics(model)}

        async def one(c):
            try:
                return await c.statistics(model)
            except ServerUnavailableError:
                return None

        return dict(zip(self.ring.urls, await asyncio.gather(*[one(c) for c in self.replicas])))

    async def close(self) -> None:
        for c in self.replicas:
            await c.close()
        if self._client is not None:
            await self._client.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
