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
from typing import Dict, List, Optional, Sequence

import numpy as np

from samrt.client import SamClient
from samrt.model_repository.server import TritonServer

__all__ = ["pss_bytes", "server_pss", "PssSampler", "bench_memory"]

GIB = 2**30


def pss_bytes(pid: int) -> Optional[int]:
    """PSS of process `pid` in bytes (smaps_rollup's "Pss:" line, kB); None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def server_pss(server: TritonServer) -> Dict[str, int]:
    """{process: PSS bytes} of tritonserver ("tritonserver") and its live stubs (instance names)."""
    pids = {"tritonserver": server.process.pid, **server.model_processes()}
    return {name: b for name, b in ((n, pss_bytes(p)) for n, p in pids.items()) if b is not None}


class PssSampler:
    """Samples `server_pss` every `interval` s between start() and stop(): the peak of the total
    and each process's peak, in bytes."""

    def __init__(self, server: TritonServer, interval: float = 0.1) -> None:
        self.server, self.interval = server, interval
        self.peak_total = 0
        self.peak: Dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> Dict[str, int]:
        now = server_pss(self.server)
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


def _grouped(peak: Dict[str, int]) -> Dict[str, float]:
    """{model: MiB} summed over the model's instances (instance peaks: an upper bound of the sum)."""
    out: Dict[str, float] = {}
    for name, b in peak.items():
        model = name if name == "tritonserver" else name.rsplit("_", 2)[0]
        out[model] = round(out.get(model, 0.0) + b / 2**20, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _session(url: str, images: Sequence[np.ndarray], clicks: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with SamClient(url) as c:
        for image in images:
            enc = c.encode(image)
            h, w = image.shape[:2]
            for _ in range(clicks):
                point = [[float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))]]
                c.decode(enc, point, [1])


def bench_memory(repo: str, images: Sequence[np.ndarray], clients: Sequence[int], rounds: int, clicks: int,
                 work_dir: str, base: Optional[dict] = None, interval: float = 0.1) -> List[dict]:
    """Start a server on `repo` and measure the phases above; one row per phase. `images` needs at
    least 2 + sum(clients) * rounds images (every session encodes images no one encoded before)."""
    need = 2 + sum(clients) * rounds
    if len(images) < need:
        raise ValueError(f"images: got {len(images)}, expected at least {need} (2 + sum(clients) * rounds)")
    base = dict(base or {})
    rows: List[dict] = []

    def row(phase: str, s: PssSampler, seconds: float, **extra) -> dict:
        return {**base, "bench": "memory", "phase": phase, "peak_total_gib": round(s.peak_total / GIB, 3),
                "per_model_peak_mib": _grouped(s.peak), "processes": len(s.peak), "seconds": round(seconds, 1),
                "samples": s.samples, **extra}

    t0 = time.perf_counter()
    with TritonServer(repo, work_dir=work_dir) as server:
        start_s = time.perf_counter() - t0
        url = server.grpc_url
        _session(url, images[:1], 2, seed=0)  # every model runs once
        time.sleep(1.0)
        with PssSampler(server, interval) as s:
            time.sleep(max(1.0, 5 * interval))
        rows.append(row("idle", s, 0.0, start_s=round(start_s, 1)))
        with PssSampler(server, interval) as s:
            t = time.perf_counter()
            _session(url, images[1:2], 2, seed=1)
        rows.append(row("encode", s, time.perf_counter() - t))
        next_image = 2
        for n in clients:
            with PssSampler(server, interval) as s:
                t = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    futures = [pool.submit(_session, url, images[next_image + i * rounds: next_image + (i + 1) * rounds],
                                           clicks, seed=100 + i) for i in range(n)]
                    for f in futures:
                        f.result()
            next_image += n * rounds
            rows.append(row(f"load {n} clients", s, time.perf_counter() - t, clients=n, rounds=rounds, clicks=clicks))
            with PssSampler(server, interval) as s:  # what stays after the load
                time.sleep(max(1.0, 5 * interval))
            rows.append(row(f"idle after {n} clients", s, 0.0))
    return rows
