"""TritonSamPredictor: segment_anything.SamPredictor's API over a samrt server.

Switching existing code is one line: `predictor = TritonSamPredictor(SamClient(url))` instead
of `SamPredictor(sam)`. Same methods, arguments, output shapes and dtypes: `predict` in numpy;
`predict_torch`, `transform`, `get_image_embedding`, `features`, `device` and
`model.mask_threshold` as SamPredictor has them (torch tensors where torch is importable; the
client-only install needs no torch and gets numpy from `get_image_embedding`).

Like SamPredictor it holds per-image state (the image set last), so one predictor is for one
thread; a web app or any code that clicks from many threads shares one `SamClient` and calls its
stateless `encode(image)` / `decode(image_id, ...)`, or gives each thread its own predictor.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Optional, Tuple

import numpy as np

from samrt import processing as P
from samrt.errors import ImageNotCachedError, InputError
from samrt.predictor_api import SamPredictorAPI

from ._client import SamClient
from ._requests import Prompts
from .transforms import ResizeLongestSide

__all__ = ["TritonSamPredictor"]


def _torch_or_none():
    try:
        import torch  # torch: optional for the SDK (tensors in and out when it is installed)
    except ImportError:
        return None
    return torch


def _as_numpy(x):
    """A torch tensor (any device) or array-like -> numpy; None stays None."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ServedModel:
    """What code reads from `SamPredictor.model` that makes sense for a served model: the mask
    threshold on the logits (0.0, as `Sam.mask_threshold`), the image format and the device."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    @property
    def device(self):
        torch = _torch_or_none()
        return torch.device("cpu") if torch is not None else "cpu"


class TritonSamPredictor(SamPredictorAPI):
    """SamPredictor over a server. Coordinates in `predict` / `predict_batch` are original-image
    pixels; in `predict_torch` the resized frame (`transform.apply_coords`), as SamPredictor's.

    To use an image the server already holds (encoded by another process): `set_image_id(image_id)`.

    Not for sharing between threads: like SamPredictor it holds per-image state (`set_image`
    then `predict`), so a click from one thread can land on the image another thread set. Give
    each thread its own predictor (they may share one `SamClient`, which is thread-safe), or, in a
    web app, call the stateless `SamClient.encode(image)` and `SamClient.decode(image_id, ...)`.
    Two threads inside one predictor at once get a `RuntimeWarning` (it does not serialise them).
    """

    def __init__(self, client: SamClient, keep_image: bool = True) -> None:
        """`keep_image`: hold the image so that an evicted embedding is re-encoded transparently."""
        self.client = client
        self._users = set()  # threads inside a call now (the warning on concurrent use)
        self._users_lock = threading.Lock()
        self.keep_image = keep_image
        info = client.model_info()
        self.image_size = info["image_size"]
        self.low_res_size = info["low_res_size"]
        self.transform = ResizeLongestSide(self.image_size)
        self.model = ServedModel(self.image_size)
        self.reset_image()

    @property
    def device(self):
        """Where predict_torch's tensors are: the CPU (torch.device('cpu'); the string 'cpu' without torch)."""
        return self.model.device

    @contextlib.contextmanager
    def _one_thread(self):
        """Warns when another thread is inside this predictor too: its image may change under us."""
        me = threading.get_ident()
        with self._users_lock:
            others = bool(self._users - {me})
            self._users.add(me)
        if others:
            warnings.warn("TritonSamPredictor used from two threads at once: it holds per-image state like "
                          "SamPredictor, so a click may be decoded on the other thread's image. Give each thread "
                          "its own predictor, or call SamClient.encode / SamClient.decode(image_id, ...), which "
                          "are stateless", RuntimeWarning, stacklevel=3)
        try:
            yield
        finally:
            with self._users_lock:
                self._users.discard(me)

    # -- image -----------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """HxWx3 uint8 image ('RGB' or 'BGR'), encoded on the server (cached by pixel hash)."""
        image = self._rgb(image, image_format)
        with self._one_thread():
            self.reset_image()
            result = self.client.encode(image)
            self._attach(result.image_id, result.original_size)
            self._image = image if self.keep_image else None

    def set_image_id(self, image_id: str, original_size: Optional[Tuple[int, int]] = None) -> None:
        """Use an image the server holds already (its id from `SamClient.encode`, another client or
        another process) without sending pixels. The server is asked whether it holds the id and
        its (H, W); ImageNotCachedError if not, InputError if `original_size` disagrees. Such an
        image cannot be re-encoded transparently after eviction (no pixels are kept)."""
        size = self.client.image_size(image_id)
        if original_size is not None and tuple(int(v) for v in original_size) != size:
            raise InputError(f"original_size: got {tuple(original_size)}, expected {size}, the size of the image "
                             f"the server holds as {image_id!r}")
        self.reset_image()
        self._attach(image_id, size)

    def _attach(self, image_id: str, original_size: Tuple[int, int]) -> None:
        self.image_id = image_id
        self.original_size = tuple(original_size)
        self.input_size = P.get_preprocess_shape(*self.original_size, self.image_size)
        self.is_image_set = True

    def reset_image(self) -> None:
        self.is_image_set = False
        self.image_id: Optional[str] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None
        self._image = None
        self._features = None  # (image_id, embedding) once fetched

    def _require_image(self) -> None:
        super()._require_image()
        if not self.image_id:
            raise RuntimeError("is_image_set is True but the predictor holds no image_id: the embedding is on the "
                               "server, so set an image with .set_image(image) or attach one the server holds with "
                               ".set_image_id(image_id)")
        if self.original_size is None:  # attributes set by hand: take the size from the server
            self.original_size = self.client.image_size(self.image_id)
        if self.input_size is None:
            self.input_size = P.get_preprocess_shape(*self.original_size, self.image_size)

    def get_image_embedding(self):
        """The image's embedding, fetched from the server: [1,D,E,E] float32 ([1,256,64,64] for the
        official models) — a torch tensor where torch is importable, as SamPredictor's; numpy
        otherwise. RuntimeError when no image is set; ImageNotCachedError when the server evicted it
        and the predictor keeps no pixels to encode again."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        self._require_image()
        if self._features is None or self._features[0] != self.image_id:
            try:
                emb = self.client.image_embedding(self.image_id)
            except ImageNotCachedError:
                if self._image is None:
                    raise
                self.image_id = self.client.encode(self._image).image_id
                emb = self.client.image_embedding(self.image_id)
            torch = _torch_or_none()
            self._features = (self.image_id, torch.from_numpy(np.require(emb, requirements='W')) if torch is not None else emb)  # wire buffers are read-only
        return self._features[1]

    @property
    def features(self):
        """SamPredictor.features: the embedding (see get_image_embedding), None when no image is set."""
        return self.get_image_embedding() if self.is_image_set else None

    @features.setter
    def features(self, value) -> None:
        if value is not None:
            raise AttributeError("features: the embedding is held by the server, not set from the client; attach an "
                                 "image the server holds with .set_image_id(image_id), or set one with .set_image(image)")
        self._features = None

    def _decode(self, prompts: Prompts, outputs):
        try:
            return self.client._decode_prompts(self.image_id, prompts, outputs)
        except ImageNotCachedError:
            if self._image is None:
                raise
            self.image_id = self.client.encode(self._image).image_id  # evicted: encode again, once
            return self.client._decode_prompts(self.image_id, prompts, outputs)

    # -- prompts: predict() comes from SamPredictorAPI -------------------------------------
    def predict_batch(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one call (SamPredictor.predict_torch's arguments, in numpy and original pixels).

        Coordinates in original-image pixels: `point_coords` BxNx2, `point_labels` BxN, `boxes`
        Bx4 XYXY, `mask_input` Bx1x256x256. Returns BxCxHxW masks, BxC scores, BxCx256x256 logits.
        Any B: the client splits above the server's prompt limit and joins the answers.
        """
        self._require_image()
        # The same prompt assembly as the in-process predictor (points, padding or box corners),
        # checked once here and sent as labelled points: the server uses a prompt holding -1 or
        # 2/3 labels as given.
        prompts = Prompts.assemble(point_coords, point_labels, boxes, mask_input, multimask_output, self.low_res_size)
        outputs = ["iou_predictions", "low_res_masks"] + ([] if return_logits else ["masks"])
        with self._one_thread():
            out = self._decode(prompts, outputs)
            low = out["low_res_masks"]
            if return_logits:
                masks = P.upscale_masks(low, self.input_size, self.original_size, self.image_size)
            else:
                masks = out["masks"]
        return masks, out["iou_predictions"], low

    def predict_torch(
        self,
        point_coords,
        point_labels,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """SamPredictor.predict_torch: torch tensors in and out, coordinates in the resized frame
        (`self.transform.apply_coords_torch` / `apply_boxes_torch`, as the official predictor).

        `point_coords` BxNx2, `point_labels` BxN, `boxes` Bx4 XYXY, `mask_input` Bx1x256x256
        (each may be None; tensors on any device, or numpy). Returns (masks BxCxHxW bool, or
        float32 logits with `return_logits`; iou_predictions BxC; low_res_masks BxCx256x256), on
        `self.device`. The wire takes original pixels: the coordinates are mapped back with the
        transform's scale (`transform.restore_coords`) before they are sent."""
        torch = _torch_or_none()
        if torch is None:
            raise ImportError("predict_torch needs torch (pip install torch); predict_batch is its numpy twin")
        self._require_image()
        coords, boxes = _as_numpy(point_coords), _as_numpy(boxes)
        if coords is not None:
            coords = self.transform.restore_coords(coords, self.original_size)
        if boxes is not None:
            boxes = self.transform.restore_boxes(boxes, self.original_size)
        masks, iou, low = self.predict_batch(coords, _as_numpy(point_labels), boxes, _as_numpy(mask_input),
                                             multimask_output, return_logits)
        # tensors of their own (the answer's arrays may be read-only buffers of the transport)
        return tuple(torch.from_numpy(np.array(a)) for a in (masks, iou, low))
