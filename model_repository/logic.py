"""Server-side logic of the Triton models, in plain numpy (testable without Triton).

The python-backend `model.py` files only convert between Triton tensors and these functions.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from samrt import processing as P
from samrt import prompts
from samrt.errors import InputError
from samrt.imageio import decode_image_bytes  # noqa: F401  (re-exported: the one decoder lives in samrt.imageio)

from .disk_cache import DiskTier


__all__ = [
    "EmbeddingCache",
    "CacheEntry",
    "cache_from_params",
    "UnknownImageError",
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
        return int(self.embeddings.nbytes) + sum(int(a.nbytes) for a in self.image_state.values())


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
        self.hits = self.misses = self.evictions = 0

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
        self._put_memory(image_id, entry)
        return entry

    def put(self, image_id: str, entry: CacheEntry) -> None:
        self._put_memory(image_id, entry)
        if self.disk is not None:
            try:
                self.disk.save(image_id, entry)
            except ValueError:  # an id that cannot name a file: memory only
                pass

    def _put_memory(self, image_id: str, entry: CacheEntry) -> None:
        if entry.nbytes > self.max_bytes:
            raise ValueError(f"embedding of {entry.nbytes} bytes: larger than the cache ({self.max_bytes} bytes)")
        with self._lock:
            old = self._items.pop(image_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[image_id] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1

    def stats(self) -> Dict[str, int]:
        out = {"entries": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
               "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
        return {**out, **(self.disk.stats() if self.disk is not None else {})}


def cache_from_params(params: Dict[str, str]) -> EmbeddingCache:
    """The cache its owner's config parameters describe: `cache_bytes` in memory, and with
    `cache_dir` a disk tier there (`cache_dir_bytes`, `cache_model_key`: see
    `samrt.model_repository.render.RepoOptions.cache_dir`)."""
    disk = None
    if params.get("cache_dir"):
        disk = DiskTier(params["cache_dir"], params["cache_model_key"], int(params["cache_dir_bytes"]))
    return EmbeddingCache(int(params["cache_bytes"]), disk)


def single_image_id(image_ids: np.ndarray) -> str:
    """`image_id` [P,1] BYTES of one request -> the one id all its rows name."""
    ids = {(x.decode() if isinstance(x, bytes) else str(x)) for x in np.asarray(image_ids).reshape(-1)}
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
) -> Dict[str, np.ndarray]:
    """The click path's first step (`sam_prompt_prep`): one request's wire prompts, checked with
    SAM's rules (`samrt.prompts`) and completed (the padding point), still in original pixels.

    In (`samrt.wire.SAM_DECODE`): point_coords [P,N,2] FP32, point_labels [P,N] INT32, optional
    mask_input [P,1,m,m] FP32, optional multimask_output [P,1] BOOL.
    Out (`samrt.wire.SAM_PROMPT_PREP`): prompt_coords [P,N',2] FP32, prompt_labels [P,N'] FP32,
    prompt_mask [P,1,m,m] FP32 (zeros when none), has_mask_input [P,1] FP32, multimask [P,1] BOOL.
    Raises InputError naming what was received and what was expected."""
    pc, pl = prompts.check_points(point_coords, point_labels)
    p = pc.shape[0]
    if mask_input is None:
        mask, has = np.zeros((p, 1, low_res_size, low_res_size), np.float32), 0.0
    else:
        mask, has = prompts.check_mask_input(mask_input, p, low_res_size), 1.0
    coords, labels = prompts.complete_prompts(pc, pl)
    return {"prompt_coords": np.ascontiguousarray(coords, np.float32),
            "prompt_labels": np.ascontiguousarray(labels, np.float32),
            "prompt_mask": np.ascontiguousarray(mask, np.float32),
            "has_mask_input": np.full((p, 1), has, np.float32),
            "multimask": np.full((p, 1), parse_multimask(multimask_output))}


# Prompts upscaled at a time: float logits at the original size exist for this many only.
UPSCALE_CHUNK = 8


def upscaled_masks(low_res: np.ndarray, input_size, original_size, image_size: int,
                   chunk: int = UPSCALE_CHUNK) -> np.ndarray:
    """[P,C,m,m] logits -> [P,C,H,W] bool masks, `chunk` prompts at a time: the float logits at
    full size (4 bytes a pixel) never exist for more than `chunk` prompts, only the bool answer."""
    p, c = low_res.shape[:2]
    masks = np.empty((p, c) + tuple(original_size), dtype=bool)
    for start in range(0, p, chunk):
        masks[start:start + chunk] = P.upscale_masks(low_res[start:start + chunk], input_size, original_size,
                                                     image_size) > 0.0
    return masks


def masks_to_rle(masks: np.ndarray) -> np.ndarray:
    """Boolean [..., H, W] masks -> object array [...] of COCO RLE JSON (counts as a string)."""
    from pycocotools import mask as mask_utils  # pycocotools: the client extra

    lead = masks.shape[:-2]
    flat = masks.reshape((-1,) + masks.shape[-2:])
    rles = mask_utils.encode(np.asfortranarray(flat.transpose(1, 2, 0).astype(np.uint8)))
    out = np.empty(len(rles), dtype=object)
    for i, r in enumerate(rles):
        out[i] = json.dumps({"size": [int(s) for s in r["size"]], "counts": r["counts"].decode()}).encode()
    return out.reshape(lead)
