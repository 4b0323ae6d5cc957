"""`samrt bench engines|serve|amg`: run, write rows (JSON + CSV with the machine) and plots."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .common import write_rows
from .plots import plot_all

__all__ = ["run_engines", "run_serve", "run_amg"]


def _saved(paths: Dict[str, str]) -> List[dict]:
    """The rows as written (each with the machine's description)."""
    import json

    with open(paths["json"]) as f:
        return json.load(f)["rows"]


def _images(n: int, size: Optional[int] = None) -> List[np.ndarray]:
    from samrt.scenes import scene_for_index

    return [scene_for_index(i, stream=11, long_side=size).image for i in range(n)]


def _model(model_type: str, checkpoint: Optional[str], build_dir: str):
    """(export dir, export report, torch model) for a checkpoint, the embedded model, or random init."""
    from samrt.demo import ensure_export
    from samrt.export import load_sam, random_sam
    from samrt.spec import get_config

    if checkpoint:
        sam, cfg = load_sam(checkpoint)
        export_dir = os.path.join(build_dir, "export_" + cfg.model_type)
        return export_dir, ensure_export(export_dir, "auto", checkpoint), sam
    cfg = get_config(model_type)
    export_dir = os.path.join(build_dir, "export_" + model_type)
    return export_dir, ensure_export(export_dir, model_type, None), random_sam(cfg, seed=0)


def run_engines(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str,
                export_dir: Optional[str] = None, prompts: Sequence[int] = (1, 4, 16, 64, 256),
                precisions: Sequence[str] = ("fp32", "int8", "fp16"),
                openvino_precisions: Sequence[str] = ("fp32", "bf16", "int8")) -> Dict[str, str]:
    from .engines import bench_engines

    rows = bench_engines(model_type, checkpoint, build_dir, quick, prompts=prompts, export_dir=export_dir,
                         precisions=precisions, openvino_precisions=openvino_precisions)
    paths = write_rows(rows, out, "engines")
    plot_all(_saved(paths), out)
    return paths


def run_serve(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str,
              url: Optional[str], concurrency: Sequence[int], clicks: int) -> Dict[str, str]:
    from samrt.client import SamClient
    from samrt.model_repository.render import RepoOptions, render_repository
    from samrt.spec import SamConfig

    from .perf_analyzer import run_perf_analyzer, write_decode_input_data
    from .serve import bench_serve, reference_sessions

    from .serve import DEFAULT_VARIANTS

    variants = DEFAULT_VARIANTS
    if quick:
        concurrency, clicks = [c for c in concurrency if c <= 4][:2] or [1], min(clicks, 5)
        variants = (("on", "grpc", False),)
    images = _images(max(concurrency) * len(variants), 320 if quick else None)
    rows: List[dict] = []
    repos: Dict[str, str] = {}
    base = {"model": "external", "random_init": None}
    if url is None:
        export_dir, report, sam = _model(model_type, checkpoint, build_dir)
        cfg = SamConfig.from_dict(report["config"])
        base = {"model": report["name"], "random_init": report["random_init"]}
        enc, dec = (os.path.join(export_dir, report[g]["path"]) for g in ("encoder", "decoder"))
        for mode in ("on", "off"):
            repos[mode] = render_repository(cfg, enc, dec, os.path.join(build_dir, f"repo_batching_{mode}"),
                                            RepoOptions(dynamic_batching=mode == "on"))
        ref = reference_sessions(sam, images[: max(1, min(2, len(images)))], clicks)
        rows.append({**base, "bench": "serve", "dynamic_batching": "n/a", "protocol": "in-process (SamPredictor)",
                     "shared_memory": False, "concurrency": 1, "timed": "SamPredictor.set_image, then predict per click",
                     **ref})
    if url:
        variants = tuple(v for v in variants if v[0] == "on")  # one server as given: batching as it is
    rows += bench_serve(repos, images, concurrency, clicks, variants, base=base, url=url)
    if not quick:  # Triton's own load generator, where its binary is installed
        from samrt.model_repository.server import TritonServer

        server = None if url else TritonServer(repos["on"], work_dir=os.path.join(build_dir, "work_pa")).start()
        try:
            target = url or server.grpc_url
            with SamClient(target) as c:
                enc = c.encode(images[0])
            data = write_decode_input_data(os.path.join(out, "perf_analyzer_sam_decode.json"), enc.image_id, enc.original_size)
            try:
                cmd, binary = run_perf_analyzer(target, data, os.path.join(out, "perf_analyzer.csv"),
                                                log_path=os.path.join(out, "perf_analyzer.log"))
                status = f"ran ({binary})" if binary else "binary not found (make perf-analyzer installs it)"
            except Exception as e:
                cmd, status = [], f"failed: {type(e).__name__}: {e}"
            rows.append({**base, "bench": "perf_analyzer", "command": " ".join(cmd), "status": status,
                         "note": "image_id in the data file must be encoded on the server first (sam_encode)"})
        finally:
            if server:
                server.stop()
    paths = write_rows(rows, out, "serve")
    plot_all(_saved(paths), out)
    return paths


def run_amg(out: str, url: str, images_dir: Optional[str], quick: bool, points_per_side: int) -> Dict[str, str]:
    from .amg import bench_amg

    if images_dir:
        from samrt.client.cli import IMAGE_SUFFIXES, load_image

        images = [load_image(os.path.join(images_dir, f)) for f in sorted(os.listdir(images_dir))
                  if f.lower().endswith(IMAGE_SUFFIXES)]
    else:
        images = _images(2 if quick else 5)
    if quick:
        points_per_side = min(points_per_side, 8)
    rows = bench_amg(url, images, points_per_side=points_per_side)
    return write_rows(rows, out, "amg")
