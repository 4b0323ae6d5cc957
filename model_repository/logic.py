"""Server-side logic of the Triton models, in plain numpy (testable without Triton).

The python-backend `model.py` files only convert between Triton tensors and these functions.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from samrt import processing as P
from samrt import prompts
from samrt.errors import InputError, SamrtError
from samrt.imageio import decode_image_bytes  # noqa: F401  (re-exported: the one decoder lives in samrt.imageio)
from samrt.masks import masks_to_rles

from .disk_cache import DiskTier


__all__ = [
    "EmbeddingCache",
    "CacheEntry",
    "cache_from_params",
    "UnknownImageError",
    "CacheWriteRefused",
    "CACHE_KEY_ENV",
    "internal_cache_key",
    "check_cache_key",
    "cache_entry",
    "decode_image_bytes",
    "single_image_id",
    "parse_multimask",
    "prepare_prompts",
    "upscaled_masks",
    "masks_to_rle",
]


class UnknownImageError(InputError):
    """The image_id is not in the embedding cache (never encoded, or evicted)."""

    def __init__(self, image_id: str) -> None:
        super().__init__(
            f"image_id {image_id!r}: not in the embedding cache (unknown or evicted); "
            "encode the image again with sam_encode"
        )
        self.image_id = image_id


@dataclass
class CacheEntry:
    """One cached image: its embedding [C,E,E] float32 (what `get` answers), its original (H, W),
    and the decoder engine's per-image tensors (`image_state`, name -> array: work that depends
    only on the image, done once when it is cached; empty for the classic decoder). The cache's
    byte bound counts every array."""

    embeddings: np.ndarray
    original_size: Tuple[int, int]
    image_state: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct buffers the arrays use (the embedding may be a view of a state array)."""
        roots = {}
        for a in [self.embeddings, *self.image_state.values()]:
            while isinstance(a.base, np.ndarray):
                a = a.base
            roots[id(a)] = int(a.nbytes)
        return sum(roots.values())


class EmbeddingCache:
    """LRU cache of image embeddings, bounded in bytes. Thread-safe.

    With a `disk` tier (`samrt.model_repository.disk_cache.DiskTier`, `samrt serve --cache-dir`):
    every put is also written to disk (in the background), and an id the memory does not hold is
    read back from disk (checked; a bad file is a miss) into memory, so `get` and `in` answer for
    entries written before a restart. Without one, the memory is all there is."""

    def __init__(self, max_bytes: int, disk=None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: got {max_bytes}, expected > 0")
        self.max_bytes = int(max_bytes)
        self.disk = disk
        self._items: "OrderedDict[str, CacheEntry]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.repairs = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __contains__(self, image_id: str) -> bool:
        """Whether the id is held: in memory (the LRU order is not touched), else on disk (a sound
        file is read back into memory, so the decode that follows finds it)."""
        with self._lock:
            if image_id in self._items:
                return True
        return self._from_disk(image_id) is not None

    def get(self, image_id: str) -> CacheEntry:
        with self._lock:
            entry = self._items.get(image_id)
            if entry is not None:
                self._items.move_to_end(image_id)
                self.hits += 1
                return entry
        entry = self._from_disk(image_id)
        with self._lock:
            if entry is None:
                self.misses += 1
                raise UnknownImageError(image_id)
            self.hits += 1
        return entry

    def _from_disk(self, image_id: str) -> Optional[CacheEntry]:
        if self.disk is None:
            return None
        try:
            found = self.disk.load(image_id)
        except ValueError:  # an id that cannot name a file: not held
            return None
        if found is None:
            return None
        embeddings, original_size, image_state = found
        entry = CacheEntry(embeddings, original_size, image_state)
        return self._put_memory(image_id, entry)

    def put(self, image_id: str, entry: CacheEntry) -> CacheEntry:
        """Store `entry` under `image_id` and return the entry the cache now holds for it.

        An entry is never replaced by another embedding of the same image: when the id is cached
        with the same original size, the cached entry stays (first writer wins: two encodes of one
        image racing store one embedding, and a click never sees its image's embedding change).
        One cached with another size is damaged (the id hashes the image's shape with its pixels,
        so one id has one size): `entry`, just computed from the pixels by the caller, replaces it.
        The entry's arrays are made read-only, so no code path can change a cached embedding.
        With a disk tier, a newly stored entry is also written to disk (in the background)."""
        kept = self._put_memory(image_id, entry)
        if self.disk is not None and kept is entry:
            try:
                self.disk.save(image_id, kept)
            except ValueError:  # an id that cannot name a file: memory only
                pass
        return kept

    def _put_memory(self, image_id: str, entry: CacheEntry) -> CacheEntry:
        if entry.nbytes > self.max_bytes:
            raise ValueError(f"embedding of {entry.nbytes} bytes: larger than the cache ({self.max_bytes} bytes)")
        for a in (entry.embeddings, *entry.image_state.values()):
            a.flags.writeable = False
        with self._lock:
            old = self._items.get(image_id)
            if old is not None and old.original_size == entry.original_size:
                self._items.move_to_end(image_id)
                return old
            if old is not None:
                del self._items[image_id]
                self._bytes -= old.nbytes
                self.repairs += 1
            self._items[image_id] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            return entry

    def peek(self, image_id: str) -> Optional[CacheEntry]:
        """The entry for `image_id` or None, without touching the LRU order or the counters: in
        memory, else on disk (a sound file is read back into memory, as `__contains__` does)."""
        with self._lock:
            entry = self._items.get(image_id)
        return entry if entry is not None else self._from_disk(image_id)

    def stats(self) -> Dict[str, int]:
        out = {"entries": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
               "hits": self.hits, "misses": self.misses, "evictions": self.evictions, "repairs": self.repairs}
        return {**out, **(self.disk.stats() if self.disk is not None else {})}


def cache_from_params(params: Dict[str, str]) -> EmbeddingCache:
    """The cache its owner's config parameters describe: `cache_bytes` in memory, and with
    `cache_dir` a disk tier there (`cache_dir_bytes`, `cache_model_key`: see
    `samrt.model_repository.render.RepoOptions.cache_dir`)."""
    disk = None
    if params.get("cache_dir"):
        disk = DiskTier(params["cache_dir"], params["cache_model_key"], int(params["cache_dir_bytes"]))
    return EmbeddingCache(int(params["cache_bytes"]), disk)


class CacheWriteRefused(InputError):
    """A write to the embedding cache without the server's internal key: only the models of the
    same server may store embeddings (INVALID_ARG: the request's inputs are refused)."""


# The per-server secret that lets a model store an embedding in the cache: the launcher
# (model_repository.server.TritonServer) generates it and puts it in tritonserver's environment,
# which the python-backend stubs inherit; the cache owner compares it with each put's `cache_key`.
CACHE_KEY_ENV = "SAMRT_CACHE_KEY"


def internal_cache_key() -> str:
    """The server's internal cache key, from the environment (`CACHE_KEY_ENV`); SamrtError naming
    what to do when it is missing (a tritonserver started without samrt's launcher)."""
    key = os.environ.get(CACHE_KEY_ENV, "")
    if len(key) < 16:
        raise SamrtError(f"{CACHE_KEY_ENV}: got {'an empty value' if not key else f'{len(key)} characters'}, expected "
                         "a random secret of at least 16 characters in tritonserver's environment (samrt's launcher "
                         "sets one per server; elsewhere start tritonserver with e.g. "
                         f"{CACHE_KEY_ENV}=$(openssl rand -hex 16))")
    return key


def check_cache_key(sent: Optional[np.ndarray], expected: str, model: str) -> None:
    """A put's `cache_key` tensor (None when absent) against the server's key, compared in
    constant time (hmac.compare_digest); CacheWriteRefused unless they are equal."""
    got = b""
    if sent is not None and np.asarray(sent).size == 1:
        value = np.asarray(sent).reshape(-1)[0]
        got = value if isinstance(value, bytes) else str(value).encode()
    if not hmac.compare_digest(got, expected.encode()):
        raise CacheWriteRefused(
            f"{model}: got a write to the embedding cache (image_embeddings) "
            f"{'without' if sent is None else 'with a wrong'} internal key, expected none from outside the server: "
            "embeddings are stored only by sam_encode, sam_segment and sam_amg of the same server")


def cache_entry(embeddings: np.ndarray, original_size: Optional[np.ndarray], embedding_shape: Tuple[int, ...]) -> CacheEntry:
    """A put's tensors, checked -> a CacheEntry: `embeddings` [1,D,E,E] or [D,E,E] float32 of the
    served model's shape (`embedding_shape`, D,E,E) and finite, `original_size` two positive ints."""
    emb = np.asarray(embeddings)
    if emb.shape[-3:] != tuple(embedding_shape) or emb.size != int(np.prod(embedding_shape)):
        raise InputError(f"image_embeddings: got shape {list(emb.shape)}, expected {list(embedding_shape)} "
                         "(the served model's embedding)")
    if not np.all(np.isfinite(emb)):
        raise InputError("image_embeddings: got non-finite values, expected a finite embedding")
    size = None if original_size is None else np.asarray(original_size).reshape(-1)
    if size is None or size.size != 2 or not np.all(size > 0):
        raise InputError(f"original_size: got {None if size is None else size.tolist()}, expected (H, W), both > 0")
    return CacheEntry(np.array(emb.reshape(embedding_shape), dtype=np.float32), (int(size[0]), int(size[1])))


def _id_text(x) -> str:
    if not isinstance(x, bytes):
        return str(x)
    try:
        return x.decode()
    except UnicodeDecodeError:
        raise InputError(f"image_id: got {len(x)} bytes that are not UTF-8 ({x[:16]!r}), expected the id "
                         "sam_encode answered (32 hex digits)") from None


def single_image_id(image_ids: np.ndarray) -> str:
    """`image_id` [P,1] BYTES of one request -> the one id all its rows name."""
    ids = {_id_text(x) for x in np.asarray(image_ids).reshape(-1)}
    if len(ids) != 1:
        raise InputError(f"image_id: got {len(ids)} different ids in one request, expected one image per request")
    return ids.pop()


def parse_multimask(multimask_output: Optional[np.ndarray]) -> bool:
    """`multimask_output` [P,1] BOOL (one value per request), absent -> True."""
    if multimask_output is None:
        return True
    mm = np.asarray(multimask_output).reshape(-1).astype(bool)
    if mm.size and not (mm == mm[0]).all():
        raise InputError("multimask_output: got different values within one request, expected one value")
    return bool(mm[0]) if mm.size else True


def prepare_prompts(
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    mask_input: Optional[np.ndarray],
    multimask_output: Optional[np.ndarray],
    low_res_size: int,
    zeros_for_missing_mask: bool = True,
) -> Dict[str, Optional[np.ndarray]]:
    """The click path's first step (`sam_prompt_prep`): one request's wire prompts, checked with
    SAM's rules (`samrt.prompts`) and completed (the padding point), still in original pixels.

    In (`samrt.wire.SAM_DECODE`): point_coords [P,N,2] FP32, point_labels [P,N] INT32, optional
    mask_input [P,1,m,m] FP32, optional multimask_output [P,1] BOOL.
    Out (`samrt.wire.SAM_PROMPT_PREP`): prompt_coords [P,N',2] FP32, prompt_labels [P,N'] FP32,
    prompt_mask [P,1,m,m] FP32 (zeros when none; None with `zeros_for_missing_mask` False, for a
    decoder that needs no mask tensor then), has_mask_input [P,1] FP32, multimask [P,1] BOOL.
    Raises InputError naming what was received and what was expected."""
    pc, pl = prompts.check_points(point_coords, point_labels)
    p = pc.shape[0]
    if mask_input is None:
        mask = np.zeros((p, 1, low_res_size, low_res_size), np.float32) if zeros_for_missing_mask else None
        has = 0.0
    else:
        mask, has = prompts.check_mask_input(mask_input, p, low_res_size), 1.0
    coords, labels = prompts.complete_prompts(pc, pl)
    return {"prompt_coords": np.ascontiguousarray(coords, np.float32),
            "prompt_labels": np.ascontiguousarray(labels, np.float32),
            "prompt_mask": None if mask is None else np.ascontiguousarray(mask, np.float32),
            "has_mask_input": np.full((p, 1), has, np.float32),
            "multimask": np.full((p, 1), parse_multimask(multimask_output))}


# [P,C,m,m] logits -> [P,C,H,W] bool masks, UPSCALE_CHUNK prompts at a time (samrt.processing:
# the same function answers the SDK's masks).
UPSCALE_CHUNK = P.UPSCALE_CHUNK
upscaled_masks = P.upscaled_masks


def masks_to_rle(masks: np.ndarray) -> np.ndarray:
    """Boolean [..., H, W] masks -> object array [...] of COCO RLE JSON (counts as a string)."""
    lead = masks.shape[:-2]
    rles = masks_to_rles(masks.reshape((-1,) + masks.shape[-2:]))
    out = np.empty(len(rles), dtype=object)
    for i, r in enumerate(rles):
        out[i] = json.dumps(r).encode()
    return out.reshape(lead)
