"""samrt.client: the Python SDK over Triton (no torch, no onnx).

Floor "client" (`samrt.layers`): imports the core only.

`SamClient` and `AsyncSamClient` may be shared by any number of threads (or tasks); each caller
gets its own answer. `TritonSamPredictor` holds per-image state like SamPredictor: one per thread.
"""

from samrt.errors import (
    AccessDeniedError,
    ImageNotCachedError,
    InvalidRequestError,
    ServerError,
    ServerTimeoutError,
    ServerUnavailableError,
)

from ._client import DEFAULT_OUTPUTS, EncodeResult, SamClient
from ._aio import AsyncSamClient
from ._endpoints import release_stale_regions
from .amg import TritonSamAutomaticMaskGenerator, served_amg_options
from .predictor import TritonSamPredictor

__all__ = [
    "AccessDeniedError",
    "AsyncSamClient",
    "TritonSamAutomaticMaskGenerator",
    "TritonSamPredictor",
    "served_amg_options",
    "DEFAULT_OUTPUTS",
    "EncodeResult",
    "ImageNotCachedError",
    "InvalidRequestError",
    "SamClient",
    "ServerTimeoutError",
    "ServerError",
    "ServerUnavailableError",
    "release_stale_regions",
]
