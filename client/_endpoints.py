"""One server (one URL) as the clients use it: tritonclient's client, the retry policy, the
timeout on every call, shared memory (sync only). Routing across several is `client._routing`.

Threads: tritonclient.grpc's client is thread-safe, so an `Endpoint` holds one. tritonclient.http's
client is not (its docs: "intended to be used by a single thread"): it runs on gevent, whose
sockets and connection-pool semaphore belong to the thread that made them; shared by threads it
deadlocked in the pool (no timeout there), moved to another thread it fails with
"greenlet.error: cannot switch to a different thread". So each thread gets its own HTTP client
(`PerThread`), made on first use and closed with the endpoint.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import weakref
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from samrt import wire
from samrt.errors import ImageNotCachedError, ServerError, ServerTimeoutError, ServerUnavailableError

from ._shm import RegionPool, layout, release_stale
from ._transport import TRANSPORT_EXCEPTIONS, Retry

__all__ = ["Endpoint", "AsyncEndpoint", "Connection", "PerThread", "ServerShm", "protocol_module", "not_found_error",
           "admin_key_or_env", "release_stale_regions", "what_listens", "unreachable_error"]

Inputs = Dict[str, Tuple[np.ndarray, str]]
OutputSpecs = Dict[str, Tuple[np.dtype, Tuple[int, ...]]]


def protocol_module(protocol: str, aio: bool = False):
    """tritonclient's module for `protocol` ('grpc' or 'http'), asyncio's when `aio`."""
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as mod  # tritonclient: the client extra
        else:
            import tritonclient.grpc as mod  # tritonclient: the client extra
    elif protocol == "http":
        if aio:
            import tritonclient.http.aio as mod  # tritonclient: the client extra
        else:
            import tritonclient.http as mod  # tritonclient: the client extra
    else:
        raise ValueError(f"protocol: got {protocol!r}, expected 'grpc' or 'http'")
    return mod


# gRPC reconnects with an exponential backoff that grows to 120 s: a client that had seen its server
# go failed every call at once ("failed to connect to all addresses") for as long after the
# server came back (measured). samrt's gRPC clients try again at most a second apart. Not
# "grpc.min_reconnect_backoff_ms": gRPC also takes it as the time a connection attempt may take (20 s
# by default), and at 200 ms a server slow to answer the handshake failed as UNAVAILABLE before the
# call's own timeout (ServerTimeoutError) could fire.
RECONNECT_BACKOFF_MS = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 1000}


def grpc_channel_args(mod) -> list:
    """tritonclient's own default channel options (its message size limit, keepalive), with
    RECONNECT_BACKOFF_MS."""
    keepalive = mod.KeepAliveOptions()
    largest = int(np.iinfo(np.int32).max)  # tritonclient's MAX_GRPC_MESSAGE_SIZE
    return [("grpc.max_send_message_length", largest), ("grpc.max_receive_message_length", largest),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            *RECONNECT_BACKOFF_MS.items()]


def what_listens(url: str, timeout: float = 2.0) -> str:
    """What answers at host:port, by its first bytes: "http" (HTTP/1.x, Triton's HTTP endpoint),
    "grpc" (HTTP/2, as gRPC servers speak), "nothing" (no connection), or "unknown"."""
    host, _, port = url.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
            s.sendall(b"GET /v2/health/ready HTTP/1.0\r\n\r\n")
            first = s.recv(16)
    except (OSError, ValueError):
        return "nothing"
    if first.startswith(b"HTTP/1."):
        return "http"
    if len(first) >= 4 and first[3] in (0x04, 0x07):  # an HTTP/2 frame: SETTINGS or GOAWAY
        return "grpc"
    return "unknown"


_PORTS = {"grpc": 8001, "http": 8000}
_NAMES = {"grpc": "gRPC", "http": "HTTP/1.1"}


def unreachable_error(error: ServerUnavailableError, url: str, protocol: str) -> ServerUnavailableError:
    """`error` for a server that could not be reached, with the likely cause named: nothing
    listens there, or the port speaks the other protocol (gRPC to Triton's HTTP port, say)."""
    found = what_listens(url)
    other = "http" if protocol == "grpc" else "grpc"
    if found == other:
        why = (f"{url} answers {_NAMES[other]}, not {_NAMES[protocol]}: use protocol '{other}' (--protocol {other}) "
               f"or the {_NAMES[protocol]} port ({_PORTS[protocol]} by default)")
    elif found == "nothing":
        why = f"nothing listens at {url} (is the server running, on this host and port?)"
    else:
        return error
    return ServerUnavailableError(f"{error} -- {why}", error.code)


def _ints(obj):
    """gRPC's JSON writes int64 counters as strings: turn them back into ints."""
    if isinstance(obj, dict):
        return {k: _ints(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_ints(v) for v in obj]
    return int(obj) if isinstance(obj, str) and obj.isdigit() else obj


def admin_key_or_env(admin_key: Optional[str]) -> Optional[str]:
    """The admin key given, else the SAMRT_ADMIN_KEY environment variable (`samrt.wire.ADMIN_KEY_ENV`), else None."""
    return admin_key if admin_key is not None else (os.environ.get(wire.ADMIN_KEY_ENV) or None)


def not_found_error(model: str):
    """What NOT_FOUND means in an answer of `model`: an image the cache does not hold, for the
    models that look images up by id; anything else (an unknown model) stays a ServerError."""
    return ImageNotCachedError if model == wire.SAM_DECODE.name else ServerError


def _priority(priority: int) -> dict:
    """tritonclient's `priority` keyword, left out for 0 (the model's default level)."""
    return {"priority": int(priority)} if priority else {}


def _request(mod, inputs: Inputs, outputs: Sequence[str], placed: Dict[str, Tuple[int, int]], region_name: str = ""):
    """tritonclient's InferInput / InferRequestedOutput lists; tensors in `placed` by shared memory."""
    ins = []
    for name, (array, dtype) in inputs.items():
        t = mod.InferInput(name, list(array.shape), dtype)
        if name in placed:
            t.set_shared_memory(region_name, placed[name][1], offset=placed[name][0])
        else:
            t.set_data_from_numpy(array)
        ins.append(t)
    outs = []
    for name in outputs:
        r = mod.InferRequestedOutput(name)
        if name in placed:
            r.set_shared_memory(region_name, placed[name][1], offset=placed[name][0])
        outs.append(r)
    return ins, outs


class PerThread:
    """One object per thread, made by `make()` on the thread's first `get()`. Those of threads
    that have ended are closed when a new thread makes its own; `close()` closes all."""

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: List[Tuple[threading.Thread, object]] = []
        self._closed = False

    def get(self):
        obj = getattr(self._local, "obj", None)
        if obj is None:
            if self._closed:
                raise RuntimeError("the client is closed")
            obj = self._local.obj = self._make()
            with self._lock:
                ended = [o for t, o in self._made if not t.is_alive()]
                self._made = [(t, o) for t, o in self._made if t.is_alive()] + [(threading.current_thread(), obj)]
            for o in ended:
                o.close()  # idle: closing from another thread only closes its sockets
        return obj

    def close(self) -> None:
        with self._lock:
            made, self._made, self._closed = self._made, [], True
        for _, obj in made:
            obj.close()


class Connection:
    """tritonclient's client(s) for one URL, with the retry policy and the timeout on every call."""

    def __init__(self, url: str, protocol: str, timeout: float, retries: int, backoff: float) -> None:
        self.url, self.protocol = url, protocol
        self.retries, self.backoff = retries, backoff
        self.mod = protocol_module(protocol)
        if protocol == "grpc":
            client = self.mod.InferenceServerClient(url, channel_args=grpc_channel_args(self.mod))
            self.client: Callable[[], object] = lambda: client
            self._closer = client
            self.deadline = {"client_timeout": timeout}  # HTTP: the sockets' timeouts below
        else:
            clients = PerThread(lambda: self.mod.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout))
            self.client = clients.get
            self._closer = clients
            self.deadline = {}

    def call(self, method: str, *args, idempotent: bool = True, not_found=ServerError, **kwargs):
        """tritonclient's `method` with the retry policy (`client._transport.Retry`) and the timeout;
        a server it cannot reach is an error that names the likely cause (`unreachable_error`)."""
        retry = Retry(self.retries, self.backoff, f"{self.protocol}://{self.url}", idempotent, not_found)
        while True:
            try:
                return getattr(self.client(), method)(*args, **kwargs, **self.deadline)
            except TRANSPORT_EXCEPTIONS as e:
                try:
                    delay = retry.failed(e)
                except ServerUnavailableError as error:
                    raise unreachable_error(error, self.url, self.protocol) from e
                time.sleep(delay)

    def close(self) -> None:
        self._closer.close()


class ServerShm:
    """The server's side of system shared memory, as `client._shm.RegionPool` uses it. A samrt
    server serves this API only with its admin key (`samrt.wire.RESTRICTED_APIS`): `admin_key`
    goes in the header Triton reads (`samrt.wire.admin_headers`); without it, AccessDeniedError."""

    def __init__(self, conn: Connection, admin_key: Optional[str] = None) -> None:
        self.conn = conn
        self.headers = wire.admin_headers(conn.protocol, admin_key) or None

    def register(self, name: str, key: str, size: int) -> None:
        self.conn.call("register_system_shared_memory", name, key, size, headers=self.headers)

    def unregister(self, name: str) -> None:
        self.conn.call("unregister_system_shared_memory", name, headers=self.headers)

    def status(self) -> List[Tuple[str, str]]:
        """[(name, key)] of every system shared memory region registered with the server."""
        if self.conn.protocol == "grpc":
            regions = self.conn.call("get_system_shared_memory_status", as_json=True,
                                     headers=self.headers).get("regions", {}).values()
        else:
            regions = self.conn.call("get_system_shared_memory_status", headers=self.headers)
        return [(r["name"], r["key"]) for r in regions]

    def is_registered(self, name: str) -> bool:
        return any(n == name for n, _ in self.status())


class Endpoint:
    """A blocking client of one server; thread-safe. `infer` takes inputs as {name: (array,
    triton dtype)} and gives {name: array}; with `shared_memory`, numeric inputs and the outputs
    listed in `output_specs` go through a region leased to the request alone (`client._shm`)."""

    def __init__(self, url: str, protocol: str, timeout: float, retries: int, backoff: float,
                 shared_memory: bool = False, admin_key: Optional[str] = None) -> None:
        self.url, self.protocol = url, protocol
        self.conn = Connection(url, protocol, timeout, retries, backoff)
        self.pool = RegionPool(ServerShm(self.conn, admin_key)) if shared_memory else None
        # close(), garbage collection or interpreter exit: regions unregistered and unlinked, then the connections
        self._finalizer = weakref.finalize(self, _close, self.pool, self.conn)

    def infer(self, model: str, inputs: Inputs, outputs: Sequence[str], output_specs: Optional[OutputSpecs] = None,
              idempotent: bool = True, headers: Optional[Dict[str, str]] = None,
              priority: int = 0) -> Dict[str, np.ndarray]:
        """`priority`: Triton's request priority (0: the model's default; `samrt.wire`'s levels)."""
        kw = dict(idempotent=idempotent, not_found=not_found_error(model), headers=headers, **_priority(priority))
        placed, nbytes = layout(inputs, outputs, output_specs) if self.pool is not None else ({}, 0)
        if not placed:  # no shared memory, or nothing for it (ids and texts travel in the request)
            ins, outs = _request(self.conn.mod, inputs, outputs, {})
            result = self.conn.call("infer", model, ins, outputs=outs, **kw)
            return {o: result.as_numpy(o) for o in outputs}
        with self.pool.lease(nbytes) as region:
            for name, (array, _) in inputs.items():
                if name in placed:
                    region.write(array, placed[name][0])
            ins, outs = _request(self.conn.mod, inputs, outputs, placed, region.name)
            try:
                result = self.conn.call("infer", model, ins, outputs=outs, **kw)
            except (ServerUnavailableError, ServerTimeoutError):
                raise
            except ServerError:
                if not self.pool.register_again(region):  # True: the server restarted and forgot it
                    raise
                result = self.conn.call("infer", model, ins, outputs=outs, **kw)
            return {o: region.read(output_specs[o][0], output_specs[o][1], placed[o][0]) if o in placed
                    else result.as_numpy(o) for o in outputs}

    def is_ready(self) -> bool:
        try:
            return bool(self.conn.client().is_server_ready(**self.conn.deadline))
        except Exception:  # noqa: BLE001 - any failure to answer is "not ready"
            return False

    def model_config(self, model: str) -> dict:
        """The model's configuration (Triton's ModelConfig as JSON), the same for both protocols."""
        if self.protocol == "grpc":
            return self.conn.call("get_model_config", model, as_json=True)["config"]
        return self.conn.call("get_model_config", model)

    def statistics(self, model: str) -> dict:
        """Triton's statistics of `model`, counters as ints for both protocols."""
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        return _ints(self.conn.call("get_inference_statistics", model, **kw)["model_stats"][0])

    def close(self) -> None:
        self._finalizer()


def _close(pool: Optional[RegionPool], conn: Connection) -> None:
    if pool is not None:
        pool.close()
    conn.close()


class AsyncEndpoint:
    """`Endpoint` for asyncio (no shared memory): one tritonclient aio client, many tasks."""

    def __init__(self, url: str, protocol: str, timeout: float, retries: int, backoff: float) -> None:
        self.url, self.protocol = url, protocol
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._mod = protocol_module(protocol, aio=True)
        if protocol == "grpc":
            self._client = self._mod.InferenceServerClient(url, channel_args=grpc_channel_args(self._mod))
            self._deadline = {"client_timeout": timeout}
        else:  # aiohttp's total timeout per request (its default is 60 s, whatever `timeout` says)
            self._client = self._mod.InferenceServerClient(url, conn_timeout=timeout)
            self._deadline = {}

    async def call(self, method: str, *args, idempotent: bool = True, not_found=ServerError, **kwargs):
        retry = Retry(self.retries, self.backoff, f"{self.protocol}://{self.url}", idempotent, not_found)
        while True:
            try:
                return await getattr(self._client, method)(*args, **kwargs, **self._deadline)
            except TRANSPORT_EXCEPTIONS as e:
                try:
                    delay = retry.failed(e)
                except ServerUnavailableError as error:
                    raise await asyncio.to_thread(unreachable_error, error, self.url, self.protocol) from e
                await asyncio.sleep(delay)

    async def infer(self, model: str, inputs: Inputs, outputs: Sequence[str], output_specs=None,
                    idempotent: bool = True, headers: Optional[Dict[str, str]] = None,
                    priority: int = 0) -> Dict[str, np.ndarray]:
        ins, outs = _request(self._mod, inputs, outputs, {})
        result = await self.call("infer", model, ins, outputs=outs, idempotent=idempotent,
                                 not_found=not_found_error(model), headers=headers, **_priority(priority))
        return {o: result.as_numpy(o) for o in outputs}

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(**self._deadline))
        except Exception:  # noqa: BLE001 - any failure to answer is "not ready"
            return False

    async def model_config(self, model: str) -> dict:
        if self.protocol == "grpc":
            return (await self.call("get_model_config", model, as_json=True))["config"]
        return await self.call("get_model_config", model)

    async def statistics(self, model: str) -> dict:
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        return _ints((await self.call("get_inference_statistics", model, **kw))["model_stats"][0])

    async def close(self) -> None:
        await self._client.close()


def release_stale_regions(url: str, protocol: str = "grpc", timeout: float = 30.0,
                          admin_key: Optional[str] = None) -> List[str]:
    """Unregister the server's samrt shared-memory regions whose owning process is gone (killed
    before it could unregister them; `client._shm`) and remove their files; returns their names.
    Run it on the server's host (it reads /dev/shm), e.g. periodically beside the server. Every
    `SamClient(shared_memory=True)` does it once, on its first request. `admin_key`: the server's
    (None: the SAMRT_ADMIN_KEY environment variable); without it, AccessDeniedError."""
    conn = Connection(url, protocol, timeout, retries=0, backoff=0.0)
    try:
        return release_stale(ServerShm(conn, admin_key_or_env(admin_key)))
    finally:
        conn.close()
