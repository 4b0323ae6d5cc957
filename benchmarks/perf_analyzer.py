"""Triton's own load generator on sam_decode: realistic input data and the command to run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional

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


def find_perf_analyzer() -> Optional[str]:
    cand = os.path.join(os.path.dirname(sys.executable), "perf_analyzer")
    return cand if os.path.isfile(cand) else shutil.which("perf_analyzer")


def run_perf_analyzer(grpc_url: str, data_path: str, out_csv: str, concurrency: str = "1:16:3") -> List[str]:
    """The command line (always returned); runs it when the binary is found."""
    cmd = ["perf_analyzer", "-m", "sam_decode", "-u", grpc_url, "-i", "grpc", "--input-data", data_path,
           "--shape", "image_id:1", "--concurrency-range", concurrency, "-f", out_csv, "--measurement-interval", "5000"]
    binary = find_perf_analyzer()
    if binary:
        subprocess.run([binary] + cmd[1:], check=True, timeout=900)
    return cmd
