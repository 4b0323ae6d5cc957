"""Task images as Label Studio shows them: fetched from Label Studio with its API key, or from an
absolute http(s) URL directly, decoded with EXIF orientation applied (`samrt.imageio`, as
browsers show JPEGs, hence as Label Studio's `original_width`/`original_height` count them).

Label Studio's URL and key come from the variables its own ML backends read: `LABEL_STUDIO_URL`
and `LABEL_STUDIO_API_KEY`. A legacy token goes as `Authorization: Token <key>`; a personal access
token (a JWT refresh token) is exchanged at `/api/token/refresh/` for an access token sent as
`Bearer` (what label-studio-sdk does). The key is sent to Label Studio's own host only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Optional
from urllib.parse import urljoin, urlparse

import aiohttp
import numpy as np

from samrt.errors import InputError, SamrtError
from samrt.imageio import decode_image_bytes

__all__ = ["ImageSource", "ImageFetchError", "MAX_IMAGE_BYTES"]

MAX_IMAGE_BYTES = 256 * 1024 * 1024
CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")


class ImageFetchError(SamrtError):
    """A task's image could not be fetched (URL, status and what to set)."""


def _jwt_expiry(token: str) -> Optional[float]:
    """The `exp` of a JWT (no signature check: only to tell a refresh token from a legacy one and
    to know when an access token runs out); None when `token` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        pad = lambda s: s + "=" * (-len(s) % 4)
        header = json.loads(base64.urlsafe_b64decode(pad(parts[0])))
        payload = json.loads(base64.urlsafe_b64decode(pad(parts[1])))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(payload, dict):
        return None
    return float(payload.get("exp", 0))


class ImageSource:
    """Fetches and decodes task images (`fetch(url, task_id)` -> HxWx3 uint8 RGB)."""

    def __init__(self, ls_url: Optional[str] = None, api_key: Optional[str] = None, max_pixels: Optional[int] = None,
                 timeout: float = 60.0) -> None:
        self.ls_url = (ls_url if ls_url is not None else os.environ.get("LABEL_STUDIO_URL", "")).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LABEL_STUDIO_API_KEY", "")
        if self.ls_url and urlparse(self.ls_url).scheme not in ("http", "https"):
            raise InputError(f"LABEL_STUDIO_URL: got {self.ls_url!r}, expected http://host:port or https://...")
        self.max_pixels, self.timeout = max_pixels, timeout
        self._session: Optional[aiohttp.ClientSession] = None
        self._access: Optional[str] = None
        self._access_expiry = 0.0

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def resolve(self, url: str) -> str:
        """The absolute URL of a task's image: Label Studio's paths (`/data/upload/...`,
        `/data/local-files/?d=...`) are joined to LABEL_STUDIO_URL."""
        if url.startswith(("http://", "https://")):
            return url
        if url.startswith(CLOUD_SCHEMES):
            raise ImageFetchError(f"image {url!r}: cloud storage URIs are not supported by samrt's backend (not "
                                  "verified); let Label Studio serve the images (uploads or local files) or use http(s)")
        if not self.ls_url:
            raise ImageFetchError(f"image {url!r}: a Label Studio path, and LABEL_STUDIO_URL is not set; set it to "
                                  "Label Studio's address (and LABEL_STUDIO_API_KEY to an access token)")
        path = url if url.startswith("/") else "/" + url
        if path.startswith("/upload/"):
            path = "/data" + path
        return urljoin(self.ls_url + "/", path.lstrip("/"))

    def _is_label_studio(self, url: str) -> bool:
        return bool(self.ls_url) and urlparse(url).netloc == urlparse(self.ls_url).netloc

    async def _authorization(self) -> str:
        expiry = _jwt_expiry(self.api_key)
        if expiry is None:
            return f"Token {self.api_key}"
        if self._access is None or self._access_expiry - 30 < time.time():
            http = await self._http()
            async with http.post(f"{self.ls_url}/api/token/refresh/", json={"refresh": self.api_key}) as r:
                if r.status != 200:
                    raise ImageFetchError(f"Label Studio refused the API key at /api/token/refresh/ ({r.status}); "
                                          "check LABEL_STUDIO_API_KEY")
                self._access = (await r.json())["access"]
            self._access_expiry = _jwt_expiry(self._access) or 0.0
        return f"Bearer {self._access}"

    async def fetch_bytes(self, url: str) -> bytes:
        """The encoded image at `url` (a task's image reference), at most MAX_IMAGE_BYTES."""
        absolute = self.resolve(url)
        headers = {}
        if self._is_label_studio(absolute):
            if not self.api_key:
                raise ImageFetchError(f"image {absolute}: served by Label Studio, and LABEL_STUDIO_API_KEY is not "
                                      "set; set it to an access token (Account & Settings)")
            headers["Authorization"] = await self._authorization()
        http = await self._http()
        try:
            async with http.get(absolute, headers=headers) as r:
                if r.status != 200:
                    raise ImageFetchError(f"image {absolute}: HTTP {r.status}"
                                          + (" (check LABEL_STUDIO_API_KEY)" if r.status in (401, 403) else ""))
                # the whole body: StreamReader.read(n) answers what has arrived so far, up to n bytes
                # (a test saw 16 KiB of a larger PNG: "image file is truncated" at random)
                chunks, size = [], 0
                async for chunk in r.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise ImageFetchError(f"image {absolute}: larger than {MAX_IMAGE_BYTES} bytes")
                    chunks.append(chunk)
        except aiohttp.ClientError as e:
            raise ImageFetchError(f"image {absolute}: {type(e).__name__}: {e}") from None
        return b"".join(chunks)

    async def fetch(self, url: str) -> np.ndarray:
        """HxWx3 uint8 RGB, EXIF orientation applied (InputError for bytes that are no image)."""
        data = await self.fetch_bytes(url)
        return await asyncio.get_running_loop().run_in_executor(  # decoding is CPU work: off the event loop
            None, lambda: decode_image_bytes(data, self.max_pixels, what=f"image {url}"))
