"""System shared memory for `SamClient(shared_memory=True)`: a region per request in flight.

- A pool per server. A request leases a region big enough for its tensors (`layout`), keeps it
  until its outputs are copied out, and gives it back: two requests in flight never share a
  region, and the pool holds as many regions as the most requests the client had in flight at
  once (an idle region too small for a request is replaced by a bigger one).
- Names: `samrt_shm_<pid>_<token>_<n>` (the pid for a person reading the server's status, a
  random token per pool, a counter). The key is `/<name>`, the file `/dev/shm/<name>`.
- The owner holds a shared `flock` on the region's file from before it is registered until after
  it is unregistered and unlinked; the kernel drops the lock when the process ends, however it
  ends (SIGKILL, OOM). That is how another process tells a live region from a dead one, across
  PID namespaces and without trusting recycled pids.
- Released (unregistered from the server, then unlinked) by `close()`, when the client is garbage
  collected, and at interpreter exit (`weakref.finalize`).
- A crashed client leaves its registrations on the server (which keeps the memory mapped). The
  first request of every pool sweeps the server's status once its own region is registered (so
  it shares the server's /dev/shm): a `samrt_shm_` region whose file is gone, or whose file
  nobody holds a lock on, is unregistered and its file removed. `release_stale_regions(url)` does
  the same on demand, e.g. from a supervisor that runs it periodically beside the server.
- A restarted server knows no registrations: a request that fails while the server's status does
  not list its region registers the region again and is sent once more (`Endpoint.infer`).

Why a pool and not a region per request: a region per request costs two more round trips
(register, unregister) and an mmap/munmap on the server for every request. Next to a click of the
tiny test model on a loaded machine that was about 1% (not a benchmark), but a served click on a
quiet machine takes a few milliseconds, where it would not be small; the pool pays it once per
region. What the per-request regions would have bought (nothing left registered between
requests) the owner's lock and the sweep give too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["PREFIX", "RegionPool", "Region", "layout", "stale_regions"]

PREFIX = "samrt_shm_"
SHM_DIR = "/dev/shm"
MIN_REGION_BYTES = 1 << 20
ALIGN = 64
_create_lock = threading.Lock()  # tritonclient's shared_memory keeps a module-level table of keys
UNREGISTER_TRIES = 3
log = logging.getLogger("samrt.client")


def layout(inputs: Dict[str, Tuple[np.ndarray, str]], outputs: Sequence[str],
           output_specs: Optional[Dict[str, Tuple[np.dtype, Tuple[int, ...]]]]) -> Tuple[Dict[str, Tuple[int, int]], int]:
    """Where each tensor goes in one request's region: {name: (offset, bytes)} for the numeric
    inputs and the requested outputs of known size (`output_specs`: dtype, shape), each aligned to
    64 bytes, and the bytes the region needs. BYTES tensors stay in the request."""
    placed: Dict[str, Tuple[int, int]] = {}
    offset = 0
    sizes = [(name, arr.nbytes) for name, (arr, dtype) in inputs.items() if dtype != "BYTES"]
    sizes += [(name, int(np.prod(shape)) * np.dtype(dt).itemsize)
              for name, (dt, shape) in (output_specs or {}).items() if name in outputs]
    for name, n in sizes:
        placed[name] = (offset, n)
        offset += -(-n // ALIGN) * ALIGN
    return placed, offset


@dataclass
class Region:
    name: str
    size: int
    handle: object  # tritonclient.utils.shared_memory.SharedMemoryRegion
    lock_fd: Optional[int]

    @property
    def key(self) -> str:
        return "/" + self.name

    def write(self, array: np.ndarray, offset: int) -> None:
        from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

        shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(array)], offset=offset)

    def read(self, dtype, shape, offset: int) -> np.ndarray:
        """A copy: the region is leased to the next request as soon as this one is done."""
        from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

        return shm.get_contents_as_numpy(self.handle, np.dtype(dtype), shape, offset=offset).copy()


class RegionPool:
    """The regions of one client for one server. Thread-safe: `lease` from any thread. `server`
    has `register(name, key, size)`, `unregister(name)`, `status()` -> [(name, key)] and
    `is_registered(name)` (`client._endpoints.ServerShm`)."""

    def __init__(self, server) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._token = secrets.token_hex(4)
        self._counter = itertools.count()
        self._idle: List[Region] = []
        self._leased: List[Region] = []
        self._swept = False
        self._closed = False
        self.released: List[str] = []  # stale regions of dead processes this pool unregistered

    @contextlib.contextmanager
    def lease(self, nbytes: int) -> Iterator[Region]:
        """A region of at least `nbytes`, registered with the server, for this request alone."""
        region = self._take(nbytes)
        try:
            yield region
        finally:
            with self._lock:
                self._leased.remove(region)
                keep = not self._closed
                if keep:
                    self._idle.append(region)
            if not keep:  # closed while this request was in flight
                self._unregister_and_destroy(region)

    def _take(self, nbytes: int) -> Region:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: the parent's regions are the parent's
                self._reset()
            if self._closed:
                raise RuntimeError("shared memory: the client is closed")
            fits = [r for r in self._idle if r.size >= nbytes]
            if fits:
                region = min(fits, key=lambda r: r.size)
                self._idle.remove(region)
                self._leased.append(region)
                return region
            too_small = self._idle.pop() if self._idle else None
            name = f"{PREFIX}{self._pid}_{self._token}_{next(self._counter)}"
        if too_small is not None:
            self._unregister_and_destroy(too_small)
        region = _create(name, 1 << max(nbytes, MIN_REGION_BYTES).bit_length())
        try:
            self.server.register(region.name, region.key, region.size)
        except BaseException:
            _destroy(region)
            raise
        with self._lock:
            self._leased.append(region)
            sweep, self._swept = not self._swept, True
        if sweep:  # now that the server took a region of ours: we see its /dev/shm
            try:
                self.released += release_stale(self.server)
            except Exception:  # noqa: BLE001 - housekeeping for dead processes; this request goes on
                pass
        return region

    def register_again(self, region: Region) -> bool:
        """After a failed request: when the server does not know the region (it restarted),
        register it again and return True (send the request once more); False otherwise."""
        if self.server.is_registered(region.name):
            return False
        self.server.register(region.name, region.key, region.size)
        return True

    def close(self) -> None:
        """Unregister and unlink every region: the idle ones now, those in flight when their
        request is done. Only in the process that made them (not in a forked child)."""
        with self._lock:
            if os.getpid() != self._pid or self._closed:
                return
            self._closed = True
            regions, self._idle = self._idle, []
        for region in regions:
            self._unregister_and_destroy(region)

    def _unregister_and_destroy(self, region: Region) -> None:
        """Unregister (three tries: a busy server can miss the client's deadline once), then unlink.
        A server that is gone has nothing registered; our side is freed either way, and a region the
        server still lists is swept by the next client (its file and lock are gone: `stale_regions`)."""
        for attempt in range(UNREGISTER_TRIES):
            try:
                self.server.unregister(region.name)
                break
            except Exception as e:  # noqa: BLE001 - any failure: try again, then leave it to the sweep
                if attempt == UNREGISTER_TRIES - 1:
                    log.warning("shared memory region %s: unregistering failed (%s: %s); the next client's "
                                "sweep removes it", region.name, type(e).__name__, e)
                else:
                    time.sleep(0.2 * (attempt + 1))
        _destroy(region)


def _create(name: str, size: int) -> Region:
    from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

    with _create_lock:
        handle = shm.create_shared_memory_region(name, "/" + name, size, create_only=True)
    lock_fd = None
    path = os.path.join(SHM_DIR, name)
    if os.path.exists(path):  # Linux: the region's file; its lock says that this process lives
        lock_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(lock_fd, fcntl.LOCK_SH)
    return Region(name, size, handle, lock_fd)


def _destroy(region: Region) -> None:
    from tritonclient.utils import shared_memory as shm  # tritonclient: the client extra

    with _create_lock:
        shm.destroy_shared_memory_region(region.handle)  # unlinks the file
    if region.lock_fd is not None:
        os.close(region.lock_fd)
        region.lock_fd = None


def stale_regions(status: Sequence[Tuple[str, str]]) -> List[Tuple[str, Optional[int]]]:
    """The samrt regions of `status` ([(name, key)] as the server lists them) whose owner is gone:
    [(name, fd holding an exclusive lock on its file, or None when the file is gone)]. The caller
    unregisters them, then unlinks and closes. Only meaningful in a process that shares the
    server's /dev/shm (one whose own region the server accepted)."""
    out: List[Tuple[str, Optional[int]]] = []
    if not os.path.isdir(SHM_DIR):
        return out
    for name, key in status:
        if not name.startswith(PREFIX) or key != "/" + name:
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            out.append((name, None))  # unlinked: by its owner on close, or by its resource tracker on a crash
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            continue  # its owner lives
        out.append((name, fd))
    return out


def release_stale(server) -> List[str]:
    """Unregister the server's samrt regions whose owner is gone and remove their files; returns
    their names."""
    released = []
    for name, fd in stale_regions(server.status()):
        try:
            server.unregister(name)
            released.append(name)
        except Exception:  # noqa: BLE001 - another sweeper was first, or the server went away
            pass
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
            os.close(fd)
    return released
