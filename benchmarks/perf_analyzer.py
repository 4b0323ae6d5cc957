"""Triton's own load generator on sam_decode: realistic input data and the command to run it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["write_decode_input_data", "find_perf_analyzer", "run_perf_analyzer"]


def write_decode_input_data(path: str, image_id: str, original_size, clicks: int = 16, seed: int = 0) -> str:
    """perf_analyzer --input-data JSON: `clicks` single-click prompts on an encoded image."""
    rng = np.random.default_rng(seed)
    h, w = original_size
    data = [{"image_id": {"content": [image_id], "shape": [1]},
             "point_coords": {"content": [float(rng.uniform(0, w)), float(rng.uniform(0, h))], "shape": [1, 2]},
             "point_labels": {"content": [1], "shape": [1]}} for _ in range(clicks)]
    with open(path, "w") as f:
        json.dump({"data": data}, f)
    return path


# `make perf-analyzer` installs the binary into its own venv (the tritonclient 2.51.0 that carries
# it would otherwise replace the SDK's newer client) together with the CUDA runtime it links to.
PERF_VENV = os.environ.get("SAMRT_PERF_VENV", ".venv-perf")


def find_perf_analyzer() -> Optional[str]:
    """$SAMRT_PERF_ANALYZER, the perf venv's bin/, this interpreter's bin/, then PATH."""
    for cand in (os.environ.get("SAMRT_PERF_ANALYZER"), os.path.join(PERF_VENV, "bin", "perf_analyzer"),
                 os.path.join(os.path.dirname(sys.executable), "perf_analyzer")):
        if cand and os.path.isfile(cand):
            return os.path.abspath(cand)
    return shutil.which("perf_analyzer")


def _library_path(binary: str) -> str:
    """LD_LIBRARY_PATH with libcudart.so.12 from the binary's venv (nvidia-cuda-runtime-cu12), if present."""
    venv = os.path.dirname(os.path.dirname(binary))
    dirs = sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "nvidia", "cuda_runtime", "lib")))
    return os.pathsep.join(dirs + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])


def run_perf_analyzer(grpc_url: str, data_path: str, out_csv: str, concurrency: str = "1:16:3",
                      measurement_ms: int = 5000, stability_percent: float = 10.0,
                      log_path: Optional[str] = None) -> Tuple[List[str], Optional[str]]:
    """(the command line, the binary that ran it or None when none is installed).

    The command is always returned so docs/benchmarks.md and the rows can show it; with `log_path`,
    perf_analyzer's own report (latency breakdown per concurrency) is kept there."""
    cmd = ["perf_analyzer", "-m", "sam_decode", "-u", grpc_url, "-i", "grpc", "--input-data", data_path,
           "--shape", "image_id:1", "--concurrency-range", concurrency, "-f", out_csv,
           "--measurement-interval", str(measurement_ms), "--stability-percentage", f"{stability_percent:g}",
           "--max-trials", "20"]
    binary = find_perf_analyzer()
    if binary:
        env = {**os.environ, "LD_LIBRARY_PATH": _library_path(binary)}
        res = subprocess.run([binary] + cmd[1:], env=env, timeout=900, capture_output=True, text=True)
        if log_path:
            with open(log_path, "w") as f:
                f.write(res.stdout + res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"perf_analyzer exited with {res.returncode}: {(res.stderr or res.stdout)[-800:]}")
    return cmd, binary
