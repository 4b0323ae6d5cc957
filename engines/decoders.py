"""Mask decoders behind one interface, for the server, the in-process predictor, automatic masks
and the accuracy gate: `prepare_image` once per image (when it is encoded), then `decode` per
request.

- `ClassicDecoder`: the classic decoder graph (`samrt.spec.decoder_spec`); nothing to prepare.
- `FastDecoder`: the exact, lighter decoder (`samrt.spec.fast_decoder_spec`, docs/fast-decoder.md):
  `prepare_image` runs the image_prep graph (the image-only part of the first attention layer) and
  its tensors are kept with the embedding; `decode` pads each prompt to a fixed slot count (a power
  of two, at least 2) with absent slots (masked out, so the answer is that of the unpadded prompt),
  runs prompts with a mask prompt on the `fast_decoder_mask` graph and the others on
  `fast_decoder` (no mask downscaling for them), `chunk` prompts at a time. image_prep's three
  tensors are kept as bfloat16 bits (half the bytes) when the decoder graphs run in bf16 on
  OpenVINO (they would round them to bf16 on every call: the same answers; the click takes as long),
  float32 otherwise; `decode` converts a state kept the other way (e.g. one read back from the
  disk tier of a server that ran another precision).

Both answer exactly what `run_decoder` answers on the classic graph (all 4 mask tokens; select
with `samrt.processing.select_masks`), up to float rounding for the fast decoder.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from samrt.errors import InputError
from samrt.prompts import ABSENT_LABEL

from .factory import runner_for_engine
from .runner import BF16_BITS, DECODER_CHUNK, Runner, from_bf16_bits, run_decoder, to_bf16_bits

__all__ = ["MaskDecoder", "ClassicDecoder", "FastDecoder", "decoder_from_paths", "slots_for", "IMAGE_STATE",
           "STATIC_SHAPES"]

# The fast decoder's per-image tensors, in its graphs' input order: the embedding transposed
# (image_tokens, made here: exact) and image_prep's outputs.
IMAGE_STATE = ("image_tokens", "t2i_keys_t", "t2i_values", "i2t_queries_t")


# OpenVINO decoders compile this many recurring input shapes statically (each checked when it is
# made; see OpenVINORunner): one per (prompt count, slot count) a server meets, clicks first.
STATIC_SHAPES = 8


def slots_for(points: int) -> int:
    """Prompt slots the fast decoder runs a prompt of `points` labelled points in: the next power
    of two, at least 2 (so one compiled shape serves every one-click prompt, another every prompt of
    3-4 points, ...)."""
    if points < 1:
        raise InputError(f"points: got {points}, expected >= 1")
    return max(2, 1 << (points - 1).bit_length())


class MaskDecoder:
    """Interface. `prepare_image(embeddings [1,C,E,E]) -> {name: array}` (kept with the embedding);
    `decode(embeddings [1,C,E,E], state, point_coords [P,N,2] (resized frame), point_labels [P,N],
    mask_input [P,1,m,m] or None, has_mask_input [P] or None) -> (low_res_masks [P,4,m,m],
    iou_predictions [P,4])` float32."""

    kind: str
    low_res_size: int

    def prepare_image(self, embeddings: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, embeddings: np.ndarray, state: Mapping[str, np.ndarray], point_coords: np.ndarray,
               point_labels: np.ndarray, mask_input: Optional[np.ndarray] = None,
               has_mask_input: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def warm_up(self) -> None:
        """Run (and, for static compiles, compile and check) the shapes of ordinary clicks now, so
        that the first click does not pay for it."""

    def embeddings_of(self, state: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
        """The embedding [C,E,E] as a view into `state`, when the state holds it (None: it does not)."""
        return None


class ClassicDecoder(MaskDecoder):
    """The classic decoder graph (one embedding row per prompt) behind the MaskDecoder interface."""

    kind = "decoder"

    def __init__(self, runner: Runner, chunk: int = DECODER_CHUNK) -> None:
        self.runner, self.chunk = runner, chunk
        self.low_res_size = int(runner.input_shapes["mask_input"][-1])

    def prepare_image(self, embeddings: np.ndarray) -> Dict[str, np.ndarray]:
        return {}

    def decode(self, embeddings, state, point_coords, point_labels, mask_input=None, has_mask_input=None):
        return run_decoder(self.runner, embeddings, point_coords, point_labels, mask_input, self.low_res_size,
                           self.chunk, has_mask_input=has_mask_input)

    def warm_up(self) -> None:
        emb = np.zeros((1,) + tuple(int(d) for d in self.runner.input_shapes["image_embeddings"][1:]), np.float32)
        self.decode(emb, {}, np.zeros((1, 2, 2), np.float32), np.array([[1.0, -1.0]], np.float32))


class FastDecoder(MaskDecoder):
    """The fast decoder's three graphs behind the MaskDecoder interface (module docstring)."""

    kind = "fast_decoder"

    def __init__(self, image_prep: Runner, decoder: Runner, decoder_mask: Runner, chunk: int = DECODER_CHUNK) -> None:
        self.image_prep, self.decoder, self.decoder_mask, self.chunk = image_prep, decoder, decoder_mask, chunk
        self.low_res_size = int(decoder_mask.input_shapes["mask_input"][-1])
        self.embedding_shape = tuple(int(d) for d in image_prep.input_shapes["image_embeddings"][1:])

    def prepare_image(self, embeddings: np.ndarray) -> Dict[str, np.ndarray]:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape != (1,) + self.embedding_shape:
            raise InputError(f"image_embeddings: got shape {list(emb.shape)}, expected {[1, *self.embedding_shape]}")
        state = self.image_prep.run({"image_embeddings": emb}, list(IMAGE_STATE[1:]))
        state = _state_for(self.decoder, state)
        state["image_tokens"] = np.ascontiguousarray(emb[0].reshape(emb.shape[1], -1).T)
        return state

    def embeddings_of(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        """The embedding [C,E,E] as a view of the state's image_tokens (no second copy in the cache)."""
        return state["image_tokens"].T.reshape(self.embedding_shape)

    def decode(self, embeddings, state, point_coords, point_labels, mask_input=None, has_mask_input=None):
        coords = np.asarray(point_coords, np.float32)
        labels = np.asarray(point_labels, np.float32)
        p, n = labels.shape
        if coords.shape != (p, n, 2):
            raise InputError(f"point_coords: got shape {list(coords.shape)}, expected {[p, n, 2]}")
        if not state:
            state = self.prepare_image(embeddings)
        slots = slots_for(n)
        if slots > n:  # absent slots: masked out of attention (ABSENT_LABEL), coordinates unused
            coords = np.concatenate([coords, np.zeros((p, slots - n, 2), np.float32)], 1)
            labels = np.concatenate([labels, np.full((p, slots - n), ABSENT_LABEL, np.float32)], 1)
        if mask_input is None:
            has = np.zeros(p, bool)
        elif has_mask_input is None:
            has = np.ones(p, bool)
        else:
            has = np.asarray(has_mask_input).reshape(-1) > 0
        m = self.low_res_size
        low = np.empty((p, 4, m, m), np.float32)
        iou = np.empty((p, 4), np.float32)
        for with_mask in (False, True):
            rows = np.flatnonzero(has == with_mask)
            runner = self.decoder_mask if with_mask else self.decoder
            if len(rows):
                image = _state_for(runner, {k: state[k] for k in IMAGE_STATE})
            for start in range(0, len(rows), max(1, self.chunk)):
                r = rows[start:start + max(1, self.chunk)]
                feeds = dict(image, point_coords=np.ascontiguousarray(coords[r]),
                             point_labels=np.ascontiguousarray(labels[r]))
                if with_mask:
                    feeds["mask_input"] = np.ascontiguousarray(mask_input[r], dtype=np.float32)
                out = runner.run(feeds, ["low_res_masks", "iou_predictions"])
                low[r], iou[r] = out["low_res_masks"], out["iou_predictions"]
        return low, iou

    def warm_up(self, slot_counts=(2, 4)) -> None:
        """One prompt of each of `slot_counts`, without and with a mask prompt, on a random image
        (OpenVINO: each static shape compiled and checked now)."""
        rng = np.random.default_rng(0)
        emb = rng.standard_normal((1,) + self.embedding_shape).astype(np.float32)
        state = self.prepare_image(emb)
        m = self.low_res_size
        for slots in slot_counts:
            coords = rng.uniform(0, 4 * m, (1, slots, 2)).astype(np.float32)
            labels = np.ones((1, slots), np.float32)
            labels[0, -1] = -1
            self.decode(emb, state, coords, labels)
            self.decode(emb, state, coords, labels, rng.standard_normal((1, 1, m, m)).astype(np.float32) * 4)


def _state_for(runner: Runner, state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """`state` with each tensor as `runner` takes it: bf16 bits for its `bf16_inputs`, float32
    for the others (converted only where the state holds the other kind)."""
    wanted = set(getattr(runner, "bf16_inputs", ()))
    out = {}
    for name, a in state.items():
        if name in wanted and a.dtype != BF16_BITS:
            a = to_bf16_bits(a)
        elif name not in wanted and a.dtype == BF16_BITS:
            a = from_bf16_bits(a)
        out[name] = a
    return out


def decoder_from_paths(paths: Mapping[str, str], device: str = "cpu", threads: Optional[int] = None,
                       static_shapes: int = 0, chunk: int = DECODER_CHUNK, bf16_state: bool = True) -> MaskDecoder:
    """The MaskDecoder for engine files: {"decoder": path} (classic) or {"fast_decoder": ...,
    "fast_decoder_mask": ..., "image_prep": ...} (`samrt.variants.Variant.paths`). OpenVINO
    decoders run without Snippets (see OpenVINORunner) and, with `static_shapes` > 0, on checked
    static compiles of the shapes they meet; `bf16_state` False keeps image_prep's tensors in
    float32 even for bf16 OpenVINO graphs (the benchmark's A/B; same answers, slower)."""
    def runner(path: str, shapes: int = 0, bf16_inputs=()) -> Runner:
        return runner_for_engine(path, device, threads, static_shapes=shapes, snippets=False, bf16_inputs=bf16_inputs)

    if "decoder" in paths:
        return ClassicDecoder(runner(paths["decoder"]), chunk)
    missing = [g for g in ("fast_decoder", "fast_decoder_mask", "image_prep") if g not in paths]
    if missing:
        raise InputError(f"decoder engine files: got {sorted(paths)}, expected 'decoder' or all of "
                         "'fast_decoder', 'fast_decoder_mask', 'image_prep'")
    kept = IMAGE_STATE[1:] if bf16_state else ()  # image_prep's tensors: the same on every click of an image
    return FastDecoder(runner(paths["image_prep"]), runner(paths["fast_decoder"], static_shapes, kept),
                       runner(paths["fast_decoder_mask"], static_shapes, kept), chunk)
