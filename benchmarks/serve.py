"""Serving-level latency: interactive sessions against a samrt server.

A session is one encode plus K clicks (each click waits for its mask before the next). Per
configuration (protocol, shared memory, dynamic batching, concurrency): click-to-mask
p50/p90/p99, throughput, and amortized ms per click = (encode + K clicks) / K, with the verdict
against the 50 ms budget. The reference is SamPredictor in one process doing the same work.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .common import BUDGET_MS, latency_stats

__all__ = ["run_sessions", "bench_serve", "reference_sessions"]


def run_sessions(url: str, protocol: str, concurrency: int, clicks: int, images: Sequence[np.ndarray],
                 shared_memory: bool = False) -> Dict[str, object]:
    """`concurrency` clients, each one session on its own image; returns latencies and throughput."""
    from samrt.client import SamClient

    encode_ms: List[float] = []
    click_ms: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency)
    rng = np.random.default_rng(concurrency)
    plans = [rng.uniform(0.1, 0.9, (clicks, 2)) for _ in range(concurrency)]

    def client(k: int) -> None:
        image = images[k % len(images)]
        h, w = image.shape[:2]
        try:
            with SamClient(url, protocol, shared_memory=shared_memory) as c:
                barrier.wait()
                t0 = time.perf_counter()
                enc = c.encode(image)
                t1 = time.perf_counter()
                mine = []
                for x, y in plans[k]:
                    t = time.perf_counter()
                    c.decode(enc.image_id, [[x * w, y * h]], [1], outputs=["masks", "iou_predictions"])
                    mine.append((time.perf_counter() - t) * 1e3)
            with lock:
                encode_ms.append((t1 - t0) * 1e3)
                click_ms.extend(mine)
        except Exception as e:  # a failed client is reported, not hidden
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"encode_ms": encode_ms, "click_ms": click_ms, "wall_s": wall, "errors": errors}


def _warm_up(url: str, protocol: str, shm: bool, image: np.ndarray) -> float:
    """One encode and two clicks before measuring (sessions, arenas, connections); timed apart."""
    from samrt.client import SamClient

    t = time.perf_counter()
    with SamClient(url, protocol, shared_memory=shm) as c:
        enc = c.encode(image)
        for _ in range(2):
            c.decode(enc.image_id, [[1, 1]], [1], outputs=["masks", "iou_predictions"])
    return (time.perf_counter() - t) * 1e3


def _summary(res: Dict[str, object], clicks: int, concurrency: int) -> dict:
    click = latency_stats(res["click_ms"]) if res["click_ms"] else {}
    enc = float(np.mean(res["encode_ms"])) if res["encode_ms"] else None
    amortized = (enc + float(np.sum(res["click_ms"])) / max(concurrency, 1)) / clicks if enc is not None else None
    return {
        "clicks_per_session": clicks,
        "click_to_mask": click,
        "encode_mean_ms": enc,
        "amortized_ms_per_click": amortized,
        "throughput_clicks_per_s": len(res["click_ms"]) / res["wall_s"] if res["wall_s"] else None,
        "errors": res["errors"][:3],
        "budget_ms": BUDGET_MS,
        "budget_met_p50": bool(click and click["p50_ms"] <= BUDGET_MS),
        "budget_met_amortized": bool(amortized is not None and amortized <= BUDGET_MS),
    }


def reference_sessions(sam, images: Sequence[np.ndarray], clicks: int) -> dict:
    """SamPredictor in one process: the same sessions, one after another."""
    import torch
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    rng = np.random.default_rng(1)
    enc, click = [], []
    with torch.no_grad():
        for image in images:
            h, w = image.shape[:2]
            t = time.perf_counter()
            predictor.set_image(image)
            enc.append((time.perf_counter() - t) * 1e3)
            for x, y in rng.uniform(0.1, 0.9, (clicks, 2)):
                t = time.perf_counter()
                predictor.predict(np.array([[x * w, y * h]]), np.array([1]))
                click.append((time.perf_counter() - t) * 1e3)
    res = {"encode_ms": enc, "click_ms": click, "wall_s": sum(enc + click) / 1e3, "errors": []}
    return _summary(res, clicks, 1)


DEFAULT_VARIANTS = (("on", "grpc", False), ("on", "http", False), ("on", "grpc", True), ("off", "grpc", False))


def bench_serve(repo_for: Dict[str, str], images: Sequence[np.ndarray], concurrency: Sequence[int] = (1, 4, 16),
                clicks: int = 10, variants: Sequence[tuple] = DEFAULT_VARIANTS, base: Optional[dict] = None,
                url: Optional[str] = None) -> List[dict]:
    """`variants`: (dynamic batching "on"/"off", protocol, shared memory). Servers for `repo_for`
    {"on": repo, "off": repo} are started here; with `url` only that server is measured. Each
    variant uses its own images, so every encode is a cache miss (a real encode)."""
    from samrt.model_repository.server import TritonServer

    rows = []
    per_variant = max(concurrency)
    for batching in (["external"] if url else sorted({v[0] for v in variants})):
        server = None if url else TritonServer(repo_for[batching], work_dir=os.path.join(
            os.path.dirname(repo_for[batching]), f"work_{batching}")).start()
        try:
            for i, (b, protocol, shm) in enumerate(variants):
                if not url and b != batching:
                    continue
                target = url or (server.grpc_url if protocol == "grpc" else server.http_url)
                warm = _warm_up(target, protocol, shm, images[-1])
                imgs = [images[(i * per_variant + k) % len(images)] for k in range(per_variant)]
                for c in concurrency:
                    res = run_sessions(target, protocol, c, clicks, imgs[:c], shm)
                    rows.append({**(base or {}), "bench": "serve", "dynamic_batching": b if not url else "as served",
                                 "protocol": protocol, "shared_memory": shm, "concurrency": c,
                                 "timed": "client side: encode, then each click until its mask arrives",
                                 "warmup_ms": warm, **_summary(res, clicks, c)})
        finally:
            if server:
                server.stop()
    return rows
