"""A model end to end, as a new user runs it (`samrt bench e2e`): each step's time and peak memory,
and the served answers against `SamPredictor` in the same run.

Steps (one row each):
- "checkpoint": an official-format checkpoint of seeded random weights, when none is given
  (`e2e_worker checkpoint`, its own process);
- "export": `samrt export --checkpoint C --out B/export` (its own process: wall time, peak RSS);
- "start": `samrt serve --checkpoint C --build-dir B` with no other flags, until the server is
  ready: it reuses the export, builds and gates the engines it serves (its log's "built ... in N s"
  lines are kept) and starts tritonserver. Peak: the launcher's peak RSS (VmHWM: the builds run in
  it) and the server's PSS (tritonserver and its stubs) once ready;
- "idle", "encode", "click", "box", "amg", "load N clients": the server's PSS (peak of the sum over
  tritonserver and its stubs, sampled every 0.1 s; per model) and the wall time of the step;
- "reference": `SamPredictor` on the same image, click and box (`e2e_worker reference`, its own
  process, after the server has stopped): the mask IoU of each of the three candidates and the
  largest score difference, beside the gate's bound (`DEFAULT_MIN_MEAN_IOU`).

Peak RSS of a process counts every page it touched once (shared libraries whole); PSS splits
shared pages among their processes (see `benchmarks.memory`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from samrt.artifacts import ArtifactError, ExportManifest
from samrt.client import SamClient, TritonSamPredictor
from samrt.engines.build import DEFAULT_MIN_MEAN_IOU
from samrt.errors import SamrtError
from samrt.model_repository.server import free_port, live_processes, stub_processes
from samrt.scenes import scene_for_index

from .memory import GIB, PssSampler, grouped, proc_kib_field, session

__all__ = ["bench_e2e"]

CLI = [sys.executable, "-m", "samrt.app.cli"]
WORKER = [sys.executable, "-m", "samrt.benchmarks.e2e_worker"]


def _measured(cmd: Sequence[str], log: str) -> Tuple[float, int]:
    """Run `cmd` (output to `log`); (wall seconds, its peak RSS in bytes: VmHWM sampled every
    0.1 s while it runs; wait4's ru_maxrss is not used, it starts from the measuring process's own
    peak). SamrtError naming the log when it fails."""
    t0 = time.perf_counter()
    peak = 0
    with open(log, "ab") as f:
        proc = subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, _vm_hwm(proc.pid) or 0)
            time.sleep(0.1)
    if proc.returncode != 0:
        raise SamrtError(f"{' '.join(cmd[2:])}: exit status {proc.returncode}, expected 0 (see {log})")
    return time.perf_counter() - t0, peak


def _children(pid: int, name: str) -> List[int]:
    """PIDs of `pid`'s live children whose command is `name`."""
    return [p for p, comm, fields in live_processes() if comm == name and fields[1] == str(pid).encode()]


def _vm_hwm(pid: int) -> Optional[int]:
    """Peak RSS (VmHWM) of a live process, bytes."""
    return proc_kib_field(pid, "status", "VmHWM:")


def _wait_ready(url: str, launcher: subprocess.Popen, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise SamrtError(f"samrt serve exited ({launcher.returncode}) before its server was ready (see {log})")
        try:
            with SamClient(url, timeout=5.0, retries=0) as c:
                if c.is_ready():
                    return
        except SamrtError:
            pass
        time.sleep(2.0)
    raise SamrtError(f"samrt serve: not ready after {timeout:.0f} s (see {log})")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def bench_e2e(model_type: str, build_dir: str, checkpoint: Optional[str] = None, clients: int = 4,
              image_side: int = 640, serve_args: Sequence[str] = (), ready_timeout: float = 5400.0,
              base: Optional[dict] = None) -> List[dict]:
    """The steps above for `model_type` (or `checkpoint`'s), everything written under `build_dir`
    (a new or samrt-made folder). `serve_args`: flags added to `samrt serve` (none: the default
    path). Returns the rows."""
    os.makedirs(build_dir, exist_ok=True)
    base = {"bench": "e2e", "model_type": model_type, "serve_args": " ".join(serve_args), **(base or {})}
    rows: List[dict] = []
    log = os.path.join(build_dir, "e2e.log")

    def row(step: str, seconds: float, **extra) -> None:
        rows.append({**base, "step": step, "seconds": round(seconds, 1), **extra})
        print(f"e2e {model_type}: {step} {seconds:.1f} s {extra}", file=sys.stderr, flush=True)

    if checkpoint is None:
        checkpoint = os.path.join(build_dir, f"sam_{model_type}_random_init.pth")
        if not os.path.exists(checkpoint):
            s, peak = _measured(WORKER + ["checkpoint", model_type, checkpoint], log)
            row("checkpoint", s, peak_rss_gib=round(peak / GIB, 2), file_gib=round(os.path.getsize(checkpoint) / GIB, 2))
    checkpoint = os.path.abspath(checkpoint)
    export_dir = os.path.join(build_dir, "export")
    try:  # an export of another checkpoint is not this run's (samrt serve would export again, unmeasured)
        if ExportManifest.read(export_dir).checkpoint != checkpoint:
            raise SamrtError(f"{export_dir}: got an export of another checkpoint, expected {checkpoint}'s "
                             "(use another --build-dir)")
    except ArtifactError:
        pass
    if not os.path.exists(os.path.join(export_dir, "export_report.json")):
        s, peak = _measured(CLI + ["export", "--checkpoint", checkpoint, "--out", export_dir], log)
        files = sum(os.path.getsize(os.path.join(export_dir, f)) for f in os.listdir(export_dir))
        row("export", s, peak_rss_gib=round(peak / GIB, 2), files_gib=round(files / GIB, 2),
            external_data=sorted(f for f in os.listdir(export_dir) if f.endswith(".data")))

    ports = [free_port() for _ in range(3)]
    url = f"127.0.0.1:{ports[1]}"
    serve_log = os.path.join(build_dir, "serve.log")
    start = os.path.getsize(serve_log) if os.path.exists(serve_log) else 0
    t0 = time.perf_counter()
    with open(serve_log, "a") as log_file:  # its own session: the launcher, tritonserver and stubs go together
        launcher = subprocess.Popen(CLI + ["serve", "--checkpoint", checkpoint, "--build-dir", build_dir,
                                           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                                           "--metrics-port", str(ports[2]), *serve_args],
                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(url, launcher, serve_log, ready_timeout)
        start_s = time.perf_counter() - t0
        with open(serve_log) as f:
            f.seek(start)
            said = f.read()
        triton = _children(launcher.pid, "tritonserver")
        if len(triton) != 1:
            raise SamrtError(f"tritonserver under samrt serve ({launcher.pid}): got {triton}, expected one process")

        def pids() -> Dict[str, int]:
            return {"tritonserver": triton[0], **stub_processes(triton[0])}

        with PssSampler(pids) as s:
            time.sleep(1.0)
        row("start", start_s, launcher_peak_rss_gib=round((_vm_hwm(launcher.pid) or 0) / GIB, 2),
            server_pss_gib=round(s.peak_total / GIB, 2),
            built=re.findall(r"built (\S+ \S+ \S+) in (\d+) s", said),
            serving=re.findall(r"serving (encoder|decoder): (.*)", said))
        images = [scene_for_index(i, stream=11, long_side=image_side).image for i in range(3 + clients)]
        with SamClient(url, timeout=600.0) as client:
            session(url, images[:1], 1, seed=0)  # every model runs once
            with PssSampler(pids) as s:
                time.sleep(1.0)
            row("idle", 0.0, server_pss_gib=round(s.peak_total / GIB, 2), per_model_mib=grouped(s.peak))
            image = images[1]
            h, w = image.shape[:2]
            point = np.array([[w * 0.5, h * 0.5]], np.float32)
            label = np.array([1], np.int32)
            box = np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75], np.float32)
            predictor = TritonSamPredictor(client)
            with PssSampler(pids) as s:
                t = time.perf_counter()
                predictor.set_image(image)
            row("encode", time.perf_counter() - t, server_pss_gib=round(s.peak_total / GIB, 2),
                image=f"{h}x{w}", per_model_mib=grouped(s.peak))
            with PssSampler(pids) as s:
                t = time.perf_counter()
                pm, ps, _ = predictor.predict(point_coords=point, point_labels=label, multimask_output=True)
            row("click", time.perf_counter() - t, server_pss_gib=round(s.peak_total / GIB, 2))
            t = time.perf_counter()
            bm, bs, _ = predictor.predict(box=box, multimask_output=True)
            row("box", time.perf_counter() - t)
            with PssSampler(pids) as s:
                t = time.perf_counter()
                records = client.amg(images[2])
            row("amg", time.perf_counter() - t, server_pss_gib=round(s.peak_total / GIB, 2), masks=len(records),
                per_model_mib=grouped(s.peak))
        with PssSampler(pids) as s:
            t = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                for f in [pool.submit(session, url, [images[3 + i]], 3, 100 + i) for i in range(clients)]:
                    f.result()
        row(f"load {clients} clients", time.perf_counter() - t, server_pss_gib=round(s.peak_total / GIB, 2),
            per_model_mib=grouped(s.peak))
    finally:
        # SIGTERM, as a service manager stops it (SIGINT is ignored by a process started in the
        # background of a non-interactive shell, and so by this one's children)
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(120)
        except subprocess.TimeoutExpired:  # its whole session goes: nothing is left running
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()

    inputs, out = os.path.join(build_dir, "reference_in.npz"), os.path.join(build_dir, "reference_out.npz")
    np.savez(inputs, image=image, point_coords=point, point_labels=label, box=box)
    s, peak = _measured(WORKER + ["reference", checkpoint, inputs, out], log)
    ref = np.load(out)
    ious = [_iou(a, b) for a, b in zip(pm, ref["point_masks"])] + [_iou(a, b) for a, b in zip(bm, ref["box_masks"])]
    score_diff = float(max(np.abs(ps - ref["point_scores"]).max(), np.abs(bs - ref["box_scores"]).max()))
    row("reference", s, peak_rss_gib=round(peak / GIB, 2), reference_seconds=[round(float(x), 2) for x in ref["seconds"]],
        mask_iou=[round(x, 4) for x in ious], mean_mask_iou=round(float(np.mean(ious)), 4),
        max_score_diff=round(score_diff, 4), gate_min_mean_iou=DEFAULT_MIN_MEAN_IOU,
        verdict="within the gate's bound" if np.mean(ious) >= DEFAULT_MIN_MEAN_IOU else "below the gate's bound")
    return rows
