"""Orchestration, in one plain place: export if needed -> engine -> Triton repository -> server.

The CLI (`samrt serve`, `samrt demo`), the benchmarks and the apps call these functions; each
step is a library function of its own floor (`samrt.export`, `samrt.engines`,
`samrt.model_repository`). torch (through `samrt.export`) is imported only when an export or a
PyTorch evaluation has to run, so serving an existing export needs no torch.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from samrt.artifacts import ArtifactError, ExportManifest, default_checkpoint, engine_path
from samrt.engines import OnnxSamPredictor
from samrt.engines.build import EngineAccuracyError, build_engine
from samrt.errors import SamrtError
from samrt.model_repository.launch import OPENVINO_PRECISIONS, repository_from_export, serve_forever
from samrt.model_repository.server import TritonServer
from samrt.scenes import eval_scenes, evaluate
from samrt.spec import get_config, resolve_model_type

__all__ = ["resolve_source", "export_model", "ensure_openvino_engines", "ensure_export", "ensure_engine", "build_repository", "serve",
           "evaluate_model"]


def resolve_source(checkpoint: Optional[str], model_type: str = "auto", random_init: bool = False):
    """(checkpoint or None, model type) of what to serve: the given checkpoint, random weights of
    `model_type`, or the embedded default model. An alias ("default") comes back resolved ("vit_h")."""
    model_type = resolve_model_type(model_type)
    if random_init:
        if model_type in ("auto", None):
            raise SamrtError("--random-init needs --model-type (vit_b, vit_l, vit_h or tiny)")
        return None, model_type
    if checkpoint is None:
        checkpoint = default_checkpoint()
        if checkpoint is None:
            raise SamrtError("no --checkpoint given and no embedded default model in this install; "
                             "pass --checkpoint FILE or --random-init --model-type vit_b")
    return checkpoint, model_type


def export_model(out_dir: str, model_type: str = "auto", checkpoint: Optional[str] = None, random_init: bool = False,
                 seed: int = 0, name: Optional[str] = None):
    """`samrt export`: a checkpoint (or seeded random weights, with a loud warning) -> checked ONNX
    graphs in `out_dir`; returns `samrt.export.ExportResult`."""
    from samrt.export import export_sam, load_sam, random_sam  # torch: the export extra
    from samrt.export.checkpoint import RANDOM_INIT_WARNING

    if random_init:
        if model_type in ("auto", None):
            raise SamrtError("--random-init needs --model-type (vit_b, vit_l, vit_h or tiny), got 'auto'")
        cfg = get_config(model_type)
        print(f"WARNING: {RANDOM_INIT_WARNING}", file=sys.stderr)
        sam = random_sam(cfg, seed=seed)
    else:
        sam, cfg = load_sam(checkpoint, model_type)
        print(f"loaded {checkpoint}: {cfg.model_type}", file=sys.stderr)
    return export_sam(sam, cfg, out_dir, name=name, checkpoint=checkpoint, random_init=random_init, seed=seed)


def ensure_export(out_dir: str, model_type: str = "auto", checkpoint: Optional[str] = None,
                  seed: int = 0) -> ExportManifest:
    """Export (encoder and decoder ONNX, checked against PyTorch) unless `out_dir` already holds a
    passing export of the same source; `checkpoint` None means seeded random weights of `model_type`."""
    source = os.path.abspath(checkpoint) if checkpoint else None
    try:
        manifest = ExportManifest.read(out_dir)
        same_type = model_type in ("auto", None) or manifest.config.model_type == resolve_model_type(model_type)
        if manifest.checkpoint == source and same_type:
            return manifest
    except ArtifactError:
        pass
    from samrt.export import export_sam, load_sam, random_sam  # torch: only when an export has to run

    if checkpoint:
        sam, cfg = load_sam(checkpoint, model_type)
    else:
        cfg = get_config(model_type)
        sam = random_sam(cfg, seed=seed)
    export_sam(sam, cfg, out_dir, checkpoint=checkpoint, random_init=checkpoint is None, seed=seed)
    return ExportManifest.read(out_dir)


def ensure_engine(manifest: ExportManifest, graph: str, backend: str, precision: str) -> str:
    """The engine of `graph` ("encoder" or "decoder") built by `samrt build-engine` into the export
    folder, built now if missing; returns its path (its gate must have passed)."""
    source = manifest.encoder_path if graph == "encoder" else manifest.decoder_path
    path = engine_path(source, manifest.export_dir, backend, precision)
    if not os.path.isfile(path + ".report.json"):
        build_engine(source, manifest.export_dir, backend, precision)
    return path


def ensure_openvino_engines(manifest: ExportManifest, precision: str = "auto") -> None:
    """Build the OpenVINO variants serving may choose from (`precision` "auto": every one; a failed
    gate is reported and leaves that variant out)."""
    for graph, precisions in OPENVINO_PRECISIONS.items():
        for p in (precisions if precision == "auto" else [q for q in precisions if q in (precision, "fp32")]):
            try:
                ensure_engine(manifest, graph, "openvino", p)
            except EngineAccuracyError as e:
                print(f"not serving {graph} {p}: {e}", file=sys.stderr)


def build_repository(build_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto", opts=None,
                     random_init: bool = False, precision: Optional[str] = None, backend: str = "onnxruntime") -> str:
    """Export (cached in `build_dir/export`), build the engines `backend` and `precision` ask for,
    render `build_dir/repo`; returns the repository path. `backend` "openvino" with precision
    "auto" serves the fastest OpenVINO variant of each graph that passes the accuracy gate."""
    checkpoint, model_type = resolve_source(checkpoint, model_type, random_init)
    manifest = ensure_export(os.path.join(build_dir, "export"), model_type, checkpoint)
    if backend == "openvino":
        ensure_openvino_engines(manifest, precision or "auto")
    elif precision not in (None, "fp32"):
        ensure_engine(manifest, "encoder", "onnxruntime", precision)
    print(f"model: {manifest.describe()}", file=sys.stderr)
    return repository_from_export(manifest.export_dir, os.path.join(build_dir, "repo"), opts, backend=backend,
                                  precision=precision)


def serve(build_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto", opts=None,
          random_init: bool = False, precision: Optional[str] = None, host: str = "127.0.0.1", http_port: int = 8000,
          grpc_port: int = 8001, metrics_port: int = 8002, backend: str = "onnxruntime") -> None:
    """`samrt serve`: build the repository, run tritonserver until Ctrl-C or SIGTERM."""
    repo = build_repository(build_dir, checkpoint, model_type, opts, random_init, precision, backend)
    gpu = bool(opts is not None and getattr(opts, "device", "cpu") == "cuda")
    serve_forever(TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                               gpu=gpu))


def evaluate_model(checkpoint: Optional[str] = None, onnx_dir: Optional[str] = None, scenes: int = 60,
                   device: str = "cpu") -> dict:
    """`samrt eval`: the paper's figures on held-out scenes, for an export folder (ONNX Runtime)
    or a checkpoint (PyTorch; default: the embedded model)."""
    if onnx_dir:
        manifest = ExportManifest.read(onnx_dir)
        predictor = OnnxSamPredictor.from_onnx(manifest.encoder_path, manifest.decoder_path)
        source = onnx_dir
    else:
        from segment_anything import SamPredictor  # torch: the export extra

        from samrt.export import load_sam  # torch

        source = checkpoint or default_checkpoint()
        if source is None:
            raise SamrtError("no --checkpoint and no embedded model in this install")
        predictor = SamPredictor(load_sam(source)[0].to(device))
    return {"source": source, **evaluate(predictor, eval_scenes(scenes), progress=True)}
