"""`samrt serve` and `samrt build-repo` as library functions: export if needed, render, start."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from typing import Optional

from samrt.errors import SamrtError
from samrt.spec import SamConfig

from .render import RepoOptions, render_repository
from .server import TritonServer

# --backend of build-repo: python-backend models running ONNX Runtime (CPU here), or the production
# variant for NVIDIA's Triton container with native backends for encoder and decoder.
BACKENDS = {"onnxruntime": None, "onnxruntime-native": "onnxruntime", "tensorrt": "tensorrt"}

__all__ = ["BACKENDS", "repository_from_export", "prepare_repository", "serve_forever", "default_checkpoint"]


def default_checkpoint() -> Optional[str]:
    """The embedded default: the small SAM trained by samrt, shipped inside the package."""
    import samrt

    path = os.path.join(os.path.dirname(samrt.__file__), "assets", "sam_samrt_small.pth")
    return path if os.path.isfile(path) else None


def repository_from_export(export_dir: str, out_dir: str, opts: Optional[RepoOptions] = None,
                           backend: str = "onnxruntime", precision: str = "fp32") -> str:
    """Render a repository for the export in `export_dir` (reads its export_report.json).

    `precision` other than fp32 serves the encoder engine built by `samrt build-engine` into the
    same folder; its accuracy report goes into the repository and the encoder's config."""
    if backend not in BACKENDS:
        raise SamrtError(f"--backend: got {backend!r}, expected one of {BACKENDS}")
    report_path = os.path.join(export_dir, "export_report.json")
    if not os.path.isfile(report_path):
        raise SamrtError(f"{export_dir}: no export_report.json; expected the folder written by `samrt export`")
    with open(report_path) as f:
        report = json.load(f)
    if not report.get("passed"):
        raise SamrtError(f"{report_path}: the export did not pass its check against PyTorch; not serving it")
    cfg = SamConfig.from_dict(report["config"])
    encoder = os.path.join(export_dir, report["encoder"]["path"])
    decoder = os.path.join(export_dir, report["decoder"]["path"])
    opts = dataclasses.replace(opts or RepoOptions(), native=BACKENDS[backend])
    engine_report = None
    from samrt.engines.build import engine_path

    kind = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    if precision != "fp32" or backend == "tensorrt":
        engine = engine_path(encoder, export_dir, kind, precision)
        if not os.path.isfile(engine) or not os.path.isfile(engine + ".report.json"):
            raise SamrtError(f"--precision {precision}: no {engine} with its report; build it first with "
                             f"`samrt build-engine --onnx {encoder} --backend {kind} --precision {precision} --out {export_dir}`")
        with open(engine + ".report.json") as f:
            engine_report = json.load(f)
        if not engine_report["gate"]["passed"]:
            raise SamrtError(f"{engine}: its accuracy gate failed; not serving it")
        encoder = engine
    if backend == "tensorrt":
        decoder = engine_path(decoder, export_dir, "tensorrt", "fp16")
        if not os.path.isfile(decoder):
            raise SamrtError(f"--backend tensorrt: no {decoder}; build it first with `samrt build-engine --onnx "
                             f"{os.path.join(export_dir, report['decoder']['path'])} --backend tensorrt --precision fp16 "
                             f"--out {export_dir} --device cuda`")
    repo = render_repository(cfg, encoder, decoder, out_dir, opts, engine_report=engine_report)
    return repo


def prepare_repository(build_dir: str, checkpoint: Optional[str], model_type: str = "auto",
                       opts: Optional[RepoOptions] = None, random_init: bool = False, precision: str = "fp32") -> str:
    """Export (cached) and render; returns the repository path."""
    from samrt.demo import ensure_export

    if checkpoint is None and not random_init:
        checkpoint = default_checkpoint()
        if checkpoint is None:
            raise SamrtError("no --checkpoint given and no embedded default model in this install; "
                             "pass --checkpoint FILE or --random-init --model-type vit_b")
    if random_init and model_type in ("auto", None):
        raise SamrtError("--random-init needs --model-type (vit_b, vit_l, vit_h or tiny)")
    export_dir = os.path.join(build_dir, "export")
    report = ensure_export(export_dir, model_type, checkpoint)
    if precision != "fp32":
        from samrt.engines.build import build_engine, engine_path

        encoder = os.path.join(export_dir, report["encoder"]["path"])
        if not os.path.isfile(engine_path(encoder, export_dir, "onnxruntime", precision) + ".report.json"):
            build_engine(encoder, export_dir, "onnxruntime", precision)
    print(f"model: {report['name']} ({'RANDOM-INIT, masks mean nothing' if report['random_init'] else report['checkpoint']})",
          file=sys.stderr)
    return repository_from_export(export_dir, os.path.join(build_dir, "repo"), opts, precision=precision)


def serve_forever(server: TritonServer) -> None:
    """Start, print the endpoints, block until Ctrl-C or SIGTERM, stop with nothing left behind."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
        print(f"tritonserver ready\n  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n"
              f"  metrics {server.metrics_url}\n  log     {server.log_path}\nCtrl-C or SIGTERM stops it.", flush=True)
        while not stop.is_set():
            if server.process is None or server.process.poll() is not None:
                raise SamrtError(f"tritonserver exited unexpectedly; log {server.log_path}:\n{server.log_tail()}")
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        print("tritonserver stopped", flush=True)
