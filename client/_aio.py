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
    EncodeResult,
    _ints,
    _not_found,
    decode_inputs,
    encode_inputs,
    parse_encode,
    segment_inputs,
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
        return parse_encode(await self.infer("sam_encode", encode_inputs(image, image_bytes), ["image_id", "original_size"]))

    async def decode(self, image_id: str, point_coords, point_labels, mask_input=None, multimask_output: bool = True,
                     outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        inputs = decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs)
        return await self.infer("sam_decode", inputs, list(outputs), headers={wire.IMAGE_ID_HEADER: image_id})

    async def segment(self, image, point_coords, point_labels, multimask_output: bool = True,
                      outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        return await self.infer("sam_segment", segment_inputs(image, point_coords, point_labels, multimask_output),
                                list(outputs))

    async def amg(self, image: np.ndarray, options: dict) -> list:
        """Automatic masks on the server (`sam_amg`): records with COCO RLE; never retried."""
        import json

        out = await self.infer("sam_amg", {"image": wire.SAM_AMG.input("image").pack(image),
                                           "options": wire.SAM_AMG.input("options").pack([json.dumps(options).encode()])},
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
