"""samrt.client: the Python SDK over Triton (no torch, no onnx)."""

from ._client import (
    DEFAULT_OUTPUTS,
    EncodeResult,
    ImageNotCachedError,
    SamClient,
    ServerError,
    ServerUnavailableError,
)
from .amg import TritonSamAutomaticMaskGenerator
from .predictor import TritonSamPredictor

__all__ = [
    "TritonSamAutomaticMaskGenerator",
    "TritonSamPredictor",
    "DEFAULT_OUTPUTS",
    "EncodeResult",
    "ImageNotCachedError",
    "SamClient",
    "ServerError",
    "ServerUnavailableError",
]
