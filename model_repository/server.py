"""Start the real tritonserver shipped in the `nvidia-pytriton` wheel, on this machine's CPU.

The recipe: copy the bundled tree, put the python stub for this interpreter into
backends/python, put the interpreter's own lib dir and `nvidia_pytriton.libs` on
LD_LIBRARY_PATH and the venv's bin first on PATH (the stub finds python3 there), pick free
ports, log to a file, wait for readiness. Stopping sends SIGTERM to the server's process
group (server and stubs), then SIGKILL after a timeout, so no process is left behind. The
python backend's shared-memory regions (`/dev/shm`, 32 MiB per model instance, RAM on a tmpfs)
carry a prefix of this server's own (`shm_prefix`); Triton unlinks them on a clean exit, but a
stub or server that is killed leaves them behind (measured: 169 regions, 5.4 GB of RAM, after a
day of tests), so stop() removes whatever is left under this server's prefix, nothing else (after
the process group is gone, or 5 s after its SIGKILL). A process that started servers and was
itself killed (SIGKILL, OOM) runs no stop(): its servers' regions stay until removed by hand.

A model process that dies (killed for memory, crashed) is restarted. Triton 2.51 does not do it
itself: when a python-backend stub dies, `/v2/health/ready` and the model's readiness still answer
200 and every request to that model fails with "Stub process '<model>_0_0' is not healthy" until
the server restarts (measured; a plain `load` of the unchanged model is a no-op). So the server
runs with `--model-control-mode=explicit --load-model=*` (everything loaded at start, as before)
and a watchdog thread (`restart_dead_models=True`, the default) watches the stubs of this server
(by PID, every `watchdog_interval` s); when one is gone, no new stub took its instance name and
Triton still reports its model ready, it unloads and loads that model through the repository API
(an admin's unload, or load of a changed model that starts new stubs, is left alone; a reload of
a step makes the ensembles that use it answer "no available versions" for a moment). While it
reloads, the model and the server report not ready (strict readiness), so readiness does not lie for longer than the watchdog's interval. The embedding
cache lives in the `sam_mask_decoder` process (`sam_embedding_cache` in the production variant): if that one dies, cached images are lost and
decodes answer NOT_FOUND (`ImageNotCachedError`) until the image is encoded again.
`TritonServer.restarts` lists what was restarted (model name, time).

Who may use what. Triton serves every model and API to every client that reaches its ports, so
the launcher gives each server two secrets:
- the admin key (`admin_key`; given, or SAMRT_ADMIN_KEY from the environment, or generated):
  Triton's restricted-API options (`--http-restricted-api`, `--grpc-restricted-protocol`) serve
  `samrt.wire.RESTRICTED_APIS` (model repository, shared memory, trace, logging) only to requests
  that carry it (`samrt.wire.admin_headers`); it is written to `<work_dir>/admin_key`, readable by
  this user only (`admin_key_path`). The watchdog sends it when it reloads a model.
- the internal cache key (`model_repository.logic.CACHE_KEY_ENV`, new for every server object):
  put in tritonserver's environment, which the python-backend stubs inherit, so only this server's
  models can store embeddings (`_CacheOwner` refuses a put without it). Never leaves the server.
Both are on tritonserver's command line or in its environment: other users of the same host can
read the command line of a process (`ps`), so the admin key keeps out network clients, not local users.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from samrt import wire
from samrt.errors import SamrtError

from .logic import CACHE_KEY_ENV

SHM_DIR = "/dev/shm"  # where POSIX shared memory (shm_open) lives on Linux
AFTER_RESTART_EXIT_S = 5.0  # stop()'s grace for a server whose watchdog restarted a model

__all__ = ["TritonServer", "TritonLaunchError", "free_port", "check_ports_free", "bundled_triton_dir", "check_installed", "stub_processes",
           "live_processes"]


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


def _python_stub(src: str) -> str:
    """The bundled python-backend stub for this interpreter's Python version."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = os.path.join(src, "python_backend_stubs", ver, "triton_python_backend_stub")
    if not os.path.isfile(stub):
        raise TritonLaunchError(f"nvidia-pytriton ships no python backend stub for Python {ver}")
    return stub


def check_installed() -> str:
    """The bundled server's folder, once the binary and the python stub for this interpreter are
    found there; TritonLaunchError saying what is missing otherwise (tests skip with its message)."""
    src = bundled_triton_dir()
    _python_stub(src)
    return src


def _prepare_tree(work_dir: str) -> str:
    """A copy of the bundled server with the python stub for this interpreter in place."""
    src = check_installed()
    dst = os.path.join(work_dir, "tritonserver")
    stub = os.path.join(dst, "backends", "python", "triton_python_backend_stub")
    if not os.path.isfile(stub):
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(_python_stub(src), stub)
    return dst


def check_ports_free(host: str, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """TritonLaunchError when another process listens on one of a server's ports on `host`
    (naming the port and `samrt serve`'s flag for it). A port a stopped server left in TIME_WAIT is
    free (SO_REUSEADDR, as tritonserver binds). `samrt serve` calls it before it exports or builds
    anything; TritonServer.start before it launches."""
    for what, port, flag in (("HTTP", http_port, "--http-port"), ("gRPC", grpc_port, "--grpc-port"),
                             ("metrics", metrics_port, "--metrics-port")):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as e:
                raise TritonLaunchError(
                    f"{what} port {port} on {host}: in use ({e.strerror}), expected a free port; another "
                    f"server may be running there: stop it or choose another port (samrt serve {flag})") from None


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
        restart_dead_models: bool = True,
        watchdog_interval: float = 1.0,
        admin_key: Optional[str] = None,
        restricted_apis: Sequence[str] = wire.RESTRICTED_APIS,
    ) -> None:
        """`admin_key`: the key that opens `restricted_apis` (None: SAMRT_ADMIN_KEY from the
        environment, else a new random one); `restricted_apis` () restricts nothing."""
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
        self.restart_dead_models = restart_dead_models
        self.watchdog_interval = watchdog_interval
        self.restarts: List[Tuple[str, float]] = []  # (model name, time.time()) of each restart
        self.admin_key = admin_key or os.environ.get(wire.ADMIN_KEY_ENV) or secrets.token_hex(16)
        if not re.fullmatch(r"[A-Za-z0-9._~-]{16,}", self.admin_key):
            raise TritonLaunchError(f"admin key: got {len(self.admin_key)} characters, expected at least 16 of "
                                    "A-Z a-z 0-9 . _ ~ - (a header value Triton's option syntax can carry)")
        self.restricted_apis = tuple(restricted_apis)
        bad = sorted(set(self.restricted_apis) - set(_TRITON_APIS))
        if bad:
            raise TritonLaunchError(f"restricted_apis: got {bad}, expected names from {list(_TRITON_APIS)}")
        # this server's python-backend regions in /dev/shm: <shm_prefix>_<uuid> (removed by stop())
        self.shm_prefix = f"samrt_triton_{os.getpid()}_{secrets.token_hex(4)}_"
        self.cache_key = secrets.token_hex(16)  # the models' own: only they may write the embedding cache
        self._watchdog: Optional[threading.Thread] = None
        self._stop_watchdog = threading.Event()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def admin_key_path(self) -> str:
        """Where start() writes the admin key (mode 0600: this user only)."""
        return os.path.join(self.work_dir, "admin_key")

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
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--log-verbose=0",
        ]
        if self.restart_dead_models and not any(a.startswith("--model-control-mode") for a in self.extra_args):
            cmd += ["--model-control-mode=explicit", "--load-model=*"]  # the watchdog reloads dead models
        if self.restricted_apis and not any(a.startswith(("--http-restricted-api", "--grpc-restricted-protocol"))
                                            for a in self.extra_args):
            rule = f"{','.join(self.restricted_apis)}:{wire.ADMIN_KEY_HEADER}={self.admin_key}"
            cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        if not self.gpu:
            cmd += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
        return cmd + self.extra_args

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        site = sysconfig.get_paths()["purelib"]
        libs = [sysconfig.get_config_var("LIBDIR") or "", os.path.join(site, "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env[CACHE_KEY_ENV] = self.cache_key
        env.pop(wire.ADMIN_KEY_ENV, None)  # the models have no use for it
        return env

    def start(self, timeout: float = 180.0) -> "TritonServer":
        """Start tritonserver and wait until it is ready. TritonLaunchError when one of its ports is
        already taken by a listener (checked first: otherwise another server's readiness on that
        port would answer for this one), when it exits before it is ready, or after `timeout` s."""
        self._check_ports_free()
        os.makedirs(self.work_dir, exist_ok=True)
        _write_private(self.admin_key_path, self.admin_key + "\n")
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
                code = self.process.returncode
                self.stop()  # stubs it started and their shared memory
                raise TritonLaunchError(f"tritonserver exited with code {code} before it was ready; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if self.is_ready():
                if self.restart_dead_models:
                    self._start_watchdog()
                return self
            time.sleep(0.25)
        self.stop()
        raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def _check_ports_free(self) -> None:
        check_ports_free(self.host, self.http_port, self.grpc_port, self.metrics_port)

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
        """SIGTERM, up to `timeout` s for in-flight requests to finish (Triton's own exit timeout
        is 30 s), then SIGKILL to the whole group, then the leftover shared memory. After the
        watchdog restarted a model, Triton 2.51 waits its whole exit timeout for the dead
        instance ("Found 2 live models" until the end, measured), so such a server gets
        `AFTER_RESTART_EXIT_S` instead."""
        if self.restarts:
            timeout = min(timeout, AFTER_RESTART_EXIT_S)
        self._stop_watchdog.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=timeout)
        self._watchdog = None
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
        _wait_for_group(p.pid, timeout=5.0)
        self.remove_leftover_shm()

    def leftover_shm(self) -> List[str]:
        """Paths of this server's python-backend regions still in /dev/shm."""
        return sorted(glob.glob(os.path.join(SHM_DIR, glob.escape(self.shm_prefix) + "*")))

    def remove_leftover_shm(self) -> None:
        """Unlink the regions a killed stub or server left (only this server's prefix)."""
        for path in self.leftover_shm():
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- the watchdog: a model process that dies is reloaded --
    def model_processes(self) -> Dict[str, int]:
        """{instance name (e.g. "sam_decode_0_0"): PID} of this server's live python-backend stubs."""
        p = self.process
        return {} if p is None else stub_processes(p.pid)

    def _start_watchdog(self) -> None:
        self._stop_watchdog.clear()
        self._watchdog = threading.Thread(target=self._watch, name="samrt-model-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Every `watchdog_interval` s: a known stub whose PID is gone (exited, zombie, or reused by
        another process) is dead only if no live stub has taken its instance name (an admin's load
        of a changed model starts new stubs) and Triton still reports its model ready (an admin's
        unload leaves it not ready: not the watchdog's to undo). Those models are reloaded."""
        known = self.model_processes()
        while not self._stop_watchdog.wait(self.watchdog_interval):
            p = self.process
            if p is None or p.poll() is not None:
                return
            gone = {name for name, pid in known.items() if not _stub_alive(pid, p.pid)}
            if gone:
                alive = self.model_processes()
                for model in sorted({_model_of(n) for n in gone if n not in alive}):
                    if self._stop_watchdog.is_set():
                        return
                    if self._model_ready(model):
                        self._reload(model)
            known = {**{n: pid for n, pid in known.items() if n not in gone}, **self.model_processes()}

    def _model_ready(self, model: str) -> bool:
        """Triton's readiness of `model` (an open API): False when it answers otherwise or not at all."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _reload(self, model: str) -> bool:
        """Unload and load `model` (a plain load of an unchanged model is a no-op in Triton)."""
        log = logging.getLogger("samrt.server")
        log.warning("model process of %s is gone; reloading %s", model, model)
        try:
            for action in ("unload", "load"):
                req = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/{action}",
                                             data=b"{}", method="POST",
                                             headers={"Content-Type": "application/json",
                                                      **wire.admin_headers("http", self.admin_key)})
                with urllib.request.urlopen(req, timeout=300) as r:
                    r.read()
        except OSError as e:
            log.error("reloading %s failed: %s (the model stays not ready; log %s)", model, e, self.log_path)
            return False
        self.restarts.append((model, time.time()))
        return True

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# The API groups Triton 2.51's restricted-API options know (tritonserver --help).
_TRITON_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
                "trace", "logging")


def _write_private(path: str, text: str) -> None:
    """Write `text` to `path`, readable and writable by this user only (0600), whatever was there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def live_processes() -> Iterator[Tuple[int, str, List[bytes]]]:
    """(PID, command name, the /proc/<pid>/stat fields after the name: state, ppid, pgrp, ...) of
    every live (not zombie) process this machine lists."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat[stat.index(b"(") + 1: stat.rindex(b")")], stat[stat.rindex(b")") + 1:].split()
        if rest and rest[0] not in (b"Z", b"X"):
            yield int(entry), name.decode(errors="replace"), rest


def stub_processes(server_pid: int) -> Dict[str, int]:
    """{instance name: PID} of the live (not zombie) python-backend stubs whose parent is `server_pid`.

    A stub's command line is: stub, model.py, shm region, shm sizes (2), parent PID, backend dir,
    IPC handle, instance name, ..."""
    found: Dict[str, int] = {}
    for pid, _, fields in live_processes():
        if fields[1] != str(server_pid).encode():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if len(cmd) > 8 and cmd[0].endswith(b"triton_python_backend_stub") and cmd[5] == str(server_pid).encode():
            found[cmd[8].decode()] = pid
    return found


def _group_members(pgid: int) -> List[int]:
    """PIDs of the live (not zombie) processes in process group `pgid`."""
    return [pid for pid, _, fields in live_processes() if int(fields[2]) == pgid]


def _wait_for_group(pgid: int, timeout: float) -> None:
    """Wait (up to `timeout` s) until no live process of group `pgid` is left (killed stubs exit asynchronously)."""
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _stub_alive(pid: int, server_pid: int) -> bool:
    """Whether `pid` is still a live (not zombie) child of `server_pid`. Reads /proc/<pid>/stat only
    (its command line needs the process's memory, which a read under memory pressure can miss);
    a read that fails for any reason but the process being gone counts as alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return fields[0] not in (b"Z", b"X") and fields[1] == str(server_pid).encode()


def _model_of(instance: str) -> str:
    """"sam_decode_0_0" -> "sam_decode" (Triton names instances <model>_<group>_<index>)."""
    return instance.rsplit("_", 2)[0]
