"""AsyncSamClient: the asyncio twin of SamClient (same methods, as coroutines; no shared memory)."""

from __future__ import annotations

import asyncio
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ._client import (
    DEFAULT_OUTPUTS,
    EncodeResult,
    ServerUnavailableError,
    _ints,
    _is_connection_error,
    _server_error,
    decode_inputs,
    encode_inputs,
    parse_encode,
    segment_inputs,
)

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

    async def _call(self, make):
        from tritonclient.utils import InferenceServerException

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return await make()
            except (InferenceServerException, ConnectionError, OSError) as e:
                if not _is_connection_error(e) or attempt == self.retries:
                    if _is_connection_error(e):
                        raise ServerUnavailableError(f"{self.protocol}://{self.url}: {e}") from e
                    raise _server_error(e.message() if hasattr(e, "message") else str(e)) from e
                await asyncio.sleep(delay)
                delay *= 2

    async def infer(self, model: str, inputs: Dict[str, Tuple[np.ndarray, str]], outputs: Sequence[str]) -> Dict[str, np.ndarray]:
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
                return await self._client.infer(model, ins, outputs=outs, client_timeout=self.timeout)
            return await self._client.infer(model, ins, outputs=outs, timeout=int(self.timeout * 1e6))

        result = await self._call(send)
        return {o: result.as_numpy(o) for o in outputs}

    async def encode(self, image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None) -> EncodeResult:
        return parse_encode(await self.infer("sam_encode", encode_inputs(image, image_bytes), ["image_id", "original_size"]))

    async def decode(self, image_id: str, point_coords, point_labels, mask_input=None, multimask_output: bool = True,
                     outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        inputs = decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs)
        return await self.infer("sam_decode", inputs, list(outputs))

    async def segment(self, image, point_coords, point_labels, multimask_output: bool = True,
                      outputs: Sequence[str] = DEFAULT_OUTPUTS) -> Dict[str, np.ndarray]:
        return await self.infer("sam_segment", segment_inputs(image, point_coords, point_labels, multimask_output),
                                list(outputs))

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
