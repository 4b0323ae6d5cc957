"""Label Studio's side of the data, in plain functions: the labelling config's tags, a context's
smart keypoints and rectangles as SAM prompts, masks as `brushlabels` regions.

Label Studio's formats (its ML backend protocol, `label_studio_ml`): a region's `value` holds
`x`, `y` (and a rectangle's `width`, `height`) in percent of `original_width` and
`original_height`; a keypoint's `is_positive` says foreground (true) or background (false); a
brush region is `{"format": "rle", "rle": [...], "brushlabels": [label]}` in Label Studio's own
brush RLE (of the mask as RGBA bytes, row-major), which `label_studio_converter.brush` encodes and
decodes (the implementation Label Studio's own SAM backend uses).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from samrt.errors import InputError

__all__ = ["LABEL_CONFIG", "LABEL_TAGS", "DEFAULT_LABEL", "Tags", "Prompt", "parse_label_config", "context_prompt",
           "brush_region", "brush_rle", "decode_brush_rle", "image_value"]

DEFAULT_LABEL = "object"

# The labelling config samrt documents (README, docs/label-studio.md): smart keypoints and
# rectangles prompt SAM, the answer comes back as a brush region of the same label.
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="mask" toName="image">
    <Label value="object" background="#FF0000"/>
  </BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true">
    <Label value="object" smart="true" background="#FFAA00" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="object" background="#FF00FF" showInline="true"/>
  </RectangleLabels>
</View>"""


@dataclass(frozen=True)
class Tags:
    """What samrt needs from a labelling config: the image tag (its name and the task data key it
    reads, `$image` -> "image"), the brush tag answers go to, and its labels."""

    image: str
    image_key: str
    brush: str
    labels: Tuple[str, ...]


def parse_label_config(config: str) -> Tags:
    """The first `BrushLabels` tag and the `Image` tag it points to. InputError when the config
    has none (samrt answers with brush regions only)."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise InputError(f"label_config: not XML ({e})") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag.lower() == "image"}
    for el in root.iter():
        if el.tag.lower() == "brushlabels" and el.get("toName") in images:
            value = images[el.get("toName")]
            labels = tuple(lab.get("value") for lab in el.iter() if lab.tag.lower() == "label" and lab.get("value"))
            return Tags(image=el.get("toName"), image_key=value.lstrip("$"), brush=el.get("name"), labels=labels)
    raise InputError(f"label_config: got tags {sorted({el.tag for el in root.iter()})}, expected a BrushLabels tag "
                     "whose toName is an Image tag (samrt answers with brush masks)")


LABEL_TAGS = parse_label_config(LABEL_CONFIG)


def image_value(task: dict, tags: Tags) -> str:
    """The task's image reference (a URL or a Label Studio path such as /data/upload/1/x.jpg)."""
    value = (task.get("data") or {}).get(tags.image_key)
    if not isinstance(value, str) or not value:
        raise InputError(f"task {task.get('id')}: data[{tags.image_key!r}] is {value!r}, expected an image URL")
    return value


@dataclass(frozen=True)
class Prompt:
    """One region's prompts in the original image's pixels, and what answers it.

    `points` [(x, y, label 1/0)], `box` (x0, y0, x1, y1) or None, `label` of the last prompt,
    `size` (original_height, original_width) as Label Studio saw the image, `key` a hashable
    form of the prompts (to tell whether one prompt set extends another)."""

    points: Tuple[Tuple[float, float, int], ...]
    box: Optional[Tuple[float, float, float, float]]
    label: str
    size: Tuple[int, int]

    def key(self) -> Tuple:
        return (self.points, self.box)

    def extends(self, earlier: "Prompt") -> bool:
        """Whether these prompts are `earlier`'s plus more (the same region, refined)."""
        n = len(earlier.points)
        more = len(self.points) > n or (self.box is not None and earlier.box is None)
        return more and self.points[:n] == earlier.points and earlier.box in (None, self.box)

    def multimask(self) -> bool:
        """SAM's training: three masks for a lone click (ambiguous), one for anything more."""
        return len(self.points) == 1 and self.box is None

    def wire(self) -> Tuple[np.ndarray, np.ndarray]:
        """point_coords [1,N,2] float32 and point_labels [1,N] int32 for `SamClient.decode`
        (points, then the box corners labelled 2 and 3)."""
        coords = [(x, y) for x, y, _ in self.points]
        labels = [lab for _, _, lab in self.points]
        if self.box is not None:
            coords += [self.box[:2], self.box[2:]]
            labels += [2, 3]
        return np.asarray(coords, np.float32).reshape(1, -1, 2), np.asarray(labels, np.int32).reshape(1, -1)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError(f"context: {what} is {value!r}, expected a number")
    return float(value)


def context_prompt(results: Sequence[dict]) -> Prompt:
    """A context's `result` list (smart keypoints and rectangles) -> the region's prompts in
    pixels. Several rectangles: the last one counts (SAM takes one box). InputError naming what
    was received when a result is not one of those or lacks a field."""
    points, box, label, size = [], None, DEFAULT_LABEL, None
    for r in results:
        kind = r.get("type")
        if kind not in ("keypointlabels", "rectanglelabels"):
            raise InputError(f"context: got a result of type {kind!r}, expected keypointlabels or rectanglelabels")
        w, h = _number(r.get("original_width"), "original_width"), _number(r.get("original_height"), "original_height")
        if w < 1 or h < 1:
            raise InputError(f"context: original size {w}x{h}, expected at least 1x1")
        size = (int(h), int(w))
        v = r.get("value") or {}
        x, y = _number(v.get("x"), "value.x") * w / 100.0, _number(v.get("y"), "value.y") * h / 100.0
        labels = v.get(kind) or v.get("labels") or []
        label = str(labels[0]) if labels else label
        if kind == "keypointlabels":
            points.append((x, y, 1 if r.get("is_positive", True) else 0))
        else:
            bw, bh = _number(v.get("width"), "value.width") * w / 100.0, _number(v.get("height"), "value.height") * h / 100.0
            box = (min(x, x + bw), min(y, y + bh), max(x, x + bw), max(y, y + bh))
    if size is None:
        raise InputError("context: no keypoint or rectangle, expected at least one smart prompt")
    return Prompt(points=tuple(points), box=box, label=label, size=size)


def brush_rle(mask: np.ndarray) -> List[int]:
    """A HxW bool mask -> Label Studio's brush RLE (`label_studio_converter.brush.mask2rle` of the
    mask as 0/255 bytes)."""
    from label_studio_converter import brush  # the label-studio extra (Label Studio's own brush RLE)

    return [int(v) for v in brush.mask2rle(np.ascontiguousarray(mask, np.uint8) * 255)]


def decode_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE -> HxW bool (`label_studio_converter.brush.decode_rle`, alpha channel)."""
    from label_studio_converter import brush  # the label-studio extra (Label Studio's own brush RLE)

    flat = brush.decode_rle(list(rle))
    if flat.size != height * width * 4:
        raise InputError(f"brush RLE: {flat.size} values, expected {height}x{width}x4 = {height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def brush_region(mask: np.ndarray, from_name: str, to_name: str, label: str, score: float,
                 region_id: Optional[str] = None) -> dict:
    """One `brushlabels` result (Label Studio's prediction format) for a HxW bool mask."""
    h, w = mask.shape
    return {"id": region_id or uuid.uuid4().hex[:10], "from_name": from_name, "to_name": to_name,
            "type": "brushlabels", "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [label]},
            "score": float(score), "readonly": False}
