"""AsyncSamClient: the asyncio twin of SamClient (same methods, as coroutines; no shared memory).

Requests are packed by the same functions as SamClient's, and retried by the same policy
(`client._transport.Retry`)."""

from __future__ import annotations

import asyncio
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from samrt import wire
from samrt.errors import ServerError

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
from ._transport import TRANSPORT_EXCEPTIONS, Retry

__all__ = ["AsyncSamClient"]


class AsyncSamClient:
    def __init__(self, url: str = "localhost:8001", protocol: str = "grpc", timeout: float = 120.0,
                 retries: int = 3, backoff: float = 0.5) -> None:
        if protocol == "grpc":
            import tritonclient.grpc.aio as mod
        elif protocol == "http":
            import tritonclient.http.aio as mod
        else:
            raise ValueError(f"protocol: got {protocol!r}, expected 'grpc' or 'http'")
        self._mod, self.url, self.protocol = mod, url, protocol
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._client = mod.InferenceServerClient(url)
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

    async def encode(self, image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None) -> EncodeResult:
        result = parse_encode(await self.infer("sam_encode", encode_inputs(image, image_bytes), ["image_id", "original_size"]))
        self._sizes[result.image_id] = result.original_size
        return result

    async def decode(self, image_id: str, point_coords, point_labels, mask_input=None, multimask_output: bool = True,
                     outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        """As SamClient.decode, including the split above the server's prompt limit or the response limit."""
        inputs = decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs)
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
            out = await self.infer("sam_embedding_cache", cache_get_inputs(image_id), ["found", "original_size"],
                                   headers={wire.IMAGE_ID_HEADER: image_id})
            self._sizes[image_id] = tuple(int(v) for v in check_cached(image_id, out)["original_size"].reshape(-1))
        return self._sizes[image_id]

    async def image_embedding(self, image_id: str) -> np.ndarray:
        """As SamClient.image_embedding: float32 [1,D,E,E]."""
        out = await self.infer("sam_embedding_cache", cache_get_inputs(image_id),
                               ["found", "image_embeddings", "original_size"], headers={wire.IMAGE_ID_HEADER: image_id})
        return check_cached(image_id, out)["image_embeddings"][None]

    async def segment(self, image, point_coords, point_labels, multimask_output: bool = True,
                      outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        return await self.infer("sam_segment", segment_inputs(image, point_coords, point_labels, multimask_output),
                                list(outputs))

    async def amg(self, image: np.ndarray, options: dict) -> list:
        """Automatic masks on the server (`sam_amg`): records with COCO RLE; never retried. `options`:
        SamAutomaticMaskGenerator's parameters by name (numbers of any kind, numpy included), checked here."""
        import json

        from samrt.amg import AmgOptions

        options = json.dumps(AmgOptions.from_fields(dict(options)).to_dict()).encode()
        out = await self.infer("sam_amg", {"image": wire.SAM_AMG.input("image").pack(image),
                                           "options": wire.SAM_AMG.input("options").pack([options])},
                               ["records"], idempotent=False)
        return json.loads(out["records"].reshape(-1)[0])

    async def statistics(self, model: str) -> dict:
        if self.protocol == "grpc":
            stats = await self._call(lambda: self._client.get_inference_statistics(model, as_json=True))
        else:
            stats = await self._call(lambda: self._client.get_inference_statistics(model))
        return _ints(stats["model_stats"][0])

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
