"""The automatic-masks path: `sam_amg`, one round trip per image.

The image (and each crop) is embedded through the encode path, so embeddings are cached like any
other; the decoder runs in this process (CPU variant: its own engine; production variant: the
native `sam_prompt_decoder` through BLS) in batches of points_per_batch; the answer is the records
as JSON with COCO RLE masks (compact on the wire)."""

from __future__ import annotations

import json
from typing import Dict

import numpy as np

from samrt import amg, wire
from samrt.engines.amg import amg_crop_decoder  # shared with the in-process generator (Ray job)
from samrt.engines.decoders import ClassicDecoder
from samrt.engines.runner import ARENA_DECODER_CHUNK
from samrt.errors import InputError
from samrt.memory import give_back_freed_memory

from .base import CANCELLED, PythonModel, bls, decoder_engine, error, input_array, log, lower_priority, response
from .encode import cache_model, cached, encode, image_from_request

__all__ = ["AmgModel", "BlsRunner"]


class BlsRunner:
    """samrt.engines.Runner over a model of the same server (the production variant's native decoder)."""

    def __init__(self, model_name: str, mask_size: int) -> None:
        self.model_name = model_name
        self.output_names = ["low_res_masks", "iou_predictions"]
        self.input_shapes = {"mask_input": ("num_prompts", 1, mask_size, mask_size)}

    def run(self, feeds, outputs=None):
        return bls(self.model_name, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()},
                   list(outputs or self.output_names))


def _decoder(params: Dict[str, str]):
    """The production variant's native decoder through BLS, else this process's own decoder engine
    (on ONNX Runtime in runs of ARENA_DECODER_CHUNK prompts: what its arena keeps after an image)."""
    if params.get("decoder_model"):
        return ClassicDecoder(BlsRunner(params["decoder_model"], int(params["low_res_size"])))
    return decoder_engine(params, onnxruntime_chunk=ARENA_DECODER_CHUNK)


def _cancelled(request):
    """A `should_stop()` for samrt.amg: true once Triton has marked `request` cancelled (its
    gRPC call was cancelled or its deadline passed; Triton 2.51 marks no HTTP request, even when
    its connection closed: measured, see README)."""
    check = getattr(request, "is_cancelled", None)
    return (lambda: bool(check())) if check is not None else None


class AmgModel(PythonModel):
    """sam_amg: image (or image_bytes) and options (JSON of samrt.amg.AmgOptions fields) -> records."""

    error_name = wire.SAM_AMG.name

    def setup(self, params) -> None:
        lower_priority(params)
        self.decoder = _decoder(params)
        self.image_size = int(params["image_size"])
        self.max_pixels = int(params["max_pixels"])
        self.cache = cache_model(params)

    def _one(self, request):
        try:
            image = image_from_request(request, self.max_pixels, self.image_size, wire.SAM_AMG.name)
            raw = input_array(request, "options")
            fields = json.loads(bytes(raw.reshape(-1)[0]).decode()) if raw is not None else {}
            records = amg.generate_masks(image, self._set_crop, amg.AmgOptions.from_fields(fields), "coco_rle",
                                         should_stop=_cancelled(request))
        except amg.AmgCancelled as e:  # [robust] the client has gone: stop, answer CANCELLED
            log.info("%s: %s", wire.SAM_AMG.name, e)
            return error(str(e), CANCELLED)
        except (TypeError, ValueError) as e:  # options the generator refuses are the caller's
            if isinstance(e, InputError):
                raise
            raise InputError(str(e)) from e
        finally:
            give_back_freed_memory()  # an image's masks (~1 GB at the peak) do not stay with the process
        return response(wire.SAM_AMG, {"records": np.array([json.dumps(records).encode()], dtype=object)})

    def _set_crop(self, crop: np.ndarray):
        crop = np.ascontiguousarray(crop)
        image_id = encode(crop, self.image_size, self.cache)
        emb = cached(self.cache, image_id)["image_embeddings"]
        return amg_crop_decoder(self.decoder, emb, crop.shape[:2], self.image_size)
