"""The last steps of `samrt build-repo` and `samrt serve` as library functions: render the
repository for a serving plan (`samrt.variants.ServingPlan`: which engine of each graph, chosen and
built by `samrt.app.pipeline.plan_engines`), and the serving loop."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from typing import Optional

from samrt import wire
from samrt.artifacts import ExportManifest, record_entries
from samrt.errors import SamrtError
from samrt.variants import ServingPlan

from .render import RepoOptions, render_repository
from .server import TritonServer

__all__ = ["repository_from_plan", "serve_forever"]


def repository_from_plan(manifest: ExportManifest, plan: ServingPlan, out_dir: str,
                         opts: Optional[RepoOptions] = None) -> str:
    """Render `out_dir` serving `plan`'s engines of `manifest`'s export; the plan (why each engine)
    goes beside the models (`serving_plan.json`)."""
    opts = dataclasses.replace(opts or RepoOptions(), native=plan.native)
    encoder = plan.encoder.paths["encoder"]
    decoder = plan.decoder.paths.get("decoder") or plan.decoder.paths
    repo = render_repository(manifest.config, encoder, decoder, out_dir, opts,
                             engine_report=plan.encoder.report.report if plan.encoder.report else None,
                             decoder_report=plan.decoder.report.report if plan.decoder.report else None,
                             served_model=manifest.served_model())
    with open(os.path.join(repo, "serving_plan.json"), "w") as f:
        json.dump({role: {"variant": str(e.variant), "files": e.paths, "why": e.why}
                   for role, e in (("encoder", plan.encoder), ("decoder", plan.decoder))}
                  | {"native": plan.native, "export": manifest.export_dir}, f, indent=2)
    record_entries(repo, ["serving_plan.json"])
    return repo


def serve_forever(server: TritonServer) -> None:
    """Start, print the endpoints, block until Ctrl-C or SIGTERM, stop with nothing left behind."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = False
    try:
        server.start()
        started = True
        print(f"tritonserver ready\n  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n"
              f"  metrics {server.metrics_url}\n  log     {server.log_path}\n"
              f"  admin key {server.admin_key_path} (this user only): {', '.join(server.restricted_apis) or 'nothing'} "
              f"need it; SamClient(admin_key=...) or {wire.ADMIN_KEY_ENV} for shared_memory=True\n"
              "Ctrl-C or SIGTERM stops it.", flush=True)
        while not stop.is_set():
            if server.process is None or server.process.poll() is not None:
                raise SamrtError(f"tritonserver exited unexpectedly; log {server.log_path}:\n{server.log_tail()}")
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        if started:  # a start refused (a port in use) stopped nothing
            print("tritonserver stopped", flush=True)
