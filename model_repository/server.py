"""Start the real tritonserver shipped in the `nvidia-pytriton` wheel, on this machine's CPU.

The recipe: copy the bundled tree, put the python stub for this interpreter into
backends/python, put the interpreter's own lib dir and `nvidia_pytriton.libs` on
LD_LIBRARY_PATH and the venv's bin first on PATH (the stub finds python3 there), pick free
ports, log to a file, wait for readiness. Stopping sends SIGTERM to the server's process
group (server and stubs), then SIGKILL after a timeout, so no process is left behind.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from typing import Dict, List, Optional

from samrt.errors import SamrtError

__all__ = ["TritonServer", "TritonLaunchError", "free_port", "bundled_triton_dir"]


class TritonLaunchError(SamrtError):
    """tritonserver could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bundled_triton_dir() -> str:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonLaunchError("the tritonserver binary comes with the `nvidia-pytriton` wheel: pip install 'samrt[serve]'")
    path = os.path.join(list(spec.submodule_search_locations)[0], "tritonserver")
    if not os.path.isfile(os.path.join(path, "bin", "tritonserver")):
        raise TritonLaunchError(f"{path}: no bin/tritonserver in the installed nvidia-pytriton")
    return path


def _prepare_tree(work_dir: str) -> str:
    """A copy of the bundled server with the python stub for this interpreter in place."""
    src = bundled_triton_dir()
    dst = os.path.join(work_dir, "tritonserver")
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = os.path.join(dst, "backends", "python", "triton_python_backend_stub")
    if not os.path.isfile(stub):
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("python_backend_stubs"))
        stub_src = os.path.join(src, "python_backend_stubs", ver, "triton_python_backend_stub")
        if not os.path.isfile(stub_src):
            raise TritonLaunchError(f"nvidia-pytriton ships no python backend stub for Python {ver}")
        shutil.copy2(stub_src, stub)
    return dst


class TritonServer:
    """A tritonserver process serving `repo`; use as a context manager or start()/stop()."""

    def __init__(
        self,
        repo: str,
        host: str = "127.0.0.1",
        http_port: Optional[int] = None,
        grpc_port: Optional[int] = None,
        metrics_port: Optional[int] = None,
        work_dir: Optional[str] = None,
        log_path: Optional[str] = None,
        gpu: bool = False,
        extra_args: Optional[List[str]] = None,
    ) -> None:
        self.repo = os.path.abspath(repo)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.work_dir = os.path.abspath(work_dir or os.path.join(os.path.dirname(self.repo), "triton_work"))
        self.log_path = os.path.abspath(log_path or os.path.join(self.work_dir, "tritonserver.log"))
        self.gpu = gpu
        self.extra_args = list(extra_args or [])
        self.process: Optional[subprocess.Popen] = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, tree: str) -> List[str]:
        cmd = [
            os.path.join(tree, "bin", "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={os.path.join(tree, 'backends')}",
            f"--cache-directory={os.path.join(tree, 'caches')}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            # Room for 4 MiB embeddings between server and stubs without regrowing.
            "--backend-config=python,shm-default-byte-size=33554432",
            "--backend-config=python,shm-growth-byte-size=33554432",
            "--log-verbose=0",
        ]
        if not self.gpu:
            cmd += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
        return cmd + self.extra_args

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        site = sysconfig.get_paths()["purelib"]
        libs = [sysconfig.get_config_var("LIBDIR") or "", os.path.join(site, "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def start(self, timeout: float = 180.0) -> "TritonServer":
        os.makedirs(self.work_dir, exist_ok=True)
        tree = _prepare_tree(self.work_dir)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(tree), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.environment(), start_new_session=True,
        )
        log.close()
        atexit.register(self.stop)  # a safety net: no server outlives the process that started it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonLaunchError(f"tritonserver exited with code {self.process.returncode} before it was ready; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if self.is_ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        p, self.process = self.process, None
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:  # the stubs share the server's process group: leave nothing behind
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
