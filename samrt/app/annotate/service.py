"""The annotation service behind the web app: sessions, encoding ahead, decoding prompts,
prefill with automatic masks, and accepted objects going to the store. No HTTP here.

All model calls go through `samrt.client.AsyncSamClient`, so the clicks of every annotator
(browser tab) reach Triton as ordinary `sam_decode` requests and are batched with any others.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from samrt.amg import AmgOptions
from samrt.client import AsyncSamClient, EncodeResult, ImageNotCachedError
from samrt.errors import InputError
from samrt.masks import coco_bbox, mask_iou, mask_to_rle, rle_to_mask

from .folder import ImageEntry, ImageFolder
from .masks import to_runs
from .session import Answer, Proposal, Session, Step
from .store import AnnotationStore

__all__ = ["AnnotationService", "PREFILL_DEFAULTS"]

DECODE_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# Automatic masks for prefill. SAM's own filters (0.88 / 0.95) suit the released ViT-H; the embedded
# small model predicts lower IoUs and keeps almost nothing with them (see the README), hence these.
PREFILL_DEFAULTS = {"points_per_side": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.85}
PREFILL_MATCH_IOU = 0.7   # a proposal this close to an accepted object is not offered again
MAX_ENCODINGS = 64        # encode results (ids) kept; the embeddings themselves live in Triton's cache
MAX_SESSIONS = 32         # browser tabs remembered; the least recently used beyond this is forgotten


class AnnotationService:
    def __init__(self, folder: ImageFolder, store: AnnotationStore, client: AsyncSamClient, prefetch: int = 2,
                 prefill_options: Optional[dict] = None) -> None:
        self.folder, self.store, self.client = folder, store, client
        self.prefetch = prefetch
        self.prefill_options = AmgOptions(**{**PREFILL_DEFAULTS, **(prefill_options or {})}).validate()
        self.sessions: "OrderedDict[str, Session]" = OrderedDict()
        self._locks: Dict[str, asyncio.Lock] = {}
        self._encodings: "OrderedDict[int, asyncio.Task]" = OrderedDict()

    # -- sessions ----------------------------------------------------------------------------------
    def new_session(self) -> Session:
        s = Session()
        self.sessions[s.id] = s
        self._locks[s.id] = asyncio.Lock()
        while len(self.sessions) > MAX_SESSIONS:
            old, _ = self.sessions.popitem(last=False)
            del self._locks[old]
        return s

    def session(self, sid: str) -> Session:
        if sid not in self.sessions:
            raise KeyError(f"session {sid!r}: unknown (the app was restarted, or the tab was idle while "
                           f"{MAX_SESSIONS} others were opened); reload the page")
        self.sessions.move_to_end(sid)
        return self.sessions[sid]

    def lock(self, sid: str) -> asyncio.Lock:
        self.session(sid)
        return self._locks[sid]

    def _entry(self, s: Session) -> ImageEntry:
        if s.image is None:
            raise InputError("no image open in this session; open one first")
        return self.folder.entry(s.image)

    # -- encoding, ahead of the annotator ------------------------------------------------------------
    def _encoding(self, index: int) -> asyncio.Task:
        task = self._encodings.get(index)
        if task is not None and task.done() and (task.cancelled() or task.exception() is not None):
            task = None  # a failed encode (server away) is retried
        if task is None:
            task = asyncio.ensure_future(self._encode(index))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning at exit
            self._encodings[index] = task
        self._encodings.move_to_end(index)
        while len(self._encodings) > MAX_ENCODINGS:
            self._encodings.popitem(last=False)
        return task

    async def _encode(self, index: int) -> EncodeResult:
        pixels = await asyncio.to_thread(self.folder.load, self.folder.entry(index))
        return await self.client.encode(image=pixels)

    async def image_id(self, index: int) -> str:
        """The server's id of image `index` (encodes it unless that is done or under way)."""
        return (await self._encoding(index)).image_id

    def encoded(self, index: int) -> bool:
        """Whether image `index` has been encoded (its embedding is on the server)."""
        task = self._encodings.get(index)
        return task is not None and task.done() and not task.cancelled() and task.exception() is None

    async def wait_prefetched(self) -> None:
        """Wait for every encode in flight (tests; shutdown)."""
        await asyncio.gather(*self._encodings.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel encodes in flight and close the client."""
        for task in self._encodings.values():
            task.cancel()
        await self.wait_prefetched()
        await self.client.close()

    async def open(self, s: Session, index: int) -> dict:
        """Make image `index` the session's image; waits for its encoding (usually done ahead) and
        starts encoding the next `prefetch` images in the background."""
        entry = self.folder.entry(index)
        s.image, s.proposals = index, []
        s.reset()
        self.store.set_last(entry)
        was_ready = self.encoded(index)
        t0 = time.perf_counter()
        task = self._encoding(index)
        for nxt in range(index + 1, min(index + 1 + self.prefetch, len(self.folder))):
            self._encoding(nxt)
        await task
        return {**self.image_info(entry), "encoded_ahead": was_ready,
                "encode_wait_ms": round((time.perf_counter() - t0) * 1e3, 1)}

    def image_info(self, entry: ImageEntry) -> dict:
        return {"index": entry.index, "name": entry.name, "width": entry.width, "height": entry.height,
                "objects": [self.object_view(a) for a in self.store.objects(entry)]}

    # -- prompts -----------------------------------------------------------------------------------------
    async def _decode(self, index: int, step: Step, mask_input: Optional[np.ndarray]) -> Answer:
        coords, labels = step.wire_prompt()
        for attempt in (0, 1):
            image_id = await self.image_id(index)
            t0 = time.perf_counter()
            try:
                out = await self.client.decode(image_id, coords, labels, mask_input=mask_input, multimask_output=True,
                                               outputs=DECODE_OUTPUTS)
                break
            except ImageNotCachedError:
                if attempt:
                    raise
                self._encodings.pop(index, None)  # evicted from the server's cache: encode again, once
        return Answer(masks=out["masks"][0], scores=out["iou_predictions"][0], logits=out["low_res_masks"][0],
                      latency_ms=round((time.perf_counter() - t0) * 1e3, 1), refined=mask_input is not None)

    async def prompt(self, s: Session, point=None, box=None) -> dict:
        """A click (x, y, label) or a box (x0, y0, x1, y1) in image pixels: decode the object's prompts
        so far, with the shown answer's logits as mask_input when there is one."""
        entry = self._entry(s)
        for x, y in ([point[:2]] if point is not None else [box[:2], box[2:]]):
            if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= entry.width and 0 <= y <= entry.height):
                raise InputError(f"prompt ({x}, {y}): outside the image ({entry.width}x{entry.height})")
        step = s.next_step(point=point, box=box)
        step.answer = await self._decode(entry.index, step, s.mask_input())
        step.selected = int(np.argmax(step.answer.scores))
        s.push(step)
        return self.state(s)

    def state(self, s: Session) -> dict:
        step = s.step
        a = step.answer
        return {
            "image": s.image,
            "points": [list(p) for p in step.points],
            "box": list(step.box) if step.box else None,
            "candidates": [] if a is None else [{"score": round(float(sc), 4), "area": int(m.sum()), "runs": to_runs(m)}
                                                for m, sc in zip(a.masks, a.scores)],
            "selected": step.selected if a is not None else None,
            "latency_ms": a.latency_ms if a is not None else None,
            "refined": a.refined if a is not None else False,
            "can_undo": s.pos > 0,
            "can_redo": s.pos < len(s.history) - 1,
            "clicks": s.clicks,
        }

    # -- objects -----------------------------------------------------------------------------------------
    def accept(self, s: Session) -> dict:
        """The selected candidate becomes an object of the image (written at once); a new object starts."""
        entry = self._entry(s)
        step = s.step
        if step.answer is None:
            raise InputError("accept: no mask yet; click on the object first")
        mask = step.answer.masks[step.selected]
        if not mask.any():
            raise InputError("accept: the selected mask is empty; pick another candidate or add prompts")
        elapsed = s.elapsed()
        record = self.store.add(entry, {
            "segmentation": mask_to_rle(mask), "area": int(mask.sum()), "bbox": coco_bbox(mask),
            "predicted_iou": round(float(step.answer.scores[step.selected]), 4),
            "point_coords": [[x, y] for x, y, _ in step.points], "stability_score": None,
            "crop_box": [0, 0, entry.width, entry.height],
            "prompts": {"points": [list(p) for p in step.points], "box": list(step.box) if step.box else None},
            "source": "manual", "candidate": step.selected, "clicks": s.clicks,
            "seconds": None if elapsed is None else round(elapsed, 2),
        })
        s.reset()
        return {"object": self.object_view(record), **self.image_info(entry), "state": self.state(s)}

    def delete(self, s: Session, object_id: int) -> dict:
        entry = self._entry(s)
        self.store.delete(entry, object_id)
        return self.image_info(entry)

    def object_view(self, record: dict) -> dict:
        mask = rle_to_mask(record["segmentation"])
        return {"id": record["id"], "area": record["area"], "predicted_iou": record["predicted_iou"],
                "source": record.get("source"), "clicks": record.get("clicks"), "seconds": record.get("seconds"),
                "runs": to_runs(mask)}

    # -- stage 2: prefill with automatic masks --------------------------------------------------------------
    async def prefill(self, s: Session) -> dict:
        """Run sam_amg on the session's image; offer its masks that no accepted object already covers."""
        entry = self._entry(s)
        pixels = await asyncio.to_thread(self.folder.load, entry)
        t0 = time.perf_counter()
        out = await self.client.infer(
            "sam_amg", {"image": (np.ascontiguousarray(pixels), "UINT8"),
                        "options": (np.array([json.dumps(self.prefill_options.to_dict()).encode()], dtype=object), "BYTES")},
            ["records"])
        ms = (time.perf_counter() - t0) * 1e3
        records = json.loads(out["records"].reshape(-1)[0])
        existing = [rle_to_mask(a["segmentation"]) for a in self.store.objects(entry)]
        s.proposals = []
        for r in records:
            mask = rle_to_mask(r["segmentation"])
            if any(mask_iou(mask, e) >= PREFILL_MATCH_IOU for e in existing):
                continue
            s.proposals.append(Proposal(len(s.proposals), r, mask))
        return {"proposals": self.proposals_view(s), "generated": len(records), "amg_ms": round(ms, 1)}

    def proposals_view(self, s: Session) -> List[dict]:
        return [{"pid": p.pid, "score": round(float(p.record["predicted_iou"]), 4),
                 "stability_score": round(float(p.record["stability_score"]), 4), "area": int(p.record["area"]),
                 "runs": to_runs(p.mask)} for p in s.proposals]

    def _proposal(self, s: Session, pid: int) -> Proposal:
        for p in s.proposals:
            if p.pid == pid:
                return p
        raise InputError(f"proposal {pid!r}: not among this session's proposals")

    def accept_proposal(self, s: Session, pid: int) -> dict:
        entry = self._entry(s)
        p = self._proposal(s, pid)
        r = p.record
        record = self.store.add(entry, {
            "segmentation": r["segmentation"], "area": int(r["area"]), "bbox": [float(v) for v in r["bbox"]],
            "predicted_iou": round(float(r["predicted_iou"]), 4), "point_coords": r["point_coords"],
            "stability_score": round(float(r["stability_score"]), 4), "crop_box": r["crop_box"],
            "prompts": {"points": [[x, y, 1] for x, y in r["point_coords"]], "box": None},
            "source": "prefill", "candidate": None, "clicks": 0, "seconds": None,
        })
        s.proposals.remove(p)
        return {"object": self.object_view(record), **self.image_info(entry), "proposals": self.proposals_view(s)}

    def reject_proposal(self, s: Session, pid: int) -> dict:
        s.proposals.remove(self._proposal(s, pid))
        return {"proposals": self.proposals_view(s)}

    # -- the folder ----------------------------------------------------------------------------------------------
    def images(self) -> dict:
        entries = [{"index": e.index, "name": e.name, "width": e.width, "height": e.height,
                    "objects": len(self.store.objects(e)), "encoded": self.encoded(e.index)} for e in self.folder.images]
        return {"images": entries, "skipped": [{"name": k.name, "reason": k.reason} for k in self.folder.skipped],
                "resume_index": self.store.resume_index(), "stats": self.store.stats()}
