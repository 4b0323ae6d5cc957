"""`samrt amg --ray`: automatic masks for a whole folder of images on a Ray cluster.

Ray Data spreads the image list over a pool of actors; each actor loads the engines once (ONNX
Runtime, in-process, no Triton) and runs the same pipeline as the server's `sam_amg`
(`samrt.engines.InProcessMaskGenerator`). The driver writes one SA-1B JSON per image, as
`samrt amg` through a server does (`samrt.client.cli.amg_document`), atomically
(`samrt.artifacts.atomic_write_text`).

Resumable: a rerun skips images whose JSON exists and is complete, and images that could not be
decoded before and have not changed since (their size and mtime are in the failures file). An
image that cannot be decoded, or whose generation raises, goes to `OUT_DIR/failures.jsonl` with
its reason and the job goes on. An actor that dies (killed, out of memory) is restarted by Ray and
its unfinished images are retried: Ray Data's actor pools do that by default (Ray 2.60 sets the
actors' `max_restarts` and `max_task_retries` to -1, unbounded; passing them is deprecated).

The output folder is new, empty, or one this job wrote (its `.samrt` marker, samrt.artifacts'
output folders, which also records the options and the checkpoint: a rerun with other ones is
refused instead of mixing records).

Where files must be: the images folder at the same path on every node (a shared file system);
the model goes to the actors through Ray's object store; only the driver writes the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from samrt.amg import AmgOptions
from samrt.app.pipeline import ensure_export
from samrt.artifacts import (OutputDirError, atomic_write_text, check_output_dir, default_checkpoint,
                             prepare_output_dir)
from samrt.client.cli import amg_document, load_image
from samrt.engines import InProcessMaskGenerator, OnnxRuntimeRunner
from samrt.engines.decoders import FastDecoder
from samrt.engines.runner import ARENA_DECODER_CHUNK
from samrt.errors import InputError, SamrtError
from samrt.imageio import list_images

__all__ = ["run_dataset_amg", "plan_dataset_amg", "DatasetPlan", "FAILURES_FILE", "OutputDirError"]

MARKER_KIND = "amg-dataset"     # the kind in the output folder's samrt.artifacts marker
FAILURES_FILE = "failures.jsonl"
DEFAULT_EXPORT_DIR = os.path.join("build", "amg", "export")
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # a local cluster's object store: images and records are small
MAX_BLOCKS = 4096                # one image per block (retry and progress granularity) up to this many


@dataclass(frozen=True)
class ImageTask:
    image_id: int   # index in the sorted list of the folder's images, as `samrt amg` numbers them
    file_name: str
    path: str


@dataclass
class DatasetPlan:
    """What a run would do: images to process, and those it skips (with why)."""

    images: int
    todo: List[ImageTask]
    complete: List[str]          # their JSON exists and is complete
    failed_before: List[str]     # undecodable before and unchanged since
    unowned: List[Tuple[str, str]]  # (file name, reason): a JSON not written by this job is in the way


def _decode_image(path: str) -> np.ndarray:
    """The project's image decoder, called in one place (HxWx3 uint8 RGB; InputError if unreadable)."""
    return load_image(path)


def _json_name(file_name: str) -> str:
    return os.path.splitext(file_name)[0] + ".json"


def _list_images(images_dir: str) -> List[str]:
    names = list_images(images_dir)
    by_json: Dict[str, List[str]] = {}
    for n in names:
        by_json.setdefault(_json_name(n), []).append(n)
    clashes = [v for v in by_json.values() if len(v) > 1]
    if clashes:
        raise InputError(f"{images_dir}: images {clashes[:3]} would write the same JSON file; expected one image "
                         "per file stem")
    return names


def _is_complete(path: str, file_name: str) -> bool:
    """A JSON this job wrote: it parses, names the image and has its annotation list."""
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc["image"]["file_name"] == file_name and isinstance(doc["annotations"], list)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _file_state(path: str) -> Dict[str, int]:
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _read_failures(out_dir: str) -> Dict[str, dict]:
    """The last failure recorded for each file name."""
    last: Dict[str, dict] = {}
    try:
        with open(os.path.join(out_dir, FAILURES_FILE)) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    last[rec["file_name"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
    except FileNotFoundError:
        pass
    return last


def _marker_details(opts: AmgOptions, checkpoint: Optional[str]) -> dict:
    """What the output folder's marker records besides its kind: a rerun must match it."""
    return {"options": opts.to_dict(), "checkpoint": os.path.abspath(checkpoint) if checkpoint else None}


def _check_out_dir(out_dir: str, opts: AmgOptions, checkpoint: Optional[str]) -> None:
    """Raise OutputDirError unless `out_dir` is missing, empty, or this job's with the same options
    and checkpoint. Changes nothing."""
    marker = check_output_dir(out_dir, MARKER_KIND)
    if marker is None:
        return
    want = _marker_details(opts, checkpoint)
    old_opts = marker.get("options") if isinstance(marker.get("options"), dict) else {}
    differ = {k: (old_opts.get(k), v) for k, v in want["options"].items() if old_opts.get(k) != v}
    if marker.get("checkpoint") != want["checkpoint"]:
        differ["checkpoint"] = (marker.get("checkpoint"), want["checkpoint"])
    if differ:
        shown = ", ".join(f"{k} {a!r} (got {b!r})" for k, (a, b) in differ.items())
        raise OutputDirError(f"{out_dir}: was written with {shown}; a rerun must use the same options and checkpoint "
                             "(records would mix); choose another --out for new ones")


def plan_dataset_amg(images_dir: str, out_dir: str, opts: AmgOptions, checkpoint: Optional[str] = None) -> DatasetPlan:
    """List the images and decide which ones a run processes; raises InputError / OutputDirError.
    Reads only; writes nothing."""
    opts.validate()
    names = _list_images(images_dir)
    _check_out_dir(out_dir, opts, checkpoint)
    failures = _read_failures(out_dir) if os.path.isdir(out_dir) else {}
    plan = DatasetPlan(images=len(names), todo=[], complete=[], failed_before=[], unowned=[])
    for i, name in enumerate(names):
        path = os.path.join(images_dir, name)
        target = os.path.join(out_dir, _json_name(name))
        if os.path.lexists(target):
            if _is_complete(target, name):
                plan.complete.append(name)
            else:
                plan.unowned.append((name, f"{target} exists and is not a complete record of this job; left unchanged"))
            continue
        prev = failures.get(name)
        if prev is not None and prev.get("kind") == "decode" and os.path.exists(path):
            if {k: prev.get(k) for k in ("size", "mtime_ns")} == _file_state(path):
                plan.failed_before.append(name)
                continue
        plan.todo.append(ImageTask(i, name, os.path.abspath(path)))
    return plan


class _AmgActor:
    """One Ray actor: builds the engines once, then image paths in -> JSON documents out."""

    def __init__(self, model: Dict[str, list], options: dict, threads: int) -> None:
        import ray  # ray: the ray extra

        self._tmp = tempfile.TemporaryDirectory(prefix="samrt-amg-")  # gone when the actor exits
        runners = {}
        for role, (ref, file_name) in model.items():  # the graphs come through the object store
            path = os.path.join(self._tmp.name, file_name)
            with open(path, "wb") as f:
                f.write(ray.get(ref))
            runners[role] = OnnxRuntimeRunner(path, "cpu", threads, memory_arena=role != "encoder")
        decoder = FastDecoder(runners["image_prep"], runners["fast_decoder"], runners["fast_decoder_mask"],
                              ARENA_DECODER_CHUNK)  # what ONNX Runtime's arena keeps (engines.runner)
        self.generator = InProcessMaskGenerator(runners["encoder"], decoder)
        self.options = AmgOptions(**options).validate()

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out: Dict[str, list] = {"image_id": [], "file_name": [], "document": [], "masks": [], "failure": []}
        for image_id, file_name, path in zip(batch["image_id"], batch["file_name"], batch["path"]):
            image_id, file_name, path = int(image_id), str(file_name), str(path)
            document, masks, failure = "", 0, ""
            try:
                image = _decode_image(path)
            except InputError as e:
                failure = json.dumps({"kind": "decode", "reason": str(e)})
            except Exception as e:  # e.g. PIL's DecompressionBombError: still this image's failure alone
                failure = json.dumps({"kind": "decode", "reason": f"{path}: {type(e).__name__}: {e}"})
            else:
                try:
                    records = self.generator.generate(image, self.options)
                    document, masks = json.dumps(amg_document(image_id, file_name, image, records)), len(records)
                except Exception as e:  # one image's error is its own: recorded, and the job goes on
                    failure = json.dumps({"kind": "generate", "reason": f"{type(e).__name__}: {e}"})
            for key, value in (("image_id", image_id), ("file_name", file_name), ("document", document),
                               ("masks", masks), ("failure", failure)):
                out[key].append(value)
        return {k: np.array(v, dtype=object if k in ("file_name", "document", "failure") else np.int64)
                for k, v in out.items()}


def _append_failure(out_dir: str, task: ImageTask, kind: str, reason: str) -> dict:
    rec = {"file_name": task.file_name, "path": task.path, "kind": kind, "reason": reason,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if os.path.exists(task.path):
        rec.update(_file_state(task.path))
    with open(os.path.join(out_dir, FAILURES_FILE), "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
    return rec


def _cpus_per_actor(actors: int) -> int:
    """The cluster's CPUs shared among the actors, but no more than the largest node has."""
    import ray  # ray: the ray extra

    total = int(ray.cluster_resources().get("CPU", 1))
    largest = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])
    return max(1, min(total // actors, largest))


def _model_refs(export_dir: str, checkpoint: Optional[str]) -> Tuple[Dict[str, list], dict]:
    """Export once here (cached in export_dir), then put the encoder and the fast decoder's graphs
    (the decoder the server's sam_amg runs too) into the object store."""
    import ray  # ray: the ray extra

    manifest = ensure_export(export_dir, "auto", checkpoint)
    model = {}
    for role in ("encoder", "image_prep", "fast_decoder", "fast_decoder_mask"):
        path = manifest.graph_path(role)
        with open(path, "rb") as f:
            model[role] = [ray.put(f.read()), os.path.basename(path)]
    return model, manifest.report


def run_dataset_amg(
    images_dir: str,
    out_dir: str,
    opts: Optional[AmgOptions] = None,
    *,
    checkpoint: Optional[str] = None,
    export_dir: str = DEFAULT_EXPORT_DIR,
    ray_address: Optional[str] = None,
    actors: int = 1,
    cpus_per_actor: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Automatic masks for every image of `images_dir`: one SA-1B JSON each in `out_dir`.

    `checkpoint`: a SAM checkpoint (default: the embedded samrt_small model), exported once into
    `export_dir` on the driver. Ray: an existing cluster at `ray_address` ("auto", "ip:6379",
    "ray://..."), else one already initialised in this process, else a local one started here
    (all CPUs) and shut down at the end. `actors` engines run in parallel, each on `cpus_per_actor`
    CPUs (default: the cluster's CPUs divided among them, at most one node's).

    Returns a summary: images (found), done, skipped (complete before), failed (this run),
    failed_before (skipped), unowned, masks (in the files written now), seconds (wall, this call),
    images_per_second (done + failed over the Ray stage: actor start, model load and all images),
    steady_images_per_second (first to last result), actors, cpus_per_actor, out_dir, failures_file.
    Raises InputError (folder, options) and OutputDirError (an output folder it may not write).
    """
    t_start = time.perf_counter()
    try:
        import ray  # noqa: F401  (the optional dependency: say what to install before doing anything)
    except ImportError:
        raise SamrtError("samrt amg --ray needs Ray: pip install 'samrt[ray]'") from None
    opts = (opts or AmgOptions()).validate()
    if actors < 1:
        raise InputError(f"actors: got {actors}, expected >= 1")
    if checkpoint is None:
        checkpoint = default_checkpoint()
        if checkpoint is None:
            raise SamrtError("no checkpoint given and no embedded samrt_small model in this install")
    plan = plan_dataset_amg(images_dir, out_dir, opts, checkpoint)
    summary: Dict[str, Any] = {
        "images": plan.images, "done": 0, "skipped": len(plan.complete), "failed": 0,
        "failed_before": len(plan.failed_before), "unowned": len(plan.unowned), "masks": 0,
        "seconds": 0.0, "images_per_second": 0.0, "steady_images_per_second": None,
        "actors": actors, "cpus_per_actor": None, "out_dir": os.path.abspath(out_dir),
        "failures_file": os.path.join(os.path.abspath(out_dir), FAILURES_FILE),
    }
    if not plan.todo and not plan.unowned:
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
        return summary  # nothing to do: nothing written, no cluster started
    prepare_output_dir(out_dir, MARKER_KIND, details=_marker_details(opts, checkpoint))  # checked by the plan
    for name, reason in plan.unowned:
        _append_failure(out_dir, ImageTask(-1, name, os.path.abspath(os.path.join(images_dir, name))), "output", reason)
    summary["failed"] = len(plan.unowned)
    if plan.todo:
        _run_on_ray(plan.todo, out_dir, opts, checkpoint, export_dir, ray_address, actors, cpus_per_actor,
                    progress, summary)
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary


@contextlib.contextmanager
def _ray_session(ray_address: Optional[str]) -> Iterator[None]:
    """Join the cluster at `ray_address`, or use the one this process already joined, or start a
    local one; leave (or stop) what this call started; the Ray Data settings changed here are restored."""
    import ray  # ray: the ray extra

    started_here = ray_address is not None or not ray.is_initialized()
    if ray_address is not None:
        ray.init(address=ray_address, log_to_driver=False)
    elif started_here:
        ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start")}
    ctx.enable_progress_bars = False  # the driver's own bar counts images
    ctx.print_on_execution_start = False
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        if started_here:
            ray.shutdown()


def _run_on_ray(todo: List[ImageTask], out_dir: str, opts: AmgOptions, checkpoint: str, export_dir: str,
                ray_address: Optional[str], actors: int, cpus_per_actor: Optional[int], progress: bool,
                summary: Dict[str, Any]) -> None:
    import ray  # ray: the ray extra

    with _ray_session(ray_address):
        model, _ = _model_refs(export_dir, checkpoint)
        threads = cpus_per_actor or _cpus_per_actor(actors)
        summary["cpus_per_actor"] = threads
        ds = ray.data.from_items([{"image_id": t.image_id, "file_name": t.file_name, "path": t.path} for t in todo],
                                 override_num_blocks=min(len(todo), MAX_BLOCKS))
        ds = ds.map_batches(
            _AmgActor, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"model": model, "options": opts.to_dict(), "threads": threads},
            num_cpus=threads,  # dead actors restarted, their images retried: Ray Data's default (see above)
        )
        _collect(ds, {t.file_name: t for t in todo}, out_dir, progress, summary)


def _collect(ds, tasks: Dict[str, ImageTask], out_dir: str, progress: bool, summary: Dict[str, Any]) -> None:
    """Write each result as it arrives (a record, or a line of failures.jsonl); count and time them."""
    from tqdm import tqdm  # tqdm: the client extra

    t0 = time.perf_counter()
    first = last = None
    processed = 0
    with tqdm(total=len(tasks), desc="amg (ray)", unit="img", disable=not progress) as bar:
        for row in ds.iter_rows():
            task = tasks[str(row["file_name"])]
            if row["failure"]:
                failure = json.loads(row["failure"])
                _append_failure(out_dir, task, failure["kind"], failure["reason"])
                summary["failed"] += 1
            else:
                atomic_write_text(os.path.join(out_dir, _json_name(task.file_name)), row["document"])
                summary["done"] += 1
                summary["masks"] += int(row["masks"])
            processed += 1
            last = time.perf_counter()
            first = first or last
            bar.update(1)
            bar.set_postfix(masks=summary["masks"], failed=summary["failed"])
    if last is not None:
        summary["images_per_second"] = round(processed / max(last - t0, 1e-9), 4)
        if processed > 1 and last > first:
            summary["steady_images_per_second"] = round((processed - 1) / (last - first), 4)
