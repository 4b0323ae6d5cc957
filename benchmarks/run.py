"""`samrt bench engines|serve|amg|upscale`: run, write rows (JSON + CSV with the machine) and plots."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np


from samrt.app.pipeline import ensure_export, plan_engines, server_memory
from samrt.client import SamClient
from samrt.errors import SamrtError
from samrt.imageio import list_images, load_image
from samrt.model_repository.launch import repository_from_plan
from samrt.model_repository.render import RepoOptions
from samrt.model_repository.server import TritonServer
from samrt.scenes import scene_for_index
from samrt.spec import get_config
from samrt.visualize import sample_image

from .amg import bench_amg
from .common import write_rows
from .decoder import bench_decoder
from .e2e import bench_e2e
from .memory import bench_memory
from .engines import bench_engines
from .perf_analyzer import run_perf_analyzer, write_decode_input_data
from .plots import plot_all
from .serve import (DEFAULT_VARIANTS, bench_serve, interactive_rows, new_image_rows, reference_clicks,
                    reference_sessions)
from .upscale import DEFAULT_SIZES, bench_upscale

SCENARIOS = ("sessions", "interactive", "encode")  # `samrt bench serve --scenarios`

__all__ = ["run_engines", "run_decoder", "run_serve", "run_amg", "run_upscale", "run_memory", "run_e2e"]


def _saved(paths: Dict[str, str]) -> List[dict]:
    """The rows as written (each with the machine's description)."""
    with open(paths["json"]) as f:
        return json.load(f)["rows"]


def _images(n: int, size: Optional[int] = None) -> List[np.ndarray]:
    return [scene_for_index(i, stream=11, long_side=size).image for i in range(n)]


def _model(model_type: str, checkpoint: Optional[str], build_dir: str):
    """(export manifest, torch model) for a checkpoint, the embedded model, or random init."""
    from samrt.export import load_sam, random_sam  # torch: the export extra

    if checkpoint:
        sam, cfg = load_sam(checkpoint)
        return ensure_export(os.path.join(build_dir, "export_" + cfg.model_type), "auto", checkpoint), sam
    cfg = get_config(model_type)
    return ensure_export(os.path.join(build_dir, "export_" + model_type), model_type, None), random_sam(cfg, seed=0)


def run_engines(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str,
                export_dir: Optional[str] = None, prompts: Sequence[int] = (1, 4, 16, 64, 256),
                precisions: Sequence[str] = ("fp32", "int8", "fp16"),
                openvino_precisions: Sequence[str] = ("fp32", "bf16", "int8", "int8-dynamic")) -> Dict[str, str]:
    rows = bench_engines(model_type, checkpoint, build_dir, quick, prompts=prompts, export_dir=export_dir,
                         precisions=precisions, openvino_precisions=openvino_precisions)
    paths = write_rows(rows, out, "engines")
    plot_all(_saved(paths), out)
    return paths


def run_decoder(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str) -> Dict[str, str]:
    """`samrt bench decoder`: the decoders and the served encoder in-process (benchmarks/decoder.py)."""
    return write_rows(bench_decoder(model_type, checkpoint, build_dir, quick), out, "decoder")


def run_serve(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str,
              url: Optional[str], concurrency: Sequence[int], clicks: int,
              scenarios: Sequence[str] = SCENARIOS, backend: str = "auto",
              precision: str = "auto", decoder: str = "fast") -> Dict[str, str]:
    """`samrt bench serve`. Scenarios: "sessions" (clients each encoding and clicking, a concurrency
    sweep, batching on and off) and "interactive" (one client clicking, idle and while another client
    streams new images to sam_encode; SamPredictor.predict on the same clicks in the same run) and
    "encode" (new images through sam_encode against ONNX Runtime fp32 in this process)."""
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or not scenarios:
        raise SamrtError(f"bench serve --scenarios: got {unknown or list(scenarios)}, expected some of {list(SCENARIOS)}")
    variants = DEFAULT_VARIANTS
    if quick:
        concurrency, clicks = [c for c in concurrency if c <= 4][:2] or [1], min(clicks, 5)
        variants = (("on", "grpc", False),)
    images = _images(max(concurrency) * len(variants), 320 if quick else None)
    rows: List[dict] = []
    repos: Dict[str, str] = {}
    base = {"model": "external", "random_init": None}
    if url is None:
        manifest, sam = _model(model_type, checkpoint, build_dir)
        base = {"model": manifest.name, "random_init": manifest.random_init}
        # the engines `samrt serve` would serve with these flags (built here when missing)
        plan = plan_engines(manifest, backend, precision, decoder)
        base.update(backend=backend, precision=precision, decoder=decoder,
                    engines=[str(plan.encoder.variant), str(plan.decoder.variant)], why=[plan.encoder.why, plan.decoder.why])
        for mode in ("on", "off"):
            repos[mode] = repository_from_plan(manifest, plan, os.path.join(build_dir, f"repo_batching_{mode}"),
                                               RepoOptions(dynamic_batching=mode == "on"))
        if "sessions" in scenarios:
            ref = reference_sessions(sam, images[: max(1, min(2, len(images)))], clicks)
            rows.append({**base, "bench": "serve", "dynamic_batching": "n/a", "protocol": "in-process (SamPredictor)",
                         "shared_memory": False, "concurrency": 1,
                         "timed": "SamPredictor.set_image, then predict per click", **ref})
    if url:
        variants = tuple(v for v in variants if v[0] == "on")  # one server as given: batching as it is
    if {"interactive", "encode"} & set(scenarios):
        rows += _one_client(repos.get("on"), url, None if url else sam, quick, base, build_dir, scenarios,
                            None if url else manifest.encoder_path,
                            get_config(model_type).image_size if url else manifest.config.image_size)
    if "sessions" not in scenarios:
        paths = write_rows(rows, out, "serve")
        plot_all(_saved(paths), out)
        return paths
    rows += bench_serve(repos, images, concurrency, clicks, variants, base=base, url=url)
    if not quick:  # Triton's own load generator, where its binary is installed
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


def _one_client(repo: Optional[str], url: Optional[str], sam, quick: bool, base: dict, build_dir: str,
                scenarios: Sequence[str], encoder_onnx: Optional[str], image_size: int) -> List[dict]:
    """One client on a server started here (or `url`), 480x640 images. "interactive": the
    interactive-under-load rows (gRPC and HTTP), with the SamPredictor reference when the model is at
    hand. "encode": new images through sam_encode (gRPC) against ONNX Runtime fp32 on the exported
    encoder in this process (`encoder_onnx`), alternating image by image."""
    image, _ = sample_image(480, 640)
    clicks = 8 if quick else 30
    stream = _images(4 if quick else 12, 320 if quick else None)
    reference = reference_clicks(sam, image, clicks) if sam is not None and "interactive" in scenarios else None
    server = None if url else TritonServer(repo, work_dir=os.path.join(build_dir, "work_interactive")).start()
    try:
        rows = []
        if "interactive" in scenarios:
            for protocol in (("grpc", "http") if url is None else ("grpc",)):  # a given url: its gRPC endpoint
                target = url or (server.grpc_url if protocol == "grpc" else server.http_url)
                rows += interactive_rows(target, [protocol], image, stream[:len(stream) // 2] if protocol == "grpc"
                                         else stream[len(stream) // 2:], reference, clicks, base)
        if "encode" in scenarios:  # images no run has sent before: seeds apart from the click image's
            warmup = 1 if quick else 4  # a server's first encodes are slower (docs/benchmarks.md): kept apart
            fresh = [sample_image(480, 640, seed=2000 + i)[0] for i in range(warmup + (2 if quick else 6))]
            rows += new_image_rows(url or server.grpc_url, "grpc", fresh, encoder_onnx, image_size, base, warmup)
        return rows
    finally:
        if server:
            server.stop()


def run_amg(out: str, url: str, images_dir: Optional[str], quick: bool, points_per_side: int,
            reference_checkpoint: Optional[str] = None) -> Dict[str, str]:
    """`samrt bench amg`: new images through `sam_amg` (default: generated 480x640 scenes; run it on a
    server that has not seen them), against the official generator on `reference_checkpoint` in this
    process."""
    if images_dir:
        images = [load_image(os.path.join(images_dir, f)) for f in list_images(images_dir)]
    else:
        images = [sample_image(480, 640, seed=1000 + i)[0] for i in range(3 if quick else 4)]
    if quick:
        points_per_side = min(points_per_side, 8)
    with SamClient(url) as c:  # what the server runs: the encoder engine's report (None: ONNX Runtime fp32)
        engine = c.model_info()["encoder_engine"]
    base = {"encoder_engine": (f"{engine['engine']} ({engine['precision']})" if engine else "onnx (fp32, ONNX Runtime)")}
    rows = bench_amg(url, images[1:], points_per_side=points_per_side, base=base, warmup=images[0],
                     reference_checkpoint=reference_checkpoint)
    return write_rows(rows, out, "amg")


def run_upscale(out: str, quick: bool) -> Dict[str, str]:
    """Mask upscaling per click (samrt.upscale vs the old numpy path vs torch) -> <out>/upscale.json|csv."""
    if quick:
        rows = bench_upscale(sizes=(((48, 64), 5),), image_size=64, low_res=16, warmup=1)
    else:
        rows = bench_upscale(DEFAULT_SIZES)
    return write_rows(rows, out, "upscale")


def run_memory(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str,
               clients: Sequence[int] = (4, 32), rounds: int = 2, clicks: int = 5, backend: str = "auto",
               precision: str = "auto", decoder: str = "fast", encoder_max_batch: Optional[int] = None) -> Dict[str, str]:
    """`samrt bench memory`: the engines `samrt serve` would serve with these flags (built when
    missing), a server on them, PSS per process at idle, during an encode and under load
    (`benchmarks.memory`); beside each row, the estimate `samrt serve` checks before a start.
    `encoder_max_batch`: RepoOptions.encoder_max_batch (None: its default)."""
    if quick:
        clients, rounds, clicks = [min(clients, default=2)][:1], 1, 2
    if checkpoint:
        from samrt.export import load_sam  # torch: the export extra

        _, cfg = load_sam(checkpoint)
        model_type = cfg.model_type
    manifest = ensure_export(os.path.join(build_dir, "export_" + model_type), model_type, checkpoint)
    plan = plan_engines(manifest, backend, precision, decoder)
    opts = RepoOptions() if encoder_max_batch is None else RepoOptions(encoder_max_batch=encoder_max_batch)
    repo = repository_from_plan(manifest, plan, os.path.join(build_dir, f"repo_memory_{model_type}"), opts)
    est = server_memory(manifest, plan, opts)
    base = {"model": manifest.name, "model_type": manifest.config.model_type, "backend": backend,
            "precision": precision, "decoder": decoder, "engines": [str(plan.encoder.variant), str(plan.decoder.variant)],
            "encoder_max_batch": opts.encoder_max_batch, "estimate_gib": round(est.total / 2**30, 2),
            "estimate": est.describe()}
    images = _images(2 + sum(clients) * rounds, 320 if quick else None)
    rows = bench_memory(repo, images, clients, rounds, clicks, os.path.join(build_dir, f"work_memory_{model_type}"), base)
    enc = plan.encoder.variant
    return write_rows(rows, out, f"memory_{model_type}_{enc.backend}_{enc.precision}_batch{opts.encoder_max_batch}")


def run_e2e(out: str, model_type: str, checkpoint: Optional[str], quick: bool, build_dir: str, clients: int = 4,
            serve_args: Sequence[str] = ()) -> Dict[str, str]:
    """`samrt bench e2e`: a checkpoint (default: seeded random weights of `model_type`, official
    format) exported, built, served by `samrt serve` with no other flags (or `serve_args`) and
    checked against SamPredictor, each step's time and peak memory (`benchmarks.e2e`). `quick`:
    one client, a small image."""
    if quick:
        clients = 1
    tag = "_".join([model_type] + [a.lstrip("-") for a in serve_args])
    # one folder per model: the checkpoint, the export and every engine built are shared by runs
    # with other serve flags (the repository is rendered again for each)
    rows = bench_e2e(model_type, os.path.join(build_dir, f"e2e_{model_type}"), checkpoint, clients,
                     320 if quick else 640, serve_args)
    return write_rows(rows, out, f"e2e_{tag}")
