"""`samrt build-repo` and the serving loop of `samrt serve` as library functions (the steps before,
export and engines, are orchestrated by `samrt.pipeline`)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import threading
from typing import Optional

from samrt.artifacts import ArtifactError, ExportManifest, engine_path
from samrt.errors import SamrtError

from .render import RepoOptions, render_repository
from .server import TritonServer

# --backend of build-repo: python-backend models running ONNX Runtime (CPU here), or the production
# variant for NVIDIA's Triton container with native backends for encoder and decoder.
BACKENDS = {"onnxruntime": None, "onnxruntime-native": "onnxruntime", "tensorrt": "tensorrt"}

__all__ = ["BACKENDS", "repository_from_export", "serve_forever"]


def repository_from_export(export_dir: str, out_dir: str, opts: Optional[RepoOptions] = None,
                           backend: str = "onnxruntime", precision: str = "fp32") -> str:
    """Render a repository for the export in `export_dir` (its manifest, `samrt.artifacts.ExportManifest`).

    `precision` other than fp32 serves the encoder engine built by `samrt build-engine` into the
    same folder; its accuracy report goes into the repository and the encoder's config."""
    if backend not in BACKENDS:
        raise SamrtError(f"--backend: got {backend!r}, expected one of {sorted(BACKENDS)}")
    manifest = ExportManifest.read(export_dir)
    encoder, decoder = manifest.encoder_path, manifest.decoder_path
    opts = dataclasses.replace(opts or RepoOptions(), native=BACKENDS[backend])
    engine_report = None
    kind = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    if precision != "fp32" or backend == "tensorrt":
        engine = engine_path(encoder, export_dir, kind, precision)
        if not os.path.isfile(engine) or not os.path.isfile(engine + ".report.json"):
            raise ArtifactError(f"--precision {precision}: no {engine} with its report; build it first with "
                                f"`samrt build-engine --onnx {encoder} --backend {kind} --precision {precision} --out {export_dir}`")
        with open(engine + ".report.json") as f:
            engine_report = json.load(f)
        if not engine_report["gate"]["passed"]:
            raise ArtifactError(f"{engine}: its accuracy gate failed; not serving it")
        encoder = engine
    if backend == "tensorrt":
        decoder = engine_path(decoder, export_dir, "tensorrt", "fp16")
        if not os.path.isfile(decoder):
            raise ArtifactError(f"--backend tensorrt: no {decoder}; build it first with `samrt build-engine --onnx "
                                f"{manifest.decoder_path} --backend tensorrt --precision fp16 "
                                f"--out {export_dir} --device cuda`")
    cfg = manifest.config
    repo = render_repository(cfg, encoder, decoder, out_dir, opts, engine_report=engine_report)
    return repo


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
