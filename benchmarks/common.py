"""What every benchmark row carries: the machine, the library versions, the timed region, and
latency statistics (medians and percentiles over repeats, warm-up reported apart)."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from samrt.artifacts import prepare_output_dir

__all__ = ["machine_info", "latency_stats", "time_calls", "time_interleaved", "write_rows", "BUDGET_MS"]

BUDGET_MS = 50.0  # SAM's "amortized real time" per click


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU flags that decide which engines run fast (AVX-512 and its bf16/VNNI units, AMX): machines
# sold under one model name ("AMD EPYC") differ in them.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def _isa() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in _ISA_FLAGS if x in flags]
    except OSError:
        pass
    return []


def _gpu() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine_info() -> Dict[str, object]:
    versions = {}
    # Installed distributions (tritonclient has no __version__; nvidia-pytriton carries the server).
    for key, dists in (("numpy", ("numpy",)), ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
                       ("torch", ("torch",)), ("tritonclient", ("tritonclient",)), ("nvidia_pytriton", ("nvidia-pytriton",)),
                       ("openvino", ("openvino",))):
        versions[key] = None
        for dist in dists:
            try:
                versions[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": _cpu_model(), "isa": _isa(), "cores": os.cpu_count(), "memory_gib": mem, "gpu": _gpu(),
            "python": platform.python_version(), "os": platform.platform(), **{f"{k}_version": v for k, v in versions.items()}}


def latency_stats(ms: Iterable[float]) -> Dict[str, float]:
    a = np.asarray(list(ms), dtype=np.float64)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1, pause_s: float = 0.0) -> Dict[str, float]:
    """Warm-up calls (timed apart, reported as warmup_ms), then `repeats` timed calls, each after a
    `pause_s` sleep (not timed; a person's pause between clicks)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warm = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(repeats):
        if pause_s > 0:
            time.sleep(pause_s)
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {**latency_stats(times), "warmup_ms": warm, "warmup_calls": warmup}


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """An A/B (or more) in one run: each round calls every function once, in turn, so a machine
    whose speed drifts (a VM) slows them alike. -> {name: time_calls-style stats}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: latency_stats(v) for k, v in times.items()}


def write_rows(rows: List[dict], out_dir: str, name: str) -> Dict[str, str]:
    """rows -> <out>/<name>.json (with the machine) and <out>/<name>.csv (flat). `out_dir` must be
    new, empty, or a results folder samrt wrote (samrt.artifacts marker)."""
    prepare_output_dir(out_dir, "bench")
    machine = machine_info()
    rows = [{**r, "machine": machine} for r in rows]
    jpath, cpath = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.csv")
    with open(jpath, "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2, default=str)
    flat = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items() if k != "machine"}
            | {"cpu": machine["cpu"], "cores": machine["cores"], "gpu": machine["gpu"]} for r in rows]
    keys = sorted({k for r in flat for k in r})
    with open(cpath, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(flat)
    return {"json": jpath, "csv": cpath}
