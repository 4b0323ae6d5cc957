"""client._shm without a server: the layout of a request's tensors, the pool's leases (a region
per request in flight), and how a dead process's regions are told from a live one's."""

import fcntl
import os
import threading

import numpy as np
import pytest

from samrt.client._shm import PREFIX, SHM_DIR, RegionPool, layout, release_stale, stale_regions

linux_shm = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason=f"{SHM_DIR} is Linux's POSIX shared memory")


class FakeServer:
    """The server's registrations, in memory."""

    def __init__(self):
        self.regions, self.calls = {}, []

    def register(self, name, key, size):
        self.calls.append(("register", name))
        self.regions[name] = key

    def unregister(self, name):
        self.calls.append(("unregister", name))
        self.regions.pop(name, None)

    def status(self):
        return list(self.regions.items())

    def is_registered(self, name):
        return name in self.regions


def test_layout_places_numeric_tensors_aligned():
    inputs = {"point_coords": (np.zeros((2, 3, 2), np.float32), "FP32"), "image_id": (np.array([[b"x"]]), "BYTES"),
              "point_labels": (np.zeros((2, 3), np.int32), "INT32")}
    specs = {"masks": (np.bool_, (2, 3, 5, 7)), "iou_predictions": (np.float32, (2, 3))}
    placed, total = layout(inputs, ["masks", "low_res_masks"], specs)
    assert placed == {"point_coords": (0, 48), "point_labels": (64, 24), "masks": (128, 210)}
    assert total == 128 + 256  # BYTES stay in the request; unrequested outputs take no room


@linux_shm
def test_a_region_per_request_in_flight():
    server = FakeServer()
    pool = RegionPool(server)
    with pool.lease(100) as a, pool.lease(100) as b:  # two requests in flight: two regions
        assert a.name != b.name and set(server.regions) == {a.name, b.name}
        assert a.name.startswith(f"{PREFIX}{os.getpid()}_") and os.path.exists(os.path.join(SHM_DIR, a.name))
        a.write(np.arange(4, dtype=np.int32), 0)
        b.write(np.arange(4, dtype=np.int32) + 10, 0)
        assert a.read(np.int32, (4,), 0).tolist() == [0, 1, 2, 3]
    with pool.lease(100) as c:  # one at a time: a region is reused
        assert c.name in (a.name, b.name)
    with pool.lease(c.size + 1) as big:  # too small for this one: an idle region is replaced, not added
        assert big.size > c.size
    assert len(server.regions) == 2 and c.name not in server.regions
    names = list(server.regions)
    pool.close()
    assert server.regions == {} and not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)
    with pytest.raises(RuntimeError, match="closed"):
        with pool.lease(10):
            pass


@linux_shm
def test_threads_never_share_a_region():
    server = FakeServer()
    pool = RegionPool(server)
    held, clashes, lock = set(), [], threading.Lock()

    def work(i):
        for _ in range(50):
            with pool.lease(64) as r:
                with lock:
                    if r.name in held:
                        clashes.append(r.name)
                    held.add(r.name)
                r.write(np.full(16, i, np.int32), 0)
                got = r.read(np.int32, (16,), 0)
                with lock:
                    held.discard(r.name)
                if not (got == i).all():
                    clashes.append(f"thread {i} read {got[:2]}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == [] and 1 <= len(server.regions) <= 8
    pool.close()


@linux_shm
def test_closing_while_a_request_is_in_flight():
    server = FakeServer()
    pool = RegionPool(server)
    with pool.lease(10) as r:
        pool.close()
        r.write(np.ones(2, np.int32), 0)  # still usable by its request
        assert r.name in server.regions
    assert server.regions == {}  # released when the request gave it back


@linux_shm
def test_an_unregister_the_server_misses_once_is_tried_again(caplog):
    """A busy server can miss the client's deadline on an unregister: close() tries again, and
    after three misses says so (the next client's sweep removes the region) and frees its side."""
    class Flaky(FakeServer):
        def __init__(self, misses):
            super().__init__()
            self.misses = misses

        def unregister(self, name):
            if self.misses:
                self.misses -= 1
                raise TimeoutError("Deadline Exceeded")
            super().unregister(name)

    server = Flaky(misses=2)
    pool = RegionPool(server)
    with pool.lease(100) as a:
        pass
    pool.close()
    assert server.regions == {} and not os.path.exists(os.path.join(SHM_DIR, a.name))
    server = Flaky(misses=3)
    pool = RegionPool(server)
    with pool.lease(100) as b:
        pass
    with caplog.at_level("WARNING", logger="samrt.client"):
        pool.close()
    assert b.name in server.regions and not os.path.exists(os.path.join(SHM_DIR, b.name))
    assert f"shared memory region {b.name}: unregistering failed (TimeoutError: Deadline Exceeded)" in caplog.text


@linux_shm
def test_stale_regions_are_those_nobody_holds():
    pid = os.getpid()
    live, dead, gone = (f"{PREFIX}{pid}_test_{k}" for k in ("live", "dead", "gone"))
    paths = [os.path.join(SHM_DIR, n) for n in (live, dead)]
    fds = [os.open(p, os.O_CREAT | os.O_RDWR, 0o600) for p in paths]
    try:
        fcntl.flock(fds[0], fcntl.LOCK_SH)  # its owner lives
        server = FakeServer()
        for name in (live, dead, gone, "someone_elses_region"):
            server.register(name, "/" + name, 1)
        found = stale_regions(server.status())
        assert sorted(n for n, _ in found) == sorted([dead, gone])
        for _, fd in found:
            if fd is not None:
                os.close(fd)
        assert sorted(release_stale(server)) == sorted([dead, gone])
        assert sorted(server.regions) == sorted([live, "someone_elses_region"])
        assert os.path.exists(paths[0]) and not os.path.exists(paths[1])
    finally:
        for fd in fds:
            os.close(fd)
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)
