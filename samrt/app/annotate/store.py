"""The output folder: one SA-1B style JSON per image, written atomically on every change, a
state file that marks the folder as samrt's and remembers where the work stopped, and the COCO
instances file on demand.

Per image (`<stem>.json`):
    {"image": {"image_id", "file_name", "width", "height"},
     "annotations": [{"id", "segmentation" (COCO RLE), "area", "bbox" (XYWH), "predicted_iou",
                      "point_coords" ([[x, y], ...] in pixels), "stability_score" (null when unknown),
                      "crop_box" (XYWH), "prompts" ({"points": [[x, y, label]], "box": [x0, y0, x1, y1] or null}),
                      "source" ("manual" or "prefill"), "candidate", "clicks", "seconds"}]}
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

from samrt.artifacts import atomic_write_json, prepare_output_dir
from samrt.errors import SamrtError

from ..exports import write_exports
from .folder import ImageEntry, ImageFolder

__all__ = ["AnnotationStore", "STATE_FILE", "COCO_FILE"]

STATE_FILE = ".samrt-annotate.json"   # where annotation stopped (the folder's owner marker: samrt.artifacts)
COCO_FILE = "instances.json"


class AnnotationStore:
    """Annotations of one ImageFolder, kept in `out_dir`.

    `out_dir` must be new, empty, or a folder this class wrote before (it carries STATE_FILE);
    anything else is refused, so no user file is overwritten. Existing `<stem>.json` files are
    read back: reopening the folder continues where it stopped."""

    def __init__(self, out_dir: str, folder: ImageFolder) -> None:
        self.out_dir = os.path.abspath(out_dir)
        self.folder = folder
        self._state_path = os.path.join(self.out_dir, STATE_FILE)
        if os.path.realpath(self.out_dir) == folder.path:
            raise SamrtError(f"--out {self.out_dir}: the image folder itself; expected a separate folder")
        prepare_output_dir(self.out_dir, "annotate")  # new, empty, or written by samrt annotate: else refused
        self.state = {"tool": "samrt annotate", "images_folder": folder.path, "last_image": None,
                      "abandoned": {"attempts": 0, "seconds": 0.0, "clicks": 0}}
        if os.path.isfile(self._state_path):
            with open(self._state_path) as f:
                self.state.update(json.load(f))
        else:
            atomic_write_json(self._state_path, self.state)
        self._objects: Dict[str, List[dict]] = {}
        for entry in folder.images:
            path = self.json_path(entry)
            if os.path.isfile(path):
                with open(path) as f:
                    doc = json.load(f)
                if doc.get("image", {}).get("file_name") != entry.name:
                    raise SamrtError(f"{path}: annotates {doc.get('image', {}).get('file_name')!r}, expected {entry.name!r}")
                self._objects[entry.name] = doc.get("annotations", [])

    # -- per image ---------------------------------------------------------------------------
    def json_path(self, entry: ImageEntry) -> str:
        return os.path.join(self.out_dir, entry.stem + ".json")

    def objects(self, entry: ImageEntry) -> List[dict]:
        return list(self._objects.get(entry.name, []))

    def add(self, entry: ImageEntry, annotation: dict) -> dict:
        """Append one object (its fields as in the module docstring, without `id`); writes the file."""
        current = self._objects.setdefault(entry.name, [])
        record = {"id": max((a["id"] for a in current), default=-1) + 1, **annotation}
        current.append(record)
        self._write(entry)
        return record

    def delete(self, entry: ImageEntry, object_id: int) -> None:
        current = self._objects.get(entry.name, [])
        kept = [a for a in current if a["id"] != object_id]
        if len(kept) == len(current):
            raise KeyError(f"{entry.name}: no object with id {object_id}")
        self._objects[entry.name] = kept
        self._write(entry)

    def _write(self, entry: ImageEntry) -> None:
        doc = {"image": {"image_id": entry.index, "file_name": entry.name, "width": entry.width, "height": entry.height},
               "annotations": self._objects.get(entry.name, [])}
        atomic_write_json(self.json_path(entry), doc)

    # -- where the work stopped ----------------------------------------------------------------
    def set_last(self, entry: ImageEntry) -> None:
        self.state["last_image"] = entry.name
        self.state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(self._state_path, self.state)

    def add_abandoned(self, seconds: float, clicks: int) -> None:
        """An object given up before it was accepted (another image opened): its time and clicks
        still count in the figures per mask, as the data engine's should."""
        a = self.state["abandoned"]
        a["attempts"] += 1
        a["seconds"] = round(a["seconds"] + float(seconds), 2)
        a["clicks"] += int(clicks)
        atomic_write_json(self._state_path, self.state)

    def resume_index(self) -> int:
        """The image the work stopped at, else the first image without objects, else 0."""
        last = self.state.get("last_image")
        if last and self.folder.by_name(last) is not None:
            return self.folder.by_name(last).index
        for entry in self.folder.images:
            if not self._objects.get(entry.name):
                return entry.index
        return 0

    # -- the folder as a whole -------------------------------------------------------------------
    def stats(self) -> dict:
        """The data engine's figures: masks per image (over images with at least one object), and
        seconds and clicks per manually made mask: each object's from its first prompt to accept,
        attempts cleared on the way (Esc) included, plus the attempts abandoned on images left
        without accepting them, over the manual masks."""
        per_image = [len(v) for v in self._objects.values() if v]
        manual = [a for v in self._objects.values() for a in v if a.get("source") == "manual"]
        timed = [a["seconds"] for a in manual if a.get("seconds") is not None]
        abandoned = self.state["abandoned"]
        return {
            "images": len(self.folder),
            "images_annotated": len(per_image),
            "objects": sum(per_image),
            "manual_objects": len(manual),
            "prefill_objects": sum(1 for v in self._objects.values() for a in v if a.get("source") == "prefill"),
            "masks_per_image": round(sum(per_image) / len(per_image), 2) if per_image else None,
            "seconds_per_mask": round((sum(timed) + abandoned["seconds"]) / len(timed), 2) if timed else None,
            "clicks_per_mask": (round((sum(a.get("clicks", 0) for a in manual) + abandoned["clicks"]) / len(manual), 2)
                                if manual else None),
            "abandoned_attempts": abandoned["attempts"],
        }

    def documents(self) -> List[dict]:
        """The SA-1B document of every image with at least one object (what the exports read)."""
        return [{"image": {"image_id": e.index, "file_name": e.name, "width": e.width, "height": e.height},
                 "annotations": self._objects[e.name]} for e in self.folder.images if self._objects.get(e.name)]

    def export(self, fmt: str) -> dict:
        """`samrt.app.exports` format `fmt` (coco with polygons, yolo, label-studio) of the annotated
        images into `<out>/<fmt>/`; returns {path, images, annotations}."""
        docs = self.documents()
        path = write_exports([fmt], docs, self.out_dir, self.folder.path)[fmt]
        return {"path": path, "images": len(docs), "annotations": sum(len(d["annotations"]) for d in docs)}

    def export_coco(self, path: Optional[str] = None) -> dict:
        """COCO instances for the whole folder (one category, 'object'); returns {path, images, annotations}."""
        path = path or os.path.join(self.out_dir, COCO_FILE)
        images, annotations = [], []
        for entry in self.folder.images:
            images.append({"id": entry.index, "file_name": entry.name, "width": entry.width, "height": entry.height})
            for a in self._objects.get(entry.name, []):
                annotations.append({"id": len(annotations) + 1, "image_id": entry.index, "category_id": 1,
                                    "segmentation": a["segmentation"], "area": a["area"], "bbox": a["bbox"],
                                    "iscrowd": 0, "score": a.get("predicted_iou")})
        atomic_write_json(path, {"info": {"description": f"samrt annotate: {self.folder.path}"}, "images": images,
                                 "annotations": annotations, "categories": [{"id": 1, "name": "object"}]})
        return {"path": path, "images": len(images), "annotations": len(annotations)}
