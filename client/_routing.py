"""Routing across replicas: which samrt server holds an image, decided by the client alone.

Each image goes to one replica, chosen by rendezvous hashing (highest random weight) of its
`image_id` (`samrt.wire.image_id_of`, a hash of the pixels the client computes itself): the
replica whose `blake2b(url + "|" + image_id)` is highest. Encode and decode of an image therefore
reach the same replica, and its embedding cache, without asking anyone; every client that names
the same replica URLs (in any order) makes the same choice; and when a replica leaves, only its
own images move, each to its next replica in that image's order.

Health (`Route`, the one place where failover is decided, for both clients): a replica that
fails with `ServerUnavailableError` (after its own retries), or answers another server error and
then says it is not ready (a Triton shutting down answers "unknown model" while it unloads), is
marked down for `down_for` seconds and its images go to the next replica in their order, where
they are not cached: a decode there raises `ImageNotCachedError`, on which `TritonSamPredictor`
encodes again, once. When `down_for` has passed the replica is tried again first; if it answers,
it has rejoined (its images move back, encoded again there once if its cache was lost).

One URL is a ring of one: the same code path, and every error comes back as it is.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Awaitable, Callable, Dict, List, Optional, Sequence, TypeVar, Union

import numpy as np

from samrt import wire
from samrt.imageio import decode_image_bytes
from samrt.errors import InputError, InvalidRequestError, ServerError, ServerTimeoutError, ServerUnavailableError

__all__ = ["split_urls", "Ring", "Route", "call", "acall", "routing_id", "merge_statistics"]

T = TypeVar("T")
R = TypeVar("R")
DOWN_FOR = 30.0


def split_urls(url: Union[str, Sequence[str]], protocol: Optional[str] = None) -> List[str]:
    """`"h1:8001,h2:8001"` or `["h1:8001", "h2:8001"]` -> the list of replica URLs (stripped).
    A scheme that names `protocol` is dropped ("http://h:8000" for HTTP, "grpc://h:8001" for
    gRPC); another scheme is an InputError that says which protocol and port it meant."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [_without_scheme(str(u).strip(), protocol) for u in parts if str(u).strip()]
    if not urls:
        raise InputError(f"url: got {url!r}, expected host:port or a comma-separated list of them")
    if len(set(urls)) != len(urls):
        raise InputError(f"url: got {urls}, expected each replica once")
    return urls


def _without_scheme(url: str, protocol: Optional[str]) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if protocol is not None and scheme.lower() == protocol:
        return rest
    if scheme.lower() in ("http", "grpc") and protocol is not None:
        raise InputError(f"url: got {url!r}, an {scheme.lower()} URL, expected host:port of the {protocol} endpoint "
                         f"(gRPC 8001, HTTP 8000 by default); for {scheme.lower()}, use protocol '{scheme.lower()}' "
                         f"(--protocol {scheme.lower()})")
    raise InputError(f"url: got {url!r}, expected host:port (no scheme; TLS is not supported)")


def _decoded_pixels(image_bytes: bytes) -> np.ndarray:
    """Encoded image -> HxWx3 uint8 RGB, decoded exactly as the server decodes it (samrt.imageio:
    EXIF orientation, the same mode conversions), so the id the client computes is the server's."""
    return decode_image_bytes(image_bytes)


def routing_id(image: Optional[np.ndarray] = None, image_bytes: Optional[bytes] = None) -> Optional[str]:
    """The id the server will give this image (`samrt.wire.image_id_of` of its decoded pixels),
    or None for bytes that do not decode here (then the server answers why). Costs a SHA-256 of
    the pixels and, for bytes, a decode."""
    if image is not None:
        return wire.image_id_of(np.asarray(image))
    try:
        return wire.image_id_of(_decoded_pixels(bytes(image_bytes)))
    except Exception:  # noqa: BLE001 - any failure to decode: the server reports it with its code
        return None


def _weight(url: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{url}|{key}".encode(), digest_size=8).digest(), "big")


class Ring:
    """Replica URLs, their health, and each key's order of preference (rendezvous hashing).

    Thread-safe: one client may be shared by threads. `clock` is for tests."""

    def __init__(self, urls: Sequence[str], down_for: float = DOWN_FOR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if down_for < 0:
            raise InputError(f"down_for: got {down_for}, expected seconds >= 0")
        self.urls = list(urls)
        self.down_for = down_for
        self._clock = clock
        self._down_until: Dict[int, float] = {}
        self._lock = threading.Lock()

    def order(self, key: str) -> List[int]:
        """Every replica's index, the preferred first for `key` (health ignored)."""
        return sorted(range(len(self.urls)), key=lambda i: _weight(self.urls[i], key), reverse=True)

    def is_down(self, i: int) -> bool:
        with self._lock:
            until = self._down_until.get(i)
            if until is not None and self._clock() >= until:
                del self._down_until[i]  # its time out is over: tried again
                until = None
            return until is not None

    def candidates(self, key: str) -> List[int]:
        """Replicas to try for `key`, in order: the healthy ones in the key's order, then the
        ones marked down (soonest back first), as a last resort."""
        order = self.order(key)
        up = [i for i in order if not self.is_down(i)]
        with self._lock:
            down = sorted((i for i in order if i not in up), key=lambda i: self._down_until.get(i, 0.0))
        return up + down

    def pick(self, key: str) -> int:
        """The replica that serves `key` now."""
        return self.candidates(key)[0]

    def mark_down(self, i: int) -> None:
        with self._lock:
            self._down_until[i] = self._clock() + self.down_for

    def mark_up(self, i: int) -> None:
        with self._lock:
            self._down_until.pop(i, None)

    def down(self) -> List[str]:
        """URLs of the replicas marked down now."""
        return [u for i, u in enumerate(self.urls) if self.is_down(i)]


class Route:
    """One request's way through the replicas: the candidates for its key, in order, and what each
    outcome means. Every failover decision is here, once, for the sync and asyncio clients alike
    (`call` and `acall` only drive it, the one with `await`):

    - success: the replica is up (`mark_up`: one that was down has rejoined);
    - `ServerUnavailableError` (no connection after the replica's own retries): down, try the next;
    - the request's own errors (`InvalidRequestError`, `ServerTimeoutError`: the replica may still
      be computing) come back as they are, from the replica that served the key;
    - any other server error (`ImageNotCachedError`, INTERNAL, ...): the replica's readiness
      decides (`probed`): ready, its answer stands; not ready (a Triton stopping answers "unknown
      model" or "not ready" while it unloads): down, try the next;
    - with a single replica there is nowhere to go: every error comes back as it is.
    Iterating yields replica indices; `exhausted()` is the error once every candidate failed."""

    def __init__(self, ring: Ring, key: str) -> None:
        self.ring, self.key = ring, key
        self.errors: List[ServerUnavailableError] = []

    def __iter__(self):
        return iter(self.ring.candidates(self.key))

    def succeeded(self, i: int) -> None:
        self.ring.mark_up(i)

    def failed(self, i: int, error: ServerError) -> bool:
        """After `error` from replica i: raises it when it is the caller's answer; False when the
        replica is marked down (try the next); True when its readiness decides (probe it, then
        call `probed`)."""
        if len(self.ring.urls) == 1:
            raise error
        if isinstance(error, ServerUnavailableError):
            self._down(i, error)
            return False
        if isinstance(error, (InvalidRequestError, ServerTimeoutError)):
            raise error
        return True

    def probed(self, i: int, error: ServerError, ready: bool) -> None:
        """The probe's answer after `failed` returned True: ready raises `error` (its answer stands),
        not ready marks the replica down (try the next)."""
        if ready:
            raise error
        self._down(i, ServerUnavailableError(f"{self.ring.urls[i]}: not ready (it answered: {error})", "not_ready"))

    def _down(self, i: int, error: ServerUnavailableError) -> None:
        self.ring.mark_down(i)
        self.errors.append(error)

    def exhausted(self) -> ServerUnavailableError:
        return ServerUnavailableError(f"all {len(self.ring.urls)} replicas unavailable: "
                                      + "; ".join(str(e) for e in self.errors), "replicas")


def call(ring: Ring, clients: Sequence[T], key: str, fn: Callable[[int, T], R]) -> R:
    """fn(i, clients[i]) on `key`'s replica, failing over as `Route` decides (a probe is
    `clients[i].is_ready()`)."""
    route = Route(ring, key)
    for i in route:
        try:
            result = fn(i, clients[i])
        except ServerError as e:
            if route.failed(i, e):
                route.probed(i, e, clients[i].is_ready())
            continue
        route.succeeded(i)
        return result
    raise route.exhausted()


async def acall(ring: Ring, clients: Sequence[T], key: str, fn: Callable[[int, T], Awaitable[R]]) -> R:
    """`call` for coroutines: `await fn(i, clients[i])`, `await clients[i].is_ready()`."""
    route = Route(ring, key)
    for i in route:
        try:
            result = await fn(i, clients[i])
        except ServerError as e:
            if route.failed(i, e):
                route.probed(i, e, await clients[i].is_ready())
            continue
        route.succeeded(i)
        return result
    raise route.exhausted()


def merge_statistics(stats: Sequence[dict]) -> dict:
    """Several replicas' Triton statistics of one model as one: counts and nanoseconds summed,
    `last_inference` the latest, `batch_stats` merged by batch size."""
    if not stats:
        raise ServerUnavailableError("statistics: no replica answered", "replicas")

    def merge(a, b, key=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge(a[k], b[k], k) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
        if key == "batch_stats" and isinstance(a, list):
            by_size = {s["batch_size"]: s for s in a}
            for s in b:
                size = s["batch_size"]
                by_size[size] = merge(by_size[size], s) if size in by_size else s
            return [by_size[k] for k in sorted(by_size)]
        if key in ("batch_size", "version"):
            return a
        if key == "last_inference":
            return max(a, b)
        if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
            return a + b
        return a

    out = stats[0]
    for s in stats[1:]:
        out = merge(out, s)
    return out
