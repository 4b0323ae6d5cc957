"""Requests and answers of samrt's wire API (`samrt.wire`), packed and read without any I/O: what
the sync and asyncio clients share.

Prompts are checked once on the client, by `Prompts` with `samrt.prompts`' functions (the ones
the server applies again), so a bad click is refused before it is sent, with the server's words.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from samrt import processing, prompts, wire
from samrt.amg import AmgOptions
from samrt.errors import ImageNotCachedError, InputError

__all__ = [
    "DEFAULT_OUTPUTS", "MAX_RESPONSE_BYTES", "EncodeResult", "Prompts", "encode_inputs", "encode_priority", "parse_encode",
    "decode_inputs", "answer_size", "decode_output_specs", "segment_inputs", "amg_inputs", "parse_amg",
    "cache_get_inputs", "check_cached", "parse_model_info", "prompts_per_request", "split_prompts", "join_answers",
    "wire_outputs", "masks_here",
]

Inputs = Dict[str, Tuple[np.ndarray, str]]
DEFAULT_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# gRPC refuses messages of 2 GiB and more; an answer is kept below this, less room for framing.
MAX_RESPONSE_BYTES = (2 << 30) - (16 << 20)


@dataclass(frozen=True)
class EncodeResult:
    image_id: str
    original_size: Tuple[int, int]


@dataclass(frozen=True)
class Prompts:
    """P prompts for one image, checked: `point_coords` [P,N,2] float64 in original-image pixels,
    `point_labels` [P,N] int32, `mask_input` [P,1,m,m] float32 or None, `multimask_output`.
    Made by `check` (SamClient.decode's arguments) or `assemble` (SamPredictor's)."""

    point_coords: np.ndarray
    point_labels: np.ndarray
    mask_input: Optional[np.ndarray]
    multimask_output: bool

    @classmethod
    def check(cls, point_coords, point_labels, mask_input=None, multimask_output: bool = True,
              low_res_size: Optional[int] = None) -> "Prompts":
        """Labelled points ([N,2] and [N] are one prompt; [P,N,2] and [P,N] are P), as the server
        checks them (`samrt.prompts.check_points`: shapes, finite coordinates, labels in -1..3,
        box corners in pairs); `mask_input` [1,m,m] or [P,1,m,m] (m = `low_res_size` when given)."""
        try:
            pc = np.asarray(point_coords, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"point_coords: got values that are not numbers ({e}), expected [N,2] or [P,N,2] "
                             "(x, y) in pixels") from None
        pl = None if point_labels is None else np.asarray(point_labels)
        if pc.ndim == 2:
            pc = pc[None]
        if pl is not None and pl.ndim == 1:
            pl = pl[None]
        if pc.ndim == 3 and pc.shape[0] == 0:
            raise InputError(f"point_coords: got shape {list(pc.shape)} (no prompts), expected at least one prompt")
        coords, labels = prompts.check_points(pc, pl)
        return cls(coords, labels, _mask(mask_input, coords.shape[0], low_res_size), bool(multimask_output))

    @classmethod
    def assemble(cls, point_coords, point_labels, boxes, mask_input, multimask_output: bool,
                 low_res_size: int) -> "Prompts":
        """SamPredictor.predict_torch's prompt in numpy and original pixels (`point_coords` BxNx2,
        `point_labels` BxN, `boxes` Bx4, `mask_input` Bx1xmxm, each may be None), as labelled
        points (`samrt.prompts.assemble_prompts`: padding or box corners, checked there)."""
        coords, labels = prompts.assemble_prompts(point_coords, point_labels, boxes)
        return cls(coords, labels, _mask(mask_input, coords.shape[0], low_res_size), bool(multimask_output))

    def __len__(self) -> int:
        return self.point_coords.shape[0]

    def check_in_image(self, original_size: Tuple[int, int]) -> "Prompts":
        """Against the image they are for, (H, W): points more than the image's size outside it are
        refused as the server refuses them (`samrt.prompts.check_points_in_image`, InputError);
        points that all lie in [0, 1] on an image larger than that get a UserWarning (they look
        like fractions of the image, `samrt.prompts.looks_like_fractions`). Returns self."""
        prompts.check_points_in_image(self.point_coords, self.point_labels, original_size)
        if prompts.looks_like_fractions(self.point_coords, self.point_labels, original_size):
            warnings.warn(prompts.fractions_message(original_size), UserWarning, stacklevel=_caller_level())
        return self


def _caller_level() -> int:
    """warnings.warn's stacklevel that names the first frame outside samrt (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "samrt":
        frame, level = frame.f_back, level + 1
    return level


def _mask(mask_input, p: int, low_res_size: Optional[int]) -> Optional[np.ndarray]:
    if mask_input is None:
        return None
    m = np.asarray(mask_input, dtype=np.float32)
    if m.ndim == 3:
        m = m[None]
    if m.ndim != 4:
        side = low_res_size or "m"
        raise InputError(f"mask_input: got shape {list(np.shape(mask_input))}, expected [1,{side},{side}] or "
                         f"[P,1,{side},{side}] with P = {p} (the low_res_masks of an earlier answer)")
    # the server's size unknown here (decode_inputs without it): any square m, the server checks it
    return prompts.check_mask_input(m, p, low_res_size or m.shape[-1])


def encode_inputs(image: Optional[np.ndarray], image_bytes: Optional[bytes]) -> Inputs:
    """`sam_encode`'s inputs: exactly one of image (HxWx3 uint8 RGB) or image_bytes."""
    model = wire.SAM_ENCODE
    if (image is None) == (image_bytes is None):
        raise InputError("encode: expected exactly one of image (HxWx3 uint8) or image_bytes")
    if image is not None:
        return {"image": model.input("image").pack(_image(image))}
    return {"image_bytes": model.input("image_bytes").pack([bytes(image_bytes)])}


def encode_priority(background: bool) -> int:
    """Triton's priority for a `sam_encode` request (`samrt.wire`'s levels): background work's
    level, or 0 (none sent: the model's default level, foreground)."""
    if not isinstance(background, (bool, np.bool_)):
        raise InputError(f"background: got {background!r}, expected True or False")
    return wire.BACKGROUND_PRIORITY if background else 0


def _image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: got dtype {image.dtype} shape {list(image.shape)}, expected HxWx3 uint8")
    return image


def parse_encode(out: Dict[str, np.ndarray]) -> EncodeResult:
    size = out["original_size"].reshape(-1)
    return EncodeResult(out["image_id"].reshape(-1)[0].decode(), (int(size[0]), int(size[1])))


def _image_id(image_id) -> str:
    image_id = getattr(image_id, "image_id", image_id)  # an EncodeResult stands for its id
    if not isinstance(image_id, str):
        raise InputError(f"image_id: got {type(image_id).__name__}, expected the str id that encode() returned")
    return image_id


def _outputs(outputs: Sequence[str]) -> list:
    if isinstance(outputs, str):
        outputs = [outputs]
    bad = [o for o in outputs if o not in wire.SAM_DECODE.output_names]
    if bad:
        raise InputError(f"outputs: got {bad}, expected names from {list(wire.SAM_DECODE.output_names)}")
    if not outputs:
        raise InputError(f"outputs: got none, expected at least one of {list(wire.SAM_DECODE.output_names)}")
    return list(outputs)


def wire_outputs(outputs: Sequence[str]) -> list:
    """What a decode asks the server for: `outputs` with `masks` replaced by `low_res_masks` (once,
    order kept). The SDK makes the masks itself from the low-res logits (`masks_here`): they are
    P x C x H x W bytes on the wire against P x C x 256 x 256 x 4 (less from VGA up: 0.9 MB against
    0.8 MB for three 480 x 640 masks, 36 MB against 0.8 MB at 12 MP), and the server's upscaling
    step is skipped. Measured on the 2-core AMD EPYC, one click on the embedded model, gRPC: 14.3 ms
    with the masks from the server, 9.3 ms with them made here (docs/sdk.md)."""
    sent = []
    for o in outputs:
        o = "low_res_masks" if o == "masks" else o
        if o not in sent:
            sent.append(o)
    return sent


def masks_here(answer: Dict[str, np.ndarray], outputs: Sequence[str], original_size: Tuple[int, int],
               image_size: int) -> Dict[str, np.ndarray]:
    """The answer to a decode that asked `outputs`, from the server's answer to `wire_outputs(outputs)`:
    `masks` [P,C,H,W] bool made from `low_res_masks` exactly as the server's sam_mask_upscale makes
    them (`samrt.processing.upscaled_masks`: SamPredictor's postprocess_masks > 0), then only the
    outputs asked, in their order."""
    out = dict(answer)
    if "masks" in outputs:
        h, w = (int(s) for s in original_size)
        input_size = prompts.get_preprocess_shape(h, w, int(image_size))
        out["masks"] = processing.upscaled_masks(answer["low_res_masks"], input_size, (h, w), int(image_size))
    return {o: out[o] for o in outputs}


def pack_decode(image_id: str, p: Prompts) -> Inputs:
    """`sam_decode`'s inputs for checked prompts on one image, packed as the wire declares them."""
    model = wire.SAM_DECODE
    arrays = {"point_coords": p.point_coords, "point_labels": p.point_labels}
    if p.mask_input is not None:
        arrays["mask_input"] = p.mask_input
    arrays["multimask_output"] = np.full((len(p), 1), p.multimask_output)
    arrays["image_id"] = np.full((len(p), 1), _image_id(image_id).encode(), dtype=object)
    return {name: model.input(name).pack(arr) for name, arr in arrays.items()}


def decode_inputs(image_id, point_coords, point_labels, mask_input, multimask_output, outputs,
                  low_res_size: Optional[int] = None) -> Inputs:
    """`sam_decode`'s inputs for P prompts on one image (`Prompts.check`), packed."""
    _outputs(outputs)
    image_id = _image_id(image_id)
    return pack_decode(image_id, Prompts.check(point_coords, point_labels, mask_input, multimask_output, low_res_size))


def answer_size(p: Prompts, original_size: Tuple[int, int], outputs: Sequence[str]) -> Tuple[int, int]:
    """The prompts checked against their image (`Prompts.check_in_image`), and the image's size as
    the answer carries it: (H, W) when `outputs` has masks at the original size, else (0, 0)."""
    p.check_in_image(original_size)
    return tuple(original_size) if {"masks", "masks_rle"} & set(outputs) else (0, 0)


def decode_output_specs(p: int, c: int, original_size: Tuple[int, int], low_res_size: int):
    """dtype and shape of sam_decode's fixed-size outputs for P prompts and C masks each."""
    return {"masks": (np.bool_, (p, c) + tuple(original_size)), "iou_predictions": (np.float32, (p, c)),
            "low_res_masks": (np.float32, (p, c, low_res_size, low_res_size))}


def segment_inputs(image, point_coords, point_labels, multimask_output) -> Inputs:
    """`sam_segment`'s inputs: an image and one prompt (checked against the image, `Prompts.check_in_image`)."""
    model = wire.SAM_SEGMENT
    p = Prompts.check(point_coords, point_labels, None, multimask_output)
    if len(p) != 1:
        raise InputError("segment: expected one prompt ([N,2] points); use encode + decode for many")
    inputs = encode_inputs(image, None)
    p.check_in_image(inputs["image"][0].shape[:2])
    inputs.update({"point_coords": model.input("point_coords").pack(p.point_coords[0]),
                   "point_labels": model.input("point_labels").pack(p.point_labels[0]),
                   "multimask_output": model.input("multimask_output").pack(np.full((1,), p.multimask_output))})
    return inputs


def amg_inputs(image, options: Union[AmgOptions, dict, None]) -> Inputs:
    """`sam_amg`'s inputs: an image and SamAutomaticMaskGenerator's parameters by name (numbers of
    any kind, numpy included; None: its defaults), checked here (`samrt.amg.AmgOptions`)."""
    model = wire.SAM_AMG
    if not isinstance(options, AmgOptions):
        options = AmgOptions.from_fields(dict(options or {}))
    text = json.dumps(options.validate().to_dict()).encode()
    return {"image": model.input("image").pack(_image(image)), "options": model.input("options").pack([text])}


def parse_amg(out: Dict[str, np.ndarray]) -> list:
    return json.loads(out["records"].reshape(-1)[0])


def cache_get_inputs(image_id: str) -> Inputs:
    """The cache owner's inputs for a get of `image_id` (Triton's batch dim first: [1,1])."""
    if not isinstance(image_id, str) or not image_id:
        raise InputError(f"image_id: got {image_id!r}, expected the id sam_encode answered (a string)")
    return {"image_id": wire.SAM_MASK_DECODER.input("image_id").pack([[image_id.encode()]])}


def check_cached(image_id: str, out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A cache get's answer, or ImageNotCachedError when the cache does not hold the id."""
    if not bool(out["found"].reshape(-1)[0]):
        # the words of sam_decode's NOT_FOUND, so both ways of asking read the same
        raise ImageNotCachedError(f"image_id {image_id!r}: not in the embedding cache (unknown or evicted); "
                                  f"encode the image again with sam_encode", "found=false")
    return out


def parse_size(out: Dict[str, np.ndarray]) -> Tuple[int, int]:
    return tuple(int(v) for v in out["original_size"].reshape(-1))


def parse_model_info(decode_config: dict, encoder_config: dict) -> dict:
    """model_info() from the configs of sam_decode and sam_image_encoder (ModelConfig as JSON)."""
    dims = {i["name"]: i["dims"] for i in decode_config["input"]}
    report = encoder_config.get("parameters", {}).get("engine_report", {}).get("string_value")
    served = json.loads(decode_config["parameters"].get("served_model", {}).get("string_value") or "{}")
    return {
        "image_size": int(decode_config["parameters"]["image_size"]["string_value"]),
        "low_res_size": int(dims["mask_input"][-1]),
        "max_prompts": int(decode_config.get("max_batch_size", 0)),
        # the model that owns the embedding cache (samrt.model_repository.models)
        "cache_model": decode_config["parameters"].get("cache_model", {}).get("string_value", "sam_embedding_cache"),
        "encoder_engine": json.loads(report) if report else None,
        # the served model's name and the automatic-mask options its card recommends (None: SAM's defaults)
        "model": served.get("model"),
        "amg_options": served.get("amg_options"),
    }


def prompts_per_request(c: int, outputs: Sequence[str], max_prompts: int, low_res_size: int,
                        original_size: Tuple[int, int], max_bytes: int) -> int:
    """How many prompts one sam_decode request may carry: at most the server's `max_prompts`
    (0: no limit), and an answer below `max_bytes`, counting per prompt and mask C x H x W bytes
    for `masks` (bool), as much again for `masks_rle` (an upper bound), 4 m^2 for `low_res_masks`."""
    h, w = original_size
    per_mask = {"masks": h * w, "masks_rle": h * w, "iou_predictions": 4, "low_res_masks": 4 * low_res_size ** 2}
    per_prompt = c * sum(per_mask[o] for o in outputs)
    return max(1, min(max_prompts or (1 << 31), max_bytes // max(per_prompt, 1)))


def split_prompts(inputs: Inputs, chunk: int):
    """decode_inputs' packed arrays in slices of `chunk` prompts: [(inputs, P of the slice)]."""
    p = inputs["point_coords"][0].shape[0]
    return [({k: (a[i:i + chunk], d) for k, (a, d) in inputs.items()}, min(chunk, p - i)) for i in range(0, p, chunk)]


def join_answers(parts, outputs: Sequence[str]) -> Dict[str, np.ndarray]:
    """The answers of split_prompts' requests, in order, as one answer."""
    return {o: np.concatenate([part[o] for part in parts], axis=0) for o in outputs}
