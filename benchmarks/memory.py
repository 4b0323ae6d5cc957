"""A running server's memory, process by process (`samrt bench memory`).

What is measured: PSS (proportional set size, `/proc/<pid>/smaps_rollup`) of tritonserver and of
each python-backend stub (by Triton's instance name, e.g. "sam_image_encoder_0_0"). A page shared
by n processes counts 1/n in each, so the sum over the processes is what the server takes from the
machine (the launcher, a small Python process, is not in it). Sampled every `interval` s in a thread;
each phase reports the peak of the sum and each process's own peak.

Phases:
- "idle": after the start and one warm-up image (encoded and clicked, so every model has run once);
- "encode": while one new image is encoded, then clicked;
- "load <n> clients": n clients at once, each encoding `rounds` new images and clicking `clicks`
  times on each (sustained load; the embedding cache fills).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from samrt.client import SamClient
from samrt.model_repository.server import TritonServer

__all__ = ["proc_kib_field", "pss_bytes", "server_pids", "PssSampler", "bench_memory"]

GIB = 2**30


def proc_kib_field(pid: int, file: str, field: str) -> Optional[int]:
    """A "<field> <n> kB" line of /proc/<pid>/<file>, in bytes; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pss_bytes(pid: int) -> Optional[int]:
    """PSS of process `pid` in bytes (smaps_rollup's "Pss:" line); None when it is gone."""
    return proc_kib_field(pid, "smaps_rollup", "Pss:")


def server_pids(server: TritonServer) -> Callable[[], Dict[str, int]]:
    """What `PssSampler` reads of a server: {"tritonserver": PID, instance name: PID of its stub}."""
    return lambda: {"tritonserver": server.process.pid, **server.model_processes()}


class PssSampler:
    """Samples the PSS of the processes `pids()` names ({name: PID}; see `server_pids`) every
    `interval` s between start and stop: the peak of the total and each process's peak, in bytes."""

    def __init__(self, pids: Callable[[], Dict[str, int]], interval: float = 0.1) -> None:
        self.pids, self.interval = pids, interval
        self.peak_total = 0
        self.peak: Dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> Dict[str, int]:
        now = {name: b for name, b in ((n, pss_bytes(p)) for n, p in self.pids().items()) if b is not None}
        self.samples += 1
        self.peak_total = max(self.peak_total, sum(now.values()))
        for name, b in now.items():
            self.peak[name] = max(self.peak.get(name, 0), b)
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PssSampler":
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def grouped(peak: Dict[str, int]) -> Dict[str, float]:
    """{model: MiB} summed over the model's instances (instance peaks: an upper bound of the sum)."""
    out: Dict[str, float] = {}
    for name, b in peak.items():
        model = name if name == "tritonserver" else name.rsplit("_", 2)[0]
        out[model] = round(out.get(model, 0.0) + b / 2**20, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# A load phase queues every client's encode at once (32 vit_b encodes take minutes on 2 cores):
# a call's deadline is the phase's, not an interactive one.
SESSION_TIMEOUT_S = 3600.0


def session(url: str, images: Sequence[np.ndarray], clicks: int, seed: int) -> None:
    """One client: encode each image, then `clicks` random single clicks on it."""
    rng = np.random.default_rng(seed)
    with SamClient(url, timeout=SESSION_TIMEOUT_S) as c:
        for image in images:
            enc = c.encode(image)
            h, w = image.shape[:2]
            for _ in range(clicks):
                point = [[float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))]]
                c.decode(enc, point, [1])


def bench_memory(repo: str, images: Sequence[np.ndarray], clients: Sequence[int], rounds: int, clicks: int,
                 work_dir: str, base: Optional[dict] = None, interval: float = 0.1,
                 server: Optional[TritonServer] = None) -> List[dict]:
    """Start a server on `repo` (or measure `server`, already running) and measure the phases
    above; one row per phase. `images` needs at least 2 + sum(clients) * rounds images (every
    session encodes images no one encoded before)."""
    need = 2 + sum(clients) * rounds
    if len(images) < need:
        raise ValueError(f"images: got {len(images)}, expected at least {need} (2 + sum(clients) * rounds)")
    if server is None:
        t0 = time.perf_counter()
        with TritonServer(repo, work_dir=work_dir) as started:
            rows = _phases(started, images, clients, rounds, clicks, base, interval)
        rows[0]["start_s"] = round(time.perf_counter() - t0 - sum(r["seconds"] for r in rows), 1)
        return rows
    return _phases(server, images, clients, rounds, clicks, base, interval)


def _phases(server: TritonServer, images, clients, rounds, clicks, base, interval) -> List[dict]:
    base = dict(base or {})
    rows: List[dict] = []

    def row(phase: str, s: PssSampler, seconds: float, **extra) -> dict:
        return {**base, "bench": "memory", "phase": phase, "peak_total_gib": round(s.peak_total / GIB, 3),
                "per_model_peak_mib": grouped(s.peak), "processes": len(s.peak), "seconds": round(seconds, 1),
                "samples": s.samples, **extra}

    url, pids = server.grpc_url, server_pids(server)
    session(url, images[:1], 2, seed=0)  # every model runs once
    time.sleep(1.0)
    with PssSampler(pids, interval) as s:
        time.sleep(max(1.0, 5 * interval))
    rows.append(row("idle", s, 0.0))
    with PssSampler(pids, interval) as s:
        t = time.perf_counter()
        session(url, images[1:2], 2, seed=1)
    rows.append(row("encode", s, time.perf_counter() - t))
    next_image = 2
    for n in clients:
        with PssSampler(pids, interval) as s:
            t = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                futures = [pool.submit(session, url, images[next_image + i * rounds: next_image + (i + 1) * rounds],
                                       clicks, seed=100 + i) for i in range(n)]
                for f in futures:
                    f.result()
        next_image += n * rounds
        rows.append(row(f"load {n} clients", s, time.perf_counter() - t, clients=n, rounds=rounds, clicks=clicks))
        with PssSampler(pids, interval) as s:  # what stays after the load
            time.sleep(max(1.0, 5 * interval))
        rows.append(row(f"idle after {n} clients", s, 0.0))
    return rows
