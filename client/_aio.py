"""AsyncSamClient: the asyncio twin of SamClient (same methods, as coroutines; no shared memory).

Requests are packed by the same functions as SamClient's (`client._requests`), sent through the
same kind of endpoint (`client._endpoints`: retry policy, timeouts), and routed across replicas
by the same decisions (`client._routing.Route`). Many tasks may share one client, on its event
loop.
"""

from __future__ import annotations

import asyncio
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from samrt import wire
from samrt.amg import AmgOptions
from samrt.errors import ServerUnavailableError

from ._endpoints import AsyncEndpoint, protocol_module
from ._requests import (DEFAULT_OUTPUTS, MAX_RESPONSE_BYTES, EncodeResult, Prompts, _image_id, _outputs, amg_inputs,
                        answer_size, cache_get_inputs, check_cached, encode_inputs, encode_priority, join_answers,
                        masks_here, pack_decode, parse_amg, parse_encode, parse_model_info, parse_size,
                        prompts_per_request, segment_inputs, split_prompts, wire_outputs)
from ._routing import DOWN_FOR, Ring, acall, merge_statistics, routing_id, split_urls

__all__ = ["AsyncSamClient"]


class AsyncSamClient:
    """`url`: one endpoint, or several replicas (a list or a comma-separated string), routed as
    SamClient routes them. `timeout` bounds every call (gRPC's deadline; HTTP: aiohttp's total)."""

    def __init__(self, url: Union[str, Sequence[str]] = "localhost:8001", protocol: str = "grpc",
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5, down_for: float = DOWN_FOR) -> None:
        protocol_module(protocol, aio=True)  # a bad protocol fails here
        urls = split_urls(url, protocol)
        self.url, self.protocol = ",".join(urls), protocol
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_response_bytes = MAX_RESPONSE_BYTES  # decode() splits requests whose answer would be larger
        self.ring = Ring(urls, down_for)
        self.replicas = [AsyncEndpoint(u, protocol, timeout, retries, backoff) for u in urls]
        self._info: Optional[dict] = None
        self._sizes: Dict[str, Tuple[int, int]] = {}
        self._aliases: Dict[str, str] = {}

    async def infer(self, model: str, inputs: Dict[str, Tuple[np.ndarray, str]], outputs: Sequence[str],
                    idempotent: bool = True, headers: Optional[Dict[str, str]] = None) -> Dict[str, np.ndarray]:
        """As SamClient.infer (without shared memory)."""
        return await self._infer((headers or {}).get(wire.IMAGE_ID_HEADER, ""), model, inputs, outputs,
                                 idempotent, headers)

    async def _infer(self, key: str, model: str, inputs, outputs, idempotent: bool = True,
                     headers: Optional[Dict[str, str]] = None, priority: int = 0) -> Dict[str, np.ndarray]:
        return await acall(self.ring, self.replicas, key, lambda i, replica: replica.infer(
            model, inputs, list(outputs), None, idempotent, headers, priority))

    async def is_ready(self) -> bool:
        """Whether the server answers ready; several replicas: whether at least one does."""
        return any(await asyncio.gather(*[replica.is_ready() for replica in self.replicas]))

    async def encode(self, image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None,
                     background: bool = False) -> EncodeResult:
        """As SamClient.encode (`background=True`: prefetch and pre-encoding, served after foreground encodes)."""
        inputs = encode_inputs(image, image_bytes)
        key = routing_id(image, image_bytes)
        out = await self._infer(key or "", wire.SAM_ENCODE.name, inputs, ["image_id", "original_size"],
                                headers={wire.IMAGE_ID_HEADER: key} if key else None,
                                priority=encode_priority(background))
        result = parse_encode(out)
        if key and result.image_id != key:  # the server decoded the bytes otherwise: keep them together
            self._aliases[result.image_id] = key
        self._sizes[result.image_id] = result.original_size
        return result

    async def decode(self, image_id: str, point_coords, point_labels, mask_input=None, multimask_output: bool = True,
                     outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        """As SamClient.decode, including the split above the server's prompt limit or the response limit."""
        image_id, outputs = _image_id(image_id), _outputs(outputs)
        low_res = (await self.model_info())["low_res_size"] if mask_input is not None else None
        prompts = Prompts.check(point_coords, point_labels, mask_input, multimask_output, low_res)
        info = await self.model_info()
        c = 3 if prompts.multimask_output else 1
        original = await self.image_size(image_id)  # asked once per image not encoded here
        sent = wire_outputs(outputs)  # masks are made here from the low-res logits (wire_outputs)
        size = answer_size(prompts, original, sent)
        chunk = prompts_per_request(c, sent, info["max_prompts"], info["low_res_size"], size, self.max_response_bytes)
        key, headers = self._aliases.get(image_id, image_id), {wire.IMAGE_ID_HEADER: image_id}
        parts = [await self._infer(key, wire.SAM_DECODE.name, part, sent, headers=headers)
                 for part, _ in split_prompts(pack_decode(image_id, prompts), chunk)]
        answer = parts[0] if len(parts) == 1 else join_answers(parts, sent)
        if "masks" not in outputs:
            return masks_here(answer, outputs, original, info["image_size"])
        # upscaling is CPU work: off the event loop
        return await asyncio.get_running_loop().run_in_executor(
            None, masks_here, answer, outputs, original, info["image_size"])

    async def model_info(self) -> dict:
        """As SamClient.model_info."""
        if self._info is None:
            async def ask(i, replica):
                return parse_model_info(await replica.model_config(wire.SAM_DECODE.name),
                                        await replica.model_config("sam_image_encoder"))

            self._info = await acall(self.ring, self.replicas, "", ask)
        return self._info

    async def image_size(self, image_id: str) -> Tuple[int, int]:
        """As SamClient.image_size."""
        if image_id not in self._sizes:
            self._sizes[image_id] = parse_size(await self._cache_get(image_id, ["found", "original_size"]))
        return self._sizes[image_id]

    async def image_embedding(self, image_id: str) -> np.ndarray:
        """As SamClient.image_embedding: float32 [1,D,E,E]."""
        out = await self._cache_get(image_id, ["found", "image_embeddings", "original_size"])
        self._sizes[image_id] = parse_size(out)
        return out["image_embeddings"]

    async def _cache_get(self, image_id: str, outputs) -> Dict[str, np.ndarray]:
        out = await self._infer(self._aliases.get(image_id, image_id), (await self.model_info())["cache_model"],
                                cache_get_inputs(image_id), outputs, headers={wire.IMAGE_ID_HEADER: image_id})
        return check_cached(image_id, out)

    async def segment(self, image, point_coords, point_labels, multimask_output: bool = True,
                      outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        """As SamClient.segment."""
        inputs = segment_inputs(image, point_coords, point_labels, multimask_output)
        key = routing_id(image)
        return await self._infer(key, wire.SAM_SEGMENT.name, inputs, outputs, headers={wire.IMAGE_ID_HEADER: key})

    async def amg(self, image: np.ndarray, options: Union[AmgOptions, dict, None] = None) -> list:
        """As SamClient.amg: records with COCO RLE; never retried."""
        inputs = amg_inputs(image, options)
        key = routing_id(image)
        return parse_amg(await self._infer(key, wire.SAM_AMG.name, inputs, ["records"], idempotent=False,
                                           headers={wire.IMAGE_ID_HEADER: key}))

    async def statistics(self, model: str) -> dict:
        """As SamClient.statistics: several replicas summed over those that answer."""
        return merge_statistics([s for s in (await self.replica_statistics(model)).values() if s is not None])

    async def replica_statistics(self, model: str) -> Dict[str, Optional[dict]]:
        """{replica url: Triton's statistics of `model`, or None when it does not answer}."""
        async def one(replica):
            try:
                return await replica.statistics(model)
            except ServerUnavailableError:
                return None

        return dict(zip(self.ring.urls, await asyncio.gather(*[one(replica) for replica in self.replicas])))

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
