"""What samrt answers to Label Studio: `/setup` and `/predict` of its ML backend protocol, through
the SDK (`samrt.client.AsyncSamClient`) on a samrt server.

- **Interactive** (`/predict` with a `context`: the annotator's smart keypoints and rectangles):
  one `brushlabels` region, the label of the prompt, scored by SAM's predicted IoU. A lone click
  asks SAM for its three masks and answers the best (SAM's training: a click is ambiguous);
  anything more asks for the single mask. When the prompts extend the previous prompts of the same
  region (same task, more points or a box added), the previous answer's low-resolution logits go
  in as `mask_input`, as SAM was trained to refine.
- **Images**: every task image is encoded once on the server and known by its image id; the
  embeddings live in the server's cache (any number of images, bounded by the server, on disk
  with `samrt serve --cache-dir`), so a click is one decode. An id the server lost (evicted,
  restarted without a disk tier) is encoded again, once.
- **Pre-annotation** (`/predict` without a context): automatic masks (`sam_amg`) as one
  prediction per task, when the project asks for it (`extra_params` `{"preannotate": true, ...}`
  in Label Studio's model settings) or `samrt label-studio --preannotate` made it the default,
  each task bounded by `preannotate_timeout` seconds (gRPC's deadline cancels the job on the
  server). A task that fails or runs out of time gets an entry without `result`, which Label
  Studio logs and skips (no empty prediction is stored, so asking again retries it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from samrt.amg import AmgOptions
from samrt.client import AsyncSamClient, served_amg_options
from samrt.errors import ImageNotCachedError, InputError, SamrtError

from ..exports import rle_mask
from .images import ImageSource
from .regions import Prompt, Tags, brush_region, context_prompt, image_value, parse_label_config

__all__ = ["LabelStudioBackend"]

log = logging.getLogger("samrt.label_studio")

# Automatic-mask options for pre-annotation (SAM's released models: points_per_side 32,
# pred_iou_thresh 0.88, stability_score_thresh 0.95; extra_params may override any of AmgOptions).
# Pre-annotation's options: those given (CLI, the project's extra_params), else what the served
# model's card recommends (the embedded model's filters are lower than SAM's), else SAM's defaults
# (`samrt.client.served_amg_options`), as `samrt amg` and `samrt annotate` choose them.
REGIONS_KEPT = 256  # regions whose last logits are kept for refinement (256 KiB each)
IMAGES_KNOWN = 10000  # image URL -> (image_id, size): a few hundred bytes each


def _project_id(project) -> str:
    return str(project or "").split(".", 1)[0]


class LabelStudioBackend:
    """Answers Label Studio's `/setup` and `/predict` bodies (`setup(body)`, `predict(body)`).

    `client`: the interactive path's AsyncSamClient; `amg_client` (default: one on the same URL
    with `preannotate_timeout` as its timeout) runs pre-annotation. `images`: where task images
    come from (`ImageSource`: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)."""

    def __init__(self, client: AsyncSamClient, images: Optional[ImageSource] = None, preannotate: bool = False,
                 preannotate_timeout: float = 60.0, amg_options: Optional[dict] = None,
                 amg_client: Optional[AsyncSamClient] = None, model_version: str = "samrt") -> None:
        self.client = client
        self.images = images or ImageSource()
        self.preannotate, self.preannotate_timeout = preannotate, float(preannotate_timeout)
        self.amg_options = {k: v for k, v in (amg_options or {}).items() if v is not None}  # given
        AmgOptions.from_fields(dict(self.amg_options))  # checked now
        self.amg_client = amg_client or AsyncSamClient(client.url, client.protocol, timeout=self.preannotate_timeout)
        self.model_version = model_version
        self._projects: Dict[str, dict] = {}  # project id -> extra_params from /setup
        self._known: "OrderedDict[str, Tuple[str, Tuple[int, int]]]" = OrderedDict()  # image URL -> (id, (H, W))
        self._regions: "OrderedDict[tuple, Tuple[Prompt, np.ndarray]]" = OrderedDict()  # -> (prompts, logits [1,m,m])
        self._encoding: Dict[str, asyncio.Future] = {}
        self._configs: Dict[str, Tags] = {}

    async def close(self) -> None:
        await self.images.close()
        await self.client.close()
        if self.amg_client is not self.client:
            await self.amg_client.close()

    # -- the protocol ------------------------------------------------------------------------
    async def setup(self, body: dict) -> dict:
        """`/setup`: remembers the project's `extra_params`; answers the model version."""
        extra = body.get("extra_params") or {}
        if not isinstance(extra, dict):
            raise InputError(f"extra_params: got {type(extra).__name__}, expected a JSON object")
        self._project_options(extra)  # bad options are refused at setup, where Label Studio shows the error
        self._projects[_project_id(body.get("project"))] = extra
        return {"model_version": self.model_version}

    async def predict(self, body: dict) -> dict:
        """`/predict`: {"results": [one prediction per task]} (see the module docstring)."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise InputError(f"tasks: got {type(tasks).__name__}, expected a non-empty list of tasks")
        tags = self._tags(body.get("label_config") or "")
        params = body.get("params") or {}
        context = params.get("context") or body.get("context") or {}
        project = _project_id(body.get("project"))
        if context.get("result"):
            return {"results": [await self._interactive(tasks[0], tags, context["result"], project)]}
        options = self._projects.get(project, {})
        if not options.get("preannotate", self.preannotate):
            return {"results": []}
        amg = served_amg_options(await self.amg_client.model_info(), **self._project_options(options)).to_dict()
        return {"results": [await self._preannotate(t, tags, amg) for t in tasks]}

    # -- interactive -------------------------------------------------------------------------
    async def _interactive(self, task: dict, tags: Tags, results: List[dict], project: str) -> dict:
        prompt = context_prompt(results)
        url = image_value(task, tags)
        region_key = (project, task.get("id"), url, tags.brush)
        earlier = self._regions.get(region_key)
        mask_input = earlier[1] if earlier is not None and prompt.extends(earlier[0]) else None
        out, size = await self._decode(url, prompt, mask_input)
        best = int(np.argmax(out["iou_predictions"][0]))
        self._regions[region_key] = (prompt, out["low_res_masks"][0, best][None])
        self._regions.move_to_end(region_key)
        while len(self._regions) > REGIONS_KEPT:
            self._regions.popitem(last=False)
        mask = _resize_nearest(out["masks"][0, best], prompt.size) if size != prompt.size else out["masks"][0, best]
        score = float(out["iou_predictions"][0, best])
        region = brush_region(mask, tags.brush, tags.image, prompt.label, score)
        return {"result": [region], "score": score, "model_version": self.model_version}

    async def _decode(self, url: str, prompt: Prompt, mask_input: Optional[np.ndarray]):
        """sam_decode on the image's cached embedding (encoded first if the server has none);
        coordinates scaled from Label Studio's size to the decoded image's if they differ."""
        for attempt in range(2):
            image_id, size = await self._image_id(url, fresh=attempt > 0)
            coords, labels = prompt.wire()
            if size != prompt.size:
                log.warning("%s: decoded %sx%s, Label Studio says %sx%s; prompts and masks are scaled", url,
                            size[1], size[0], prompt.size[1], prompt.size[0])
                coords = coords * np.array([size[1] / prompt.size[1], size[0] / prompt.size[0]], np.float32)
            try:
                return await self.client.decode(image_id, coords, labels, mask_input=mask_input,
                                                multimask_output=prompt.multimask(),
                                                outputs=("masks", "iou_predictions", "low_res_masks")), size
            except ImageNotCachedError:
                if attempt:
                    raise
                self._known.pop(url, None)  # evicted or lost by the server: encoded again, once

    async def _image_id(self, url: str, fresh: bool = False) -> Tuple[str, Tuple[int, int]]:
        """(image_id, (H, W)) of a task image, encoding it once however many clicks ask at once."""
        if not fresh and url in self._known:
            self._known.move_to_end(url)
            return self._known[url]
        if url in self._encoding:
            return await asyncio.shield(self._encoding[url])
        future = asyncio.get_running_loop().create_future()
        self._encoding[url] = future
        try:
            image = await self.images.fetch(url)
            encoded = await self.client.encode(image)  # the SDK's background=True does not fit here: a click waits
            known = (encoded.image_id, tuple(int(s) for s in encoded.original_size))
            self._known[url] = known
            while len(self._known) > IMAGES_KNOWN:
                self._known.popitem(last=False)
            future.set_result(known)
            return known
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._encoding[url]

    # -- pre-annotation ----------------------------------------------------------------------
    def _project_options(self, extra: dict) -> dict:
        opts = {**self.amg_options, **{k: v for k, v in extra.items() if k not in ("preannotate",)}}
        try:
            AmgOptions.from_fields(dict(opts))
        except TypeError as e:
            raise InputError(f"extra_params: {e}; expected preannotate and AmgOptions' fields") from None
        return opts

    async def _preannotate(self, task: dict, tags: Tags, options: dict) -> dict:
        try:
            url = image_value(task, tags)
            image = await self.images.fetch(url)
            records = await self.amg_client.amg(image, options)
        except (SamrtError, asyncio.TimeoutError) as e:
            log.warning("task %s: no pre-annotation: %s", task.get("id"), e)
            return {"model_version": self.model_version, "error": f"{type(e).__name__}: {e}"}
        label = tags.labels[0] if tags.labels else "object"
        regions = [brush_region(rle_mask(r["segmentation"]), tags.brush, tags.image, label, r["predicted_iou"])
                   for r in records]
        score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
        return {"result": regions, "score": score, "model_version": self.model_version}

    def _tags(self, config: str) -> Tags:
        if config not in self._configs:
            self._configs[config] = parse_label_config(config)
        return self._configs[config]


def _resize_nearest(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A HxW bool mask at (H', W') by nearest neighbour (Label Studio's size when it differs)."""
    h, w = mask.shape
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return mask[rows[:, None], cols[None, :]]
