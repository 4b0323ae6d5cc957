"""The embedding cache's disk tier: cache entries that outlive the process holding them.

`samrt serve --cache-dir DIR` gives the cache's owner (`sam_mask_decoder`, or `sam_embedding_cache`
in the production variant) a `DiskTier` under its in-memory LRU (`logic.EmbeddingCache`). Every
entry put in memory is also written here (by a background thread, so a put never waits for the
disk); an id the memory does not hold is looked up here and, when found and sound, brought back
into memory. A server restart, or the watchdog's restart of the owner's process, then finds every
embedding it had written.

Layout: `DIR/<model key>/<image_id>.emb`, where the model key names the served engines (a digest
of the encoder and decoder files, `engine_fingerprint`): entries of another model or checkpoint
live in another folder and are never read for this one. `DIR` carries samrt's `.samrt` marker
(`samrt.artifacts`): a folder holding anything else is refused, and the tier deletes only its own
`*.emb` files (and its own temporary files) inside its model folders.

One file (little-endian):

    b"SAMRTEMB"  uint32 format version  uint32 header bytes  header (JSON)  payload

The header names the model key, the image id, the original size, the payload's SHA-256 and
length, and each array (name, dtype, shape, offset): `embeddings` and every `image_state/<name>`
array of the entry. The fast decoder's state holds the embedding itself as `image_tokens` [HW,C]
(its exact transpose); then `embeddings` is not written a second time: the header says
`"embeddings_from": "image_tokens"` with the embedding's shape, and a read makes the embedding
as a view of `image_tokens` (format 2; format 1 files, which hold both, are still read). Reads check all of it; a file that is truncated, corrupt, of another format
or model, or names another id is a miss (and is deleted), never a wrong answer or a crash.
Writes go to a temporary file in the same folder and `os.replace` it (a reader sees the old file,
the new one, or none). The folder is bounded in bytes: past `max_bytes` the least recently used
files (by modification time, which a read refreshes) are deleted, across every model folder
under `DIR` (another model's files are never read, so they go first).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import re
import struct
import threading
import time
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from samrt.artifacts import prepare_output_dir

__all__ = ["DiskTier", "engine_fingerprint", "MAGIC", "FORMAT_VERSION", "SUFFIX"]

log = logging.getLogger("samrt.server")

MAGIC = b"SAMRTEMB"
FORMAT_VERSION = 2  # 2: the embedding may be derived from image_state/image_tokens
_READABLE_VERSIONS = (1, 2)
SUFFIX = ".emb"
_PREFIX = struct.Struct("<8sII")  # magic, format version, header bytes
_MAX_HEADER = 1 << 20
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # image ids are hex digests; anything else is not a file name here
_TMP = ".tmp-"
_STALE_TMP_SECONDS = 600  # a temporary file this old is a crashed writer's


def engine_fingerprint(paths: Iterable[str]) -> str:
    """A key naming the served model: SHA-256 over the content of each engine file and its
    companions (ONNX external data `<file>.data`, an OpenVINO IR's `.bin`), first 16 hex digits.
    Reads every byte once (a vit_h export: a few seconds), at render time."""
    h = hashlib.sha256()
    for path in paths:
        companions = [path, path + ".data"] + ([path[:-4] + ".bin"] if path.endswith(".xml") else [])
        for p in companions:
            if not os.path.isfile(p):
                continue
            h.update(os.path.basename(p).encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _tokens_hold_embedding(entry) -> bool:
    """Whether the entry's state holds the embedding exactly, as `image_tokens` = emb [C,H,W] as [HW,C]."""
    tokens, emb = entry.image_state.get("image_tokens"), np.asarray(entry.embeddings)
    if tokens is None or tokens.ndim != 2 or tokens.dtype != emb.dtype or tokens.size != emb.size:
        return False
    if emb.ndim < 3 or emb.shape[-3] != tokens.shape[1] or emb.shape[-2] * emb.shape[-1] != tokens.shape[0]:
        return False
    return bool(np.array_equal(emb.reshape(tokens.shape[1], -1).T, tokens))


def _encode(model_key: str, image_id: str, entry) -> bytes:
    derived = _tokens_hold_embedding(entry)
    arrays = ([] if derived else [("embeddings", entry.embeddings)]) + \
        [(f"image_state/{k}", v) for k, v in sorted(entry.image_state.items())]
    specs, chunks, offset = [], [], 0
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        raw = a.tobytes()
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset})
        chunks.append(raw)
        offset += len(raw)
    payload = b"".join(chunks)
    header = {"model": model_key, "image_id": image_id, "original_size": [int(s) for s in entry.original_size],
              "arrays": specs, "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    if derived:
        header.update(embeddings_from="image_tokens", embeddings_shape=[int(d) for d in np.shape(entry.embeddings)])
    header = json.dumps(header).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + payload


def _decode(data: bytearray, model_key: str, image_id: str):
    """(embeddings, original_size, image_state) from a file's bytes; ValueError when anything is off."""
    if len(data) < _PREFIX.size:
        raise ValueError(f"{len(data)} bytes: shorter than the file prefix")
    magic, version, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC or version not in _READABLE_VERSIONS:
        raise ValueError(f"got magic {magic!r} version {version}, expected {MAGIC!r} version in {_READABLE_VERSIONS}")
    if header_len > _MAX_HEADER or _PREFIX.size + header_len > len(data):
        raise ValueError(f"header of {header_len} bytes: truncated or corrupt")
    header = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + header_len]))
    if header.get("model") != model_key or header.get("image_id") != image_id:
        raise ValueError(f"written for model {header.get('model')!r} and image {header.get('image_id')!r}, "
                         f"expected {model_key!r} and {image_id!r}")
    payload = memoryview(data)[_PREFIX.size + header_len:]
    if len(payload) != header["payload_bytes"]:
        raise ValueError(f"payload of {len(payload)} bytes, expected {header['payload_bytes']}: truncated")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise ValueError("payload checksum mismatch: corrupt")
    arrays = {}
    for spec in header["arrays"]:
        dtype, shape = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        end = spec["offset"] + count * dtype.itemsize
        if end > len(payload):
            raise ValueError(f"array {spec['name']!r} runs past the payload")
        arrays[spec["name"]] = np.frombuffer(payload, dtype, count, spec["offset"]).reshape(shape)
    state = {k[len("image_state/"):]: v for k, v in arrays.items() if k.startswith("image_state/")}
    h, w = header["original_size"]
    if header.get("embeddings_from") == "image_tokens" and "embeddings" not in arrays:
        tokens, shape = state["image_tokens"], tuple(int(d) for d in header["embeddings_shape"])
        if int(np.prod(shape, dtype=np.int64)) != tokens.size or len(shape) < 3 or shape[-3] != tokens.shape[1]:
            raise ValueError(f"embeddings_shape {list(shape)} does not match image_tokens {list(tokens.shape)}")
        return tokens.T.reshape(shape), (int(h), int(w)), state  # a view: no second copy in memory
    return arrays["embeddings"], (int(h), int(w)), state


class DiskTier:
    """Entries on disk under `root/<model_key>/`, bounded by `max_bytes` over all of `root`, LRU.

    `save` queues a write (a background thread writes it; `flush()` waits for the queue); `load`
    returns (embeddings, original_size, image_state) or None; `contains` says whether a file for
    the id is listed (not whether it is sound: `load` checks). Thread-safe. Counters: `hits`,
    `misses`, `rejected` (files that failed the checks), `writes`, `evictions`, `write_errors`."""

    def __init__(self, root: str, model_key: str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache_dir_bytes: got {max_bytes}, expected > 0")
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", model_key):
            raise ValueError(f"model key: got {model_key!r}, expected 1-64 letters, digits, '_', '.', '-'")
        self.root = prepare_output_dir(root, "embedding-cache")  # new, empty, or samrt's: else OutputDirError
        self.model_key, self.max_bytes = model_key, int(max_bytes)
        self.folder = os.path.join(self.root, model_key)
        os.makedirs(self.folder, exist_ok=True)
        self._lock = threading.Lock()
        self._files: Dict[str, Tuple[int, float]] = {}  # path -> (bytes, last use), every model folder
        self._bytes = 0
        self.hits = self.misses = self.rejected = self.writes = self.evictions = self.write_errors = 0
        self._scan()
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=64)
        self._writer = threading.Thread(target=self._write_loop, name="samrt-disk-cache", daemon=True)
        self._writer.start()
        atexit.register(self.flush)  # a process that stops normally writes what it queued

    # -- the index -------------------------------------------------------------------------
    def _scan(self) -> None:
        now = time.time()
        for sub in sorted(os.listdir(self.root)):
            folder = os.path.join(self.root, sub)
            if not os.path.isdir(folder) or os.path.islink(folder):
                continue
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if name.startswith(_TMP) and now - st.st_mtime > _STALE_TMP_SECONDS:
                    self._remove(path)
                elif name.endswith(SUFFIX) and not name.startswith(_TMP) and os.path.isfile(path):
                    self._files[path] = (st.st_size, st.st_mtime)
                    self._bytes += st.st_size
        self._evict(0)

    def _path(self, image_id: str) -> str:
        if not _ID.match(image_id):
            raise ValueError(f"image_id: got {image_id!r}, expected letters, digits, '_' or '-' (a hex digest)")
        return os.path.join(self.folder, image_id + SUFFIX)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except OSError:
            pass

    def _forget(self, path: str) -> None:
        """Drop `path` from the index and the disk (the caller holds the lock)."""
        size, _ = self._files.pop(path, (0, 0.0))
        self._bytes -= size
        self._remove(path)

    def _evict(self, incoming: int) -> None:
        """Delete least recently used files until `incoming` more bytes fit (the caller holds the lock)."""
        while self._files and self._bytes + incoming > self.max_bytes:
            oldest = min(self._files, key=lambda p: self._files[p][1])
            self._forget(oldest)
            self.evictions += 1

    # -- reads -----------------------------------------------------------------------------
    def contains(self, image_id: str) -> bool:
        with self._lock:
            return self._path(image_id) in self._files

    def load(self, image_id: str):
        """(embeddings, original_size, image_state) of a sound file for `image_id`, or None."""
        path = self._path(image_id)
        with self._lock:
            if path not in self._files:
                self.misses += 1
                return None
        try:
            with open(path, "rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                n = f.readinto(data)
            entry = _decode(memoryview(data)[:n] if n != len(data) else data, self.model_key, image_id)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("embedding cache on disk: %s: %s; it counts as a miss", path, e)
            with self._lock:
                self.rejected += 1
                self.misses += 1
                self._forget(path)
            return None
        now = time.time()
        with self._lock:
            if path in self._files:
                self._files[path] = (self._files[path][0], now)
            self.hits += 1
        try:
            os.utime(path, (now, now))  # the LRU order survives a restart
        except OSError:
            pass
        return entry

    # -- writes ----------------------------------------------------------------------------
    def save(self, image_id: str, entry) -> None:
        """Queue `entry` (a `logic.CacheEntry`) to be written for `image_id`; a full queue drops it
        (the entry is still in memory; the disk misses it, which costs one encode after a restart)."""
        self._path(image_id)  # a bad id fails here, in the caller
        try:
            self._queue.put_nowait((image_id, entry))
        except queue.Full:
            log.warning("embedding cache on disk: write queue full; %s not written", image_id)

    def write(self, image_id: str, entry) -> None:
        """Write `entry` now: a temporary file in the same folder, then `os.replace`."""
        path = self._path(image_id)
        data = _encode(self.model_key, image_id, entry)
        if len(data) > self.max_bytes:
            raise ValueError(f"entry of {len(data)} bytes: larger than the disk tier ({self.max_bytes} bytes)")
        tmp = os.path.join(self.folder, f"{_TMP}{image_id}.{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            with self._lock:
                old, _ = self._files.pop(path, (0, 0.0))  # replaced below, not deleted
                self._bytes -= old
                self._evict(len(data))
                os.replace(tmp, path)
                self._files[path] = (len(data), time.time())
                self._bytes += len(data)
                self.writes += 1
        finally:
            self._remove(tmp)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.write(*item)
            except Exception as e:  # a full disk or the like: the memory tier still serves
                self.write_errors += 1
                log.warning("embedding cache on disk: could not write %s: %s", item[0] if item else None, e)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued entry is written."""
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=10)

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"disk_files": len(self._files), "disk_bytes": self._bytes, "disk_max_bytes": self.max_bytes,
                    "disk_hits": self.hits, "disk_misses": self.misses, "disk_rejected": self.rejected,
                    "disk_writes": self.writes, "disk_evictions": self.evictions,
                    "disk_write_errors": self.write_errors}
