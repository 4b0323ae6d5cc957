"""Peak memory of the click path's model processes (`sam_decode` is an ensemble: prompt prep,
the decoder with the cache, upscaling) for many prompts in one request (the issue's "a documented
request must not kill the server"): each stub's VmHWM (peak RSS) above its RSS after a warm-up
click, on a real tritonserver. `python -m samrt.benchmarks.decode_memory --export DIR --out DIR`.

The timed region is not the point here: each row is one request's memory (boxes as prompts,
masks + iou_predictions + low_res_masks asked, as SamPredictor.predict_torch returns them)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List

import numpy as np

from samrt.artifacts import ExportManifest
from samrt.client import SamClient
from samrt.model_repository.render import RepoOptions, render_repository
from samrt.model_repository.server import TritonServer
from samrt.wire import click_path

from .common import write_rows

__all__ = ["measure_decode_memory"]


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_decode_memory(export_dir: str, work_dir: str, cases=((480, 640, 256, True), (3024, 4032, 64, True))) -> List[Dict]:
    """Rows: image size, prompts, masks per prompt, the stub's RSS before and its peak after (MiB)."""
    m = ExportManifest.read(export_dir)
    rows = []
    for h, w, p, multimask in cases:
        repo = render_repository(m.config, m.encoder_path, m.fast_decoder_paths, os.path.join(work_dir, f"repo_{h}x{w}"),
                                 RepoOptions(max_prompts=256, max_pixels=64 * 2**20))
        with TritonServer(repo, work_dir=os.path.join(work_dir, f"w_{h}x{w}")) as server:
            steps = [st.model for st in click_path(native=False)]
            pids = {k.rsplit("_", 2)[0]: v for k, v in server.model_processes().items()
                    if k.rsplit("_", 2)[0] in steps}
            rng = np.random.default_rng(0)
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            with SamClient(server.grpc_url, timeout=1800) as c:
                image_id = c.encode(image).image_id
                c.decode(image_id, [[w / 2, h / 2]], [1])  # warm-up: sessions and arenas exist
                idle = {k: _kib(pid, "VmRSS") for k, pid in pids.items()}
                x0, y0 = rng.uniform(0, w * 0.6, p), rng.uniform(0, h * 0.6, p)
                boxes = np.stack([x0, y0, x0 + w * 0.3, y0 + h * 0.3], 1)
                t = time.perf_counter()
                out = c.decode(image_id, boxes.reshape(-1, 2, 2), np.tile([2, 3], (p, 1)), multimask_output=multimask)
                seconds = time.perf_counter() - t
                peak = {k: _kib(pid, "VmHWM") for k, pid in pids.items()}
            rows.append({"bench": "decode_memory", "image": [h, w], "prompts": p, "masks_per_prompt": 3 if multimask else 1,
                         "response_mib": round(sum(v.nbytes for v in out.values()) / 2**20, 1),
                         "stub_rss_idle_mib": {k: round(v / 1024, 1) for k, v in idle.items()},
                         "stub_peak_mib": {k: round(v / 1024, 1) for k, v in peak.items()},
                         "peak_above_idle_by_step_mib": {k: round((peak[k] - idle[k]) / 1024, 1) for k in peak},
                         "peak_above_idle_mib": round(max(peak[k] - idle[k] for k in peak) / 1024, 1),
                         "seconds": round(seconds, 2),
                         "model": m.describe(),
                         "timed": "memory of each process of the sam_decode ensemble for one SDK decode call "
                                  "(peak_above_idle_mib: the largest; split by the SDK only above the server's "
                                  "prompt or response limit)"})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="build/decode_memory")
    args = ap.parse_args()
    print(write_rows(measure_decode_memory(args.export, args.work), args.out, "decode_memory"))


if __name__ == "__main__":
    main()
