"""`samrt build-repo` and the serving loop of `samrt serve` as library functions (the steps before,
export and engines, are orchestrated by `samrt.app.pipeline`)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys

import threading
from typing import Optional

from samrt.artifacts import ArtifactError, ExportManifest, engine_path
from samrt.errors import SamrtError

from .render import RepoOptions, render_repository
from .server import TritonServer

# --backend of build-repo: python-backend models running ONNX Runtime (CPU here), or the production
# variant for NVIDIA's Triton container with native backends for encoder and decoder.
BACKENDS = {"onnxruntime": None, "onnxruntime-native": "onnxruntime", "tensorrt": "tensorrt", "openvino": None,
            "openvino-native": "openvino"}
# OpenVINO variants of each graph that serving may choose from (the decoder stays in float).
OPENVINO_PRECISIONS = {"encoder": ("fp32", "bf16", "int8"), "decoder": ("fp32", "bf16")}

__all__ = ["BACKENDS", "OPENVINO_PRECISIONS", "repository_from_export", "choose_openvino_engine", "serve_forever"]


def _engine_report(path: str) -> Optional[dict]:
    try:
        with open(path + ".report.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def choose_openvino_engine(manifest: ExportManifest, graph: str, precision: str = "auto"):
    """(engine path, its report, why) for `graph` ("encoder"/"decoder"): with "auto", the fastest
    OpenVINO variant built into the export folder whose accuracy gate passed; else the one asked."""
    source = manifest.encoder_path if graph == "encoder" else manifest.decoder_path
    wanted = OPENVINO_PRECISIONS[graph] if precision == "auto" else (precision,)
    candidates, refused = [], []
    for p in wanted:
        path = engine_path(source, manifest.export_dir, "openvino", p)
        report = _engine_report(path) if os.path.isfile(path) else None
        if report is None:
            refused.append(f"{p}: not built")
        elif not report["gate"]["passed"]:
            refused.append(f"{p}: gate failed (mean mask IoU {report['accuracy']['mean_mask_iou']:.4f} < "
                           f"{report['gate']['min']})")
        else:
            candidates.append((report["speed"]["engine_ms"], p, path, report))
    if not candidates:
        raise ArtifactError(f"--backend openvino: no usable {graph} engine ({'; '.join(refused)}); build it with "
                            f"`samrt build-engine --onnx {source} --backend openvino --precision {wanted[0]} "
                            f"--out {manifest.export_dir}`")
    ms, p, path, report = min(candidates)
    others = ", ".join(f"{q} {m:.1f} ms" for m, q, _, _ in sorted(candidates) if q != p)
    why = (f"{graph}: openvino {p} ({ms:.1f} ms in its build's timing, mean mask IoU vs fp32 "
           f"{report['accuracy']['mean_mask_iou']:.4f})" + (f"; faster than {others}" if others else "")
           + (f"; not used: {'; '.join(refused)}" if refused else ""))
    return path, report, why


def repository_from_export(export_dir: str, out_dir: str, opts: Optional[RepoOptions] = None,
                           backend: str = "onnxruntime", precision: Optional[str] = None) -> str:
    """Render a repository for the export in `export_dir` (its manifest, `samrt.artifacts.ExportManifest`).

    `precision` other than fp32 serves the encoder engine built by `samrt build-engine` into the
    same folder; its accuracy report goes into the repository and the encoder's config."""
    if backend not in BACKENDS:
        raise SamrtError(f"--backend: got {backend!r}, expected one of {sorted(BACKENDS)}")
    openvino = backend in ("openvino", "openvino-native")
    precision = precision or ("auto" if openvino else "fp32")  # OpenVINO: the fastest variant that passes
    if precision == "auto" and not openvino:
        raise SamrtError(f"--precision auto: got --backend {backend}, expected --backend openvino")
    manifest = ExportManifest.read(export_dir)
    encoder, decoder = manifest.encoder_path, manifest.decoder_path
    opts = dataclasses.replace(opts or RepoOptions(), native=BACKENDS[backend])
    engine_report = None
    if openvino:
        encoder, engine_report, why_enc = choose_openvino_engine(manifest, "encoder", precision)
        decoder, _, why_dec = choose_openvino_engine(manifest, "decoder", precision if precision != "int8" else "auto")
        print(f"serving {why_enc}\nserving {why_dec}", file=sys.stderr)
        return render_repository(manifest.config, encoder, decoder, out_dir, opts, engine_report=engine_report,
                                 served_model=manifest.served_model())
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
    repo = render_repository(cfg, encoder, decoder, out_dir, opts, engine_report=engine_report,
                             served_model=manifest.served_model())
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
