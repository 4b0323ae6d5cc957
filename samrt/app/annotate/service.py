"""The annotation service behind the web app: sessions, encoding ahead, decoding prompts,
prefill with automatic masks, and accepted objects going to the store. No HTTP here.

All model calls go through `samrt.client.AsyncSamClient`, so the clicks of every annotator
(browser tab) reach Triton as ordinary `sam_decode` requests and are batched with any others.
Prompts follow SAM's protocol (`session.multimask_output`). Encodes ahead of the annotator are
background work (`encode(background=True)`), the image the annotator opens is foreground.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from samrt.amg import AmgOptions
from samrt.client import AsyncSamClient, EncodeResult, ImageNotCachedError, ServerError, served_amg_options
from samrt.errors import InputError, SamrtError
from samrt.masks import coco_bbox, mask_iou, mask_to_rle, rle_to_mask

from .folder import ImageEntry, ImageFolder
from .masks import to_runs
from .session import Answer, Proposal, Session, Step
from .store import AnnotationStore

__all__ = ["AnnotationService", "PREFILL_POINTS_PER_SIDE", "PromptNotAnswered", "UnknownSession",
           "chosen_prefill_options"]

DECODE_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# Automatic masks for prefill: a 16 x 16 grid (SAM's 32 x 32 costs four times as long); the filters
# are those the served model's card recommends (`served_amg_options`), else SAM's.
PREFILL_POINTS_PER_SIDE = 16
PREFILL_MATCH_IOU = 0.7   # a proposal this close to an accepted object is not offered again
MAX_ENCODINGS = 64        # encode results (ids) kept; the embeddings themselves live in Triton's cache
MAX_SESSIONS = 32         # browser tabs remembered; the least recently used beyond this is forgotten


def chosen_prefill_options(options: Optional[dict]) -> dict:
    """The prefill options the user chose (None values: not chosen), on PREFILL_POINTS_PER_SIDE,
    checked (InputError names a bad one)."""
    chosen = {"points_per_side": PREFILL_POINTS_PER_SIDE, **{k: v for k, v in (options or {}).items() if v is not None}}
    AmgOptions.from_fields(dict(chosen))
    return chosen


class PromptNotAnswered(SamrtError):
    """The model server did not answer a prompt (`cause`); the session keeps the prompt as a stale
    step (no mask: accept refuses it), and `state` is what the page shows now."""

    def __init__(self, cause: ServerError, state: dict) -> None:
        super().__init__(str(cause))
        self.cause, self.state = cause, state


class UnknownSession(KeyError):
    """A session id the service does not hold (the app restarted, or the tab was forgotten)."""


class _Encoding:
    """An encode under way or done, and whether it was asked for as background work."""

    def __init__(self, task: asyncio.Task, background: bool) -> None:
        self.task, self.background = task, background

    @property
    def failed(self) -> bool:
        return self.task.done() and (self.task.cancelled() or self.task.exception() is not None)

    @property
    def succeeded(self) -> bool:
        return self.task.done() and not self.failed


class AnnotationService:
    def __init__(self, folder: ImageFolder, store: AnnotationStore, client: AsyncSamClient, prefetch: int = 2,
                 prefill_options: Optional[dict] = None) -> None:
        """`prefill_options`: SamAutomaticMaskGenerator's options the user chose; the others come
        from the served model's card, then SAM's defaults (`prefill_options()`)."""
        self.folder, self.store, self.client = folder, store, client
        self.prefetch = prefetch
        self.chosen_prefill = chosen_prefill_options(prefill_options)
        self.sessions: "OrderedDict[str, Session]" = OrderedDict()
        self._locks: Dict[str, asyncio.Lock] = {}
        self._encodings: "OrderedDict[int, _Encoding]" = OrderedDict()

    async def prefill_options(self) -> AmgOptions:
        """The options prefill runs with: the user's, then the served model's card, then SAM's."""
        return served_amg_options(await self.client.model_info(), **self.chosen_prefill)

    async def warm_up(self) -> None:
        """Ask the server what it serves once, before the first click needs it (best effort)."""
        try:
            await self.client.model_info()
        except ServerError:
            pass

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
            raise UnknownSession(f"session {sid!r}: unknown (the app was restarted, or the tab was idle while "
                                 f"{MAX_SESSIONS} others were opened); the page starts a new one")
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
    def _encoding(self, index: int, background: bool = False) -> asyncio.Task:
        """The encode of image `index`, started unless it is done or under way. An encode wanted
        in the foreground while it waits as background work is asked for again in the foreground
        (the background request is cancelled; the server's cache answers it if it still runs)."""
        enc = self._encodings.get(index)
        if enc is not None and enc.failed:
            enc = None  # a failed encode (server away) is retried
        if enc is not None and not enc.task.done() and enc.background and not background:
            enc.task.cancel()
            enc = None
        if enc is None:
            enc = _Encoding(asyncio.ensure_future(self._encode(index, background)), background)
            enc.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning at exit
            self._encodings[index] = enc
        self._encodings.move_to_end(index)
        while len(self._encodings) > MAX_ENCODINGS:
            self._encodings.popitem(last=False)
        return enc.task

    async def _encode(self, index: int, background: bool) -> EncodeResult:
        pixels = await asyncio.to_thread(self.folder.load, self.folder.entry(index))  # undecodable: skipped
        return await self.client.encode(image=pixels, background=background)

    async def image_id(self, index: int) -> str:
        """The server's id of image `index` (encodes it unless that is done or under way)."""
        return (await self._encoding(index)).image_id

    def encoded(self, index: int) -> bool:
        """Whether image `index` has been encoded (its embedding is on the server)."""
        enc = self._encodings.get(index)
        return enc is not None and enc.succeeded

    async def wait_prefetched(self) -> None:
        """Wait for every encode in flight (tests; shutdown)."""
        await asyncio.gather(*[e.task for e in self._encodings.values()], return_exceptions=True)

    async def close(self) -> None:
        """Cancel encodes in flight and close the client."""
        for enc in self._encodings.values():
            enc.task.cancel()
        await self.wait_prefetched()
        await self.client.close()

    async def open(self, s: Session, index: int) -> dict:
        """Make image `index` the session's image; waits for its encoding (usually done ahead, else
        asked for in the foreground) and starts encoding the next `prefetch` images in the
        background. An object left unfinished on the previous image counts as an abandoned attempt."""
        entry = self.folder.entry(index)
        self._abandon(s)
        s.image, s.proposals = index, []
        s.reset()
        self.store.set_last(entry)
        was_ready = self.encoded(index)
        t0 = time.perf_counter()
        task = self._encoding(index)
        for nxt in range(index + 1, min(index + 1 + self.prefetch, len(self.folder))):
            if not self.folder.is_broken(nxt):
                self._encoding(nxt, background=True)
        await task
        return {**self.image_info(entry), "encoded_ahead": was_ready,
                "encode_wait_ms": round((time.perf_counter() - t0) * 1e3, 1)}

    def _abandon(self, s: Session) -> None:
        """The object under way is given up (another image opened): its time and clicks go to the
        store's figures as an abandoned attempt."""
        if s.working and s.image is not None:
            self.store.add_abandoned(s.elapsed() or 0.0, s.clicks)

    def image_info(self, entry: ImageEntry) -> dict:
        return {"index": entry.index, "name": entry.name, "width": entry.width, "height": entry.height,
                "objects": [self.object_view(a) for a in self.store.objects(entry)]}

    # -- prompts -----------------------------------------------------------------------------------------
    async def _decode(self, index: int, step: Step, multimask: bool) -> Answer:
        """The answer to `step`'s prompts (with its mask_input), three candidates or one."""
        coords, labels = step.wire_prompt()
        for attempt in (0, 1):
            image_id = await self.image_id(index)
            t0 = time.perf_counter()
            try:
                out = await self.client.decode(image_id, coords, labels, mask_input=step.mask_input,
                                               multimask_output=multimask, outputs=DECODE_OUTPUTS)
                break
            except ImageNotCachedError:
                if attempt:
                    raise
                self._encodings.pop(index, None)  # evicted from the server's cache: encode again, once
        return Answer(masks=out["masks"][0], scores=out["iou_predictions"][0], logits=out["low_res_masks"][0],
                      latency_ms=round((time.perf_counter() - t0) * 1e3, 1), refined=step.mask_input is not None)

    async def _answer(self, s: Session, step: Step, multimask: bool) -> None:
        """Decode `step` into its answer (the highest-scored candidate selected). When the model
        server does not answer, the step keeps its prompts with no mask (stale), so nothing
        accepts the answer of fewer prompts; PromptNotAnswered carries the state to show."""
        try:
            answer = await self._decode(s.image, step, multimask)
        except ServerError as e:
            step.answer, step.error = None, f"no answer from the model server: {e}"
            if s.step is not step:
                s.push(step)
            raise PromptNotAnswered(e, self.state(s)) from e
        step.answer, step.error, step.selected = answer, None, int(np.argmax(answer.scores))
        if s.step is not step:
            s.push(step)

    async def prompt(self, s: Session, point=None, box=None) -> dict:
        """A click (x, y, label) or a box (x0, y0, x1, y1) in image pixels: decode the object's prompts
        so far, as SAM's protocol says (`session.multimask_output`: three candidates for a lone
        click, one mask otherwise), with the shown answer's logits as mask_input when there is one."""
        entry = self._entry(s)
        for x, y in ([point[:2]] if point is not None else [box[:2], box[2:]]):
            if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= entry.width and 0 <= y <= entry.height):
                raise InputError(f"prompt ({x}, {y}): outside the image ({entry.width}x{entry.height})")
        step = s.next_step(point=point, box=box)
        step.mask_input = s.mask_input()
        await self._answer(s, step, step.multimask_output)
        return self.state(s)

    async def candidates(self, s: Session) -> dict:
        """The three candidates for the prompts shown (the annotator asked for them; also how a
        stale step is asked again): decoded again with multimask_output, the same mask_input. The
        step is replaced, not added: no click."""
        self._entry(s)
        step = s.step
        if not step.has_prompts:
            raise InputError("candidates: no prompt yet; click on the object first")
        again = Step(points=list(step.points), box=step.box, mask_input=step.mask_input)
        s.history[s.pos] = again
        await self._answer(s, again, True)
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
            "stale": step.error,   # the model server did not answer these prompts: no mask to accept
            "can_undo": s.pos > 0,
            "can_redo": s.pos < len(s.history) - 1,
            "clicks": s.clicks,
        }

    # -- objects -----------------------------------------------------------------------------------------
    def accept(self, s: Session) -> dict:
        """The selected candidate becomes an object of the image (written at once); a new object starts."""
        entry = self._entry(s)
        step = s.step
        if step.error is not None:
            raise InputError("accept: the last prompt got no answer from the model server, so no mask shows all of "
                             "them; click again, press c to ask again, or undo (z)")
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
        options = await self.prefill_options()
        t0 = time.perf_counter()
        records = await self.client.amg(pixels, options)
        ms = (time.perf_counter() - t0) * 1e3
        existing = [rle_to_mask(a["segmentation"]) for a in self.store.objects(entry)]
        s.proposals = []
        for r in records:
            mask = rle_to_mask(r["segmentation"])
            if any(mask_iou(mask, e) >= PREFILL_MATCH_IOU for e in existing):
                continue
            s.proposals.append(Proposal(len(s.proposals), r, mask))
        return {"proposals": self.proposals_view(s), "generated": len(records), "amg_ms": round(ms, 1),
                "options": options.to_dict()}

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
                    "objects": len(self.store.objects(e)), "encoded": self.encoded(e.index),
                    "broken": self.folder.is_broken(e.index)} for e in self.folder.images]
        return {"images": entries, "skipped": [{"name": k.name, "reason": k.reason} for k in self.folder.skipped],
                "resume_index": self.store.resume_index(), "stats": self.store.stats()}
