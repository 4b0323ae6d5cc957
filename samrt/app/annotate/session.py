"""One annotator's state (a browser tab): the image, the prompts of the object being made with
their answers (an undo/redo history), the object's clock and click count, and the proposals of
an automatic prefill. Pure data: the app does the I/O.

The prompt protocol is SAM's (`multimask_output`): a lone click is ambiguous and is answered with
the three candidates; a box, and every prompt after the first, with the single-mask output
(token 0), the previous answer's logits going back as `mask_input`. That is how SAM was trained
and how `samrt eval` measures it (samrt.scenes.evaluation); the candidates of any prompt are
still there when the annotator asks for them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from samrt.errors import InputError

__all__ = ["Answer", "Step", "Proposal", "Session", "MAX_HISTORY", "multimask_output"]

MAX_HISTORY = 30  # undo steps kept per session (each holds its three masks)


@dataclass
class Answer:
    """One sam_decode answer for one prompt: C candidates."""

    masks: np.ndarray     # [C,H,W] bool
    scores: np.ndarray    # [C] float32, predicted IoU
    logits: np.ndarray    # [C,m,m] float32, low-resolution logits (fed back as mask_input)
    latency_ms: float     # the decode round trip seen by the app
    refined: bool         # whether the previous answer's logits went in as mask_input


def multimask_output(points: List[Tuple[float, float, int]], box: Optional[Tuple[float, float, float, float]]) -> bool:
    """SAM's protocol for a prompt: the three candidates for a lone click, token 0 (one mask) for a
    box and for more than one prompt (samrt eval's: one centre click best of 3, later clicks and
    boxes single-mask)."""
    return len(points) == 1 and box is None


@dataclass
class Step:
    """The prompts of the current object after one action, and the answer to them. `answer` None
    with `error` set: the model server did not answer (the step is stale: accept refuses it)."""

    points: List[Tuple[float, float, int]] = field(default_factory=list)   # (x, y, label 1 fg / 0 bg)
    box: Optional[Tuple[float, float, float, float]] = None                # x0, y0, x1, y1
    answer: Optional[Answer] = None
    selected: int = 0
    mask_input: Optional[np.ndarray] = None   # [1,m,m] the logits it was decoded with (None: a first prompt)
    error: Optional[str] = None

    @property
    def multimask_output(self) -> bool:
        """The protocol's choice for these prompts (`multimask_output`)."""
        return multimask_output(self.points, self.box)

    @property
    def has_prompts(self) -> bool:
        return bool(self.points) or self.box is not None

    def wire_prompt(self) -> Tuple[np.ndarray, np.ndarray]:
        """point_coords [N,2] float32 and point_labels [N] int32 as sam_decode takes them
        (points first, then the box corners with labels 2 and 3)."""
        coords = [(x, y) for x, y, _ in self.points]
        labels = [lab for _, _, lab in self.points]
        if self.box is not None:
            coords += [self.box[:2], self.box[2:]]
            labels += [2, 3]
        return np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int32)


@dataclass
class Proposal:
    """One automatic mask offered for acceptance (a sam_amg record)."""

    pid: int
    record: dict          # the sam_amg record: segmentation (COCO RLE), area, bbox, predicted_iou, ...
    mask: np.ndarray      # HxW bool


class Session:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.image: Optional[int] = None
        self.proposals: List[Proposal] = []
        self.reset()

    def reset(self) -> None:
        """A new object: empty prompts, no history, clock and clicks at zero."""
        self.clear()
        self.started: Optional[float] = None
        self.clicks = 0

    def clear(self) -> None:
        """Start the object over (Esc): empty prompts and history. The clock and the clicks go on:
        an abandoned attempt is part of what the object cost (the data engine's figures)."""
        self.history: List[Step] = [Step()]
        self.pos = 0

    @property
    def step(self) -> Step:
        return self.history[self.pos]

    def next_step(self, point: Optional[Tuple[float, float, int]] = None,
                  box: Optional[Tuple[float, float, float, float]] = None) -> Step:
        """The step a new prompt leads to (not yet in the history: it gets its answer first)."""
        if (point is None) == (box is None):
            raise InputError("prompt: expected exactly one of a point or a box")
        cur = self.step
        if point is not None:
            x, y, label = point
            if label not in (0, 1):
                raise InputError(f"point label: got {label!r}, expected 1 (foreground) or 0 (background)")
            return Step(points=cur.points + [(float(x), float(y), int(label))], box=cur.box)
        x0, y0, x1, y1 = (float(v) for v in box)
        return Step(points=list(cur.points), box=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))

    def mask_input(self) -> Optional[np.ndarray]:
        """[1,m,m] logits of the answer now shown (its selected candidate), for a refinement click;
        after a step the server did not answer, those of the last answer before it."""
        for step in reversed(self.history[: self.pos + 1]):
            if step.answer is not None:
                return step.answer.logits[step.selected][None]
        return None

    @property
    def working(self) -> bool:
        """Whether an object is under way (prompts given since the last accept or image)."""
        return self.started is not None

    def push(self, step: Step) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.clicks += 1
        del self.history[self.pos + 1:]
        self.history.append(step)
        if len(self.history) > MAX_HISTORY:
            del self.history[: len(self.history) - MAX_HISTORY]
        self.pos = len(self.history) - 1

    def undo(self) -> bool:
        if self.pos == 0:
            return False
        self.pos -= 1
        return True

    def redo(self) -> bool:
        if self.pos == len(self.history) - 1:
            return False
        self.pos += 1
        return True

    def select(self, candidate: int) -> None:
        a = self.step.answer
        if a is None:
            raise InputError("select: no mask yet; click on the image first")
        if not isinstance(candidate, int) or not 0 <= candidate < len(a.scores):
            raise InputError(f"candidate: got {candidate!r}, expected 0..{len(a.scores) - 1}")
        self.step.selected = candidate

    def elapsed(self) -> Optional[float]:
        return None if self.started is None else time.monotonic() - self.started
