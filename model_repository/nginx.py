"""An NGINX configuration that routes samrt requests to replicas by image.

Every SDK request that names an image carries its id in the `x-samrt-image-id` header (gRPC
metadata or HTTP header, `samrt.wire.IMAGE_ID_HEADER`), so a balancer that hashes the header
sends encode and decode of an image to the same replica, and its embedding cache. NGINX does it
with `hash $http_x_samrt_image_id consistent` (ketama): a replica that fails is left out for
`fail_timeout` and its images go to the next replica on the ring, where the SDK encodes them
again, once (`TritonSamPredictor` re-encodes on ImageNotCachedError).

`nginx_config` writes the whole file: the README shows it for three replicas, and
tests/client/test_replicas.py runs NGINX with it in front of three tritonservers.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from samrt import wire

__all__ = ["nginx_config", "HASH_VARIABLE"]

# NGINX's name of the header: $http_ + the name lower-cased, dashes as underscores.
HASH_VARIABLE = "$http_" + wire.IMAGE_ID_HEADER.replace("-", "_")


def _upstream(name: str, replicas: Sequence[str], fail_timeout: int) -> List[str]:
    lines = [f"    upstream {name} {{",
             f"        zone {name} 64k;  # failures seen by one worker count for all",
             f"        hash {HASH_VARIABLE} consistent;"]
    lines += [f"        server {r} max_fails=1 fail_timeout={fail_timeout}s;" for r in replicas]
    return lines + ["    }"]


def nginx_config(
    grpc_replicas: Sequence[str] = (),
    http_replicas: Sequence[str] = (),
    grpc_listen: str = "8001",
    http_listen: str = "8000",
    fail_timeout: int = 30,
    timeout_s: int = 300,
    prefix: Optional[str] = None,
) -> str:
    """nginx.conf text: a gRPC front (`grpc_pass`, HTTP/2) on `grpc_listen` for `grpc_replicas`
    (host:port of Triton's gRPC endpoints) and/or an HTTP front (`proxy_pass`) on `http_listen`
    for `http_replicas`, both hashing the image-id header. `prefix`: a folder for the pid file,
    logs and temp files (to run it unprivileged, e.g. in a test); None: NGINX's defaults.
    `timeout_s`: how long a request may take upstream (encoding a large image on CPU is slow)."""
    if not grpc_replicas and not http_replicas:
        raise ValueError("nginx_config: got no replicas, expected grpc_replicas and/or http_replicas")
    lines = ["# samrt replicas behind NGINX: requests hashed on the image id header (samrt.model_repository.nginx)",
             "worker_processes auto;"]
    if prefix:
        lines += [f"pid {prefix}/nginx.pid;", f"error_log {prefix}/error.log warn;"]
    lines += ["events { worker_connections 1024; }", "", "http {"]
    if prefix:
        lines += [f"    access_log {prefix}/access.log;"]
        lines += [f"    {kind}_temp_path {prefix}/{kind}_temp;" for kind in
                  ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    lines += ["    client_max_body_size 256m;  # an image per request"]
    if grpc_replicas:
        lines += _upstream("samrt_grpc", grpc_replicas, fail_timeout)
        lines += ["    server {",
                  f"        listen {grpc_listen} http2;",
                  "        location / {",
                  "            grpc_pass grpc://samrt_grpc;",
                  "            grpc_next_upstream error timeout;  # a replica that refuses: the next on the ring",
                  f"            grpc_read_timeout {timeout_s}s;",
                  f"            grpc_send_timeout {timeout_s}s;",
                  "        }",
                  "    }"]
    if http_replicas:
        lines += _upstream("samrt_http", http_replicas, fail_timeout)
        lines += ["    server {",
                  f"        listen {http_listen};",
                  "        location / {",
                  "            proxy_pass http://samrt_http;",
                  "            proxy_http_version 1.1;",
                  "            proxy_set_header Connection \"\";",
                  "            proxy_next_upstream error timeout http_503;",
                  f"            proxy_read_timeout {timeout_s}s;",
                  f"            proxy_send_timeout {timeout_s}s;",
                  "        }",
                  "    }"]
    return "\n".join(lines + ["}"]) + "\n"
