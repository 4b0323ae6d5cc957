"""samrt.client: the Python SDK over Triton (no torch, no onnx)."""

from ._client import (
    DEFAULT_OUTPUTS,
    EncodeResult,
    ImageNotCachedError,
    SamClient,
    ServerError,
    ServerUnavailableError,
)
from ._aio import AsyncSamClient
from .amg import TritonSamAutomaticMaskGenerator
from .predictor import TritonSamPredictor

__all__ = [
    "AsyncSamClient",
    "TritonSamAutomaticMaskGenerator",
    "TritonSamPredictor",
    "DEFAULT_OUTPUTS",
    "EncodeResult",
    "ImageNotCachedError",
    "SamClient",
    "ServerError",
    "ServerUnavailableError",
]
