"""Typed errors. Every message says what was received and what was expected."""

from __future__ import annotations

__all__ = [
    "SamrtError",
    "CheckpointError",
    "ModelTypeMismatchError",
    "InputError",
    "InsufficientMemoryError",
    "ExportCheckError",
    "ServerError",
    "InvalidRequestError",
    "ImageNotCachedError",
    "ServerUnavailableError",
    "ServerTimeoutError",
    "AccessDeniedError",
]


class SamrtError(Exception):
    """Base class of every error samrt raises on purpose."""


class CheckpointError(SamrtError):
    """A checkpoint file cannot be read or is not a SAM checkpoint."""


class ModelTypeMismatchError(CheckpointError):
    """The checkpoint's tensors describe another model type than the one asked for."""


class InputError(SamrtError, ValueError):
    """A prompt, image or tensor given by a caller is malformed."""


class InsufficientMemoryError(SamrtError):
    """A start (export, server) whose memory estimate exceeds what the machine has available
    (`samrt.memory.check_fits`), refused before it begins."""


class ExportCheckError(SamrtError):
    """An exported graph disagrees with PyTorch by more than the stated tolerance."""


# -- errors a samrt server answers with, as the SDK raises them (mapped from Triton's codes) --
class ServerError(SamrtError):
    """The server answered a request with an error, or could not be reached."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code  # Triton's / gRPC's / HTTP's code as received, e.g. "StatusCode.INVALID_ARGUMENT" or "400"


class InvalidRequestError(ServerError):
    """The server refused the request's inputs (Triton INVALID_ARG, HTTP 400)."""


class ImageNotCachedError(ServerError):
    """The image_id is unknown to the server's embedding cache: never encoded, or evicted (NOT_FOUND, 404)."""


class ServerUnavailableError(ServerError):
    """No connection to the server after all retries, or the server is overloaded (UNAVAILABLE, 503)."""


class ServerTimeoutError(ServerError):
    """The request's deadline passed before the answer came (DEADLINE_EXCEEDED, a client timeout).
    Never retried: the server may still be computing it."""


class AccessDeniedError(ServerError):
    """The server serves this API (shared-memory registration, model control, trace or log
    settings) only to requests that carry its admin key, and this one carried none or another
    (HTTP 403; gRPC: Triton's "This protocol is restricted"). Never retried."""
