"""`samrt annotate` as a library function: the web app, with its own model server or a running one."""

from __future__ import annotations

import os
import sys
from typing import Optional

from samrt.client import SamClient
from samrt.model_repository.server import TritonServer

from ..pipeline import build_repository
from .app import MODEL_URL, create_app

__all__ = ["start_model_server", "run_annotate"]


def start_model_server(build_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto",
                       memory_check: bool = True) -> TritonServer:
    """Export if needed, render the repository and start tritonserver (ready on return): the one
    place where `samrt annotate` starts a server (`samrt.app.pipeline.build_repository`, which
    checks memory unless `memory_check` is False)."""
    repo = build_repository(build_dir, checkpoint, model_type, memory_check=memory_check)
    return TritonServer(repo, work_dir=os.path.join(build_dir, "triton_work")).start()


def run_annotate(images_folder: str, out_dir: str, url: Optional[str] = None, protocol: str = "grpc",
                 host: str = "127.0.0.1", port: int = 8080, checkpoint: Optional[str] = None,
                 model_type: str = "auto", build_dir: str = "build/annotate", prefetch: int = 2,
                 prefill_options: Optional[dict] = None, memory_check: bool = True) -> None:
    """Serve the annotation page until Ctrl-C or SIGTERM.

    Without `url`, starts a model server (the embedded model unless `checkpoint`) and stops it
    on the way out; with `url` (host:port of a running `samrt serve`), uses that one. The folders
    are checked first (InputError / SamrtError), so a bad folder starts no server."""
    from aiohttp import web  # aiohttp: the annotate extra

    app = create_app(images_folder, out_dir, url, protocol, prefetch, prefill_options, host=host)
    server = None
    try:
        if url is None:
            server = start_model_server(build_dir, checkpoint, model_type, memory_check)
            app[MODEL_URL] = server.grpc_url if protocol == "grpc" else server.http_url
            print(f"tritonserver ready at {app[MODEL_URL]} ({protocol}); log {server.log_path}", file=sys.stderr)
        else:
            with SamClient(url, protocol, retries=0) as probe:
                if not probe.is_ready():
                    print(f"warning: no ready samrt server at {url} ({protocol}) yet; the page shows errors until there is",
                          file=sys.stderr)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}: anyone who reaches this address can see the folder's images "
                  f"and change its annotations", file=sys.stderr)
        shown = f"[{host}]" if ":" in host else host
        message = (f"samrt annotate: http://{shown}:{port}/\n  annotations go to {os.path.abspath(out_dir)}\n"
                   f"  Ctrl-C stops it{' and the model server it started' if server else ''}")
        web.run_app(app, host=host, port=port, print=lambda _: print(message, flush=True), access_log=None)
    finally:
        if server is not None:
            server.stop()
            print("tritonserver stopped", file=sys.stderr)
