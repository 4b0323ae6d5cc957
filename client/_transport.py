"""What the sync and asyncio clients share: Triton's error codes mapped to samrt's typed errors,
and one retry policy.

Codes, not message text, decide: gRPC status codes (`StatusCode.INVALID_ARGUMENT`, ...) and HTTP
status codes ("400", ...) as tritonclient reports them in `InferenceServerException.status()`.
Three of Triton's own answers are read by their fixed text, because their codes say something
else: "Request for unknown model" (NOT_FOUND, while a model reloads: not an evicted image) and
"Stub process ... is not healthy" (INTERNAL, a python-backend process that died and is being
restarted): both are ServerUnavailableError, retried like a refused connection; and gRPC's "This
protocol is restricted" (UNAVAILABLE, an administrative API without the server's admin key; HTTP
says 403): AccessDeniedError, never retried.
Only a lost or refused connection (and UNAVAILABLE) is retried, with exponential backoff, and
only for idempotent requests; a deadline is a `ServerTimeoutError`, never retried (the server may
still be computing the abandoned request).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Optional, Type

from samrt.errors import (AccessDeniedError, ImageNotCachedError, InvalidRequestError, ServerError,
                          ServerTimeoutError, ServerUnavailableError)

__all__ = ["error_from_exception", "Retry", "TRANSPORT_EXCEPTIONS"]

_BY_CODE = {
    "StatusCode.INVALID_ARGUMENT": InvalidRequestError, "400": InvalidRequestError,
    "StatusCode.NOT_FOUND": ImageNotCachedError, "404": ImageNotCachedError,
    "StatusCode.UNAVAILABLE": ServerUnavailableError, "503": ServerUnavailableError,
    "StatusCode.DEADLINE_EXCEEDED": ServerTimeoutError, "504": ServerTimeoutError,
    "403": AccessDeniedError,
}
ADMIN_KEY_HINT = ("pass the server's admin key (SamClient(admin_key=...) or the SAMRT_ADMIN_KEY environment variable; "
                  "`samrt serve` writes it to a file readable only by its user and prints the path)")


def _transport_exceptions() -> tuple:
    from tritonclient.utils import InferenceServerException

    import http.client

    # http.client.HTTPException: geventhttpclient's HTTPParseError, when an HTTP client reads a
    # gRPC (HTTP/2) port's bytes
    kinds = [InferenceServerException, OSError, asyncio.TimeoutError, http.client.HTTPException]
    try:
        import aiohttp

        kinds.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        from gevent import Timeout as GeventTimeout

        kinds.append(GeventTimeout)
    except ImportError:
        pass
    return tuple(kinds)


TRANSPORT_EXCEPTIONS = _transport_exceptions()


def error_from_exception(e: BaseException, where: str, not_found: Type[ServerError] = ServerError) -> ServerError:
    """The typed error for what tritonclient or the network raised; `where` names the endpoint;
    `not_found`: the error NOT_FOUND means for this request (ImageNotCachedError for sam_decode)."""
    from tritonclient.utils import InferenceServerException  # tritonclient: the client extra

    if isinstance(e, InferenceServerException):
        code = str(e.status() or "")
        cls: Type[ServerError] = _BY_CODE.get(code, ServerError)
        if cls is ImageNotCachedError:
            cls = not_found
        message = e.message() if hasattr(e, "message") else str(e)
        if _is_model_unavailable_text(message):
            cls = ServerUnavailableError
        if _is_restricted_text(message):
            cls = AccessDeniedError
        if cls is AccessDeniedError:
            return cls(f"{where}: {message}; {ADMIN_KEY_HINT}", code)
        if cls is ServerError and not code and _is_timeout_text(message):
            cls = ServerTimeoutError  # tritonclient.http reports its own timeouts without a status
        return cls(message if cls is not ServerUnavailableError else f"{where}: {message}", code)
    if isinstance(e, (socket.timeout, TimeoutError)) or type(e).__name__ in ("Timeout", "TimeoutError"):
        return ServerTimeoutError(f"{where}: no answer within the timeout ({type(e).__name__})", "timeout")
    return ServerUnavailableError(f"{where}: {type(e).__name__}: {e}", "connection")


def _is_model_unavailable_text(message: str) -> bool:
    # Triton's core: a model not loaded right now; the python backend: a stub that died.
    return "Request for unknown model" in message or ("Stub process" in message and "is not healthy" in message)


def _is_restricted_text(message: str) -> bool:
    # Triton's gRPC frontend refuses a restricted protocol with UNAVAILABLE and this text.
    return "This protocol is restricted" in message


def _is_timeout_text(message: str) -> bool:
    # Only for exceptions tritonclient raises with no status at all (its own client-side timeout).
    return "timed out" in message.lower() or "timeout" in message.lower()


class Retry:
    """One request's retry state: `failed(e)` returns the seconds to wait before the next attempt,
    or raises the typed error when the request must not (or can no longer) be retried."""

    def __init__(self, retries: int, backoff: float, where: str, idempotent: bool = True,
                 not_found: Type[ServerError] = ServerError) -> None:
        self.left = retries if idempotent else 0
        self.delay = backoff
        self.where = where
        self.not_found = not_found

    def failed(self, e: BaseException, error: Optional[ServerError] = None) -> float:
        error = error or error_from_exception(e, self.where, self.not_found)
        if not isinstance(error, ServerUnavailableError) or self.left <= 0:
            raise error from e
        self.left -= 1
        delay, self.delay = self.delay, self.delay * 2
        return delay
