"""Exports that training and labelling tools read, from SA-1B style documents (what `samrt amg`
and `samrt annotate` write: `{"image": {image_id, file_name, height, width}, "annotations":
[{segmentation (COCO RLE), area, bbox, predicted_iou, ...}]}`).

- `coco`: `coco/instances.json`, one COCO instances file with polygon segmentations, `bbox`,
  `area` (the mask's pixels) and one category, `object`.
- `yolo`: Ultralytics' segmentation layout, `yolo/labels/<stem>.txt` (a line per object: class 0
  and the polygon, normalised to [0, 1]), `yolo/images/<file>` (links to the images) and
  `yolo/data.yaml`.
- `label-studio`: `label-studio/tasks.json`, tasks whose predictions are brush regions (Label
  Studio's brush RLE) for the labelling config of `samrt.app.label_studio.regions.LABEL_CONFIG`.

Polygons: OpenCV's contours (`cv2.findContours`, outer boundaries, `RETR_EXTERNAL`) through the
centres of the boundary pixels, simplified by `cv2.approxPolyDP` with a tolerance of
`POLYGON_TOLERANCE` pixels; one polygon per connected part; parts with fewer than 3 vertices
(one or two pixels) are left out. **Holes are filled**: COCO polygons and YOLO lines cannot
subtract one, so a ring becomes a disc. The exact masks stay in the SA-1B documents (COCO RLE).
In YOLO an object of several parts is one line, its parts joined by zero-width bridges between
their closest vertices, as Ultralytics' own `convert_coco(use_segments=True)` joins them.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from samrt.errors import InputError

from .label_studio.regions import DEFAULT_LABEL, LABEL_TAGS, brush_region

__all__ = ["FORMATS", "POLYGON_TOLERANCE", "CATEGORY", "rle_mask", "mask_polygons", "coco_instances", "yolo_lines",
           "label_studio_tasks", "write_exports", "read_documents", "parse_formats"]

FORMATS = ("coco", "yolo", "label-studio")
POLYGON_TOLERANCE = 1.0  # pixels: cv2.approxPolyDP's epsilon
CATEGORY = DEFAULT_LABEL  # the one category of class-agnostic masks ("object")


def parse_formats(text: str) -> List[str]:
    """'coco,yolo' -> ['coco', 'yolo']; 'sa1b' (the per-image documents alone) -> []."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in FORMATS + ("sa1b",)]
    if bad:
        raise InputError(f"--format: got {', '.join(bad)}, expected sa1b or any of {', '.join(FORMATS)}")
    return [n for n in names if n != "sa1b"]


def rle_mask(rle: dict) -> np.ndarray:
    """COCO RLE ({"size": [H, W], "counts": str or bytes}) -> HxW bool (pycocotools)."""
    from pycocotools import mask as mask_utils  # the client extra (COCO RLE)

    rle = dict(rle)
    if isinstance(rle.get("counts"), str):
        rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle).astype(bool)


def _mask(record: dict) -> np.ndarray:
    return rle_mask(record["segmentation"])


def mask_polygons(mask: np.ndarray, tolerance: float = POLYGON_TOLERANCE) -> List[np.ndarray]:
    """A HxW bool mask -> its parts' outer boundaries, each [K,2] float64 (x, y) pixel
    coordinates through boundary pixels' centres, K >= 3 (see the module docstring)."""
    import cv2  # opencv-python-headless: the exports extra

    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    parts = []
    for c in contours:
        simple = cv2.approxPolyDP(c, tolerance, True) if tolerance > 0 else c
        if len(simple) < 3:
            simple = c  # a thin part that simplifies to a line keeps its full contour
        if len(simple) >= 3:
            parts.append(simple.reshape(-1, 2).astype(np.float64) + 0.5)
    return parts


def coco_instances(documents: Sequence[dict], description: str = "samrt") -> dict:
    """COCO instances with polygon segmentations (a list of [x1, y1, x2, y2, ...] per object)."""
    images, annotations, skipped = [], [], 0
    for doc in documents:
        info = doc["image"]
        images.append({"id": int(info["image_id"]), "file_name": info["file_name"], "width": int(info["width"]),
                       "height": int(info["height"])})
        for record in doc["annotations"]:
            parts = mask_polygons(_mask(record))
            if not parts:
                skipped += 1
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": int(info["image_id"]), "category_id": 1,
                                "segmentation": [[round(float(v), 2) for v in p.reshape(-1)] for p in parts],
                                "area": int(record["area"]), "bbox": [int(v) for v in record["bbox"]], "iscrowd": 0,
                                "score": record.get("predicted_iou")})
    return {"info": {"description": description, "polygon_tolerance_px": POLYGON_TOLERANCE,
                     "holes": "filled (outer boundaries only); the exact masks are the SA-1B files' COCO RLE",
                     "objects_without_polygon": skipped},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": CATEGORY}]}


def _join(parts: List[np.ndarray]) -> np.ndarray:
    """Several parts as one polygon: each next part entered from the current polygon's closest
    vertex and left the same way (zero-width bridges)."""
    out = parts[0]
    for part in sorted(parts[1:], key=len, reverse=True):
        d = ((out[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        entered = np.roll(part, -j, axis=0)
        out = np.concatenate([out[:i + 1], entered, entered[:1], out[i:]])
    return out


def yolo_lines(document: dict) -> List[str]:
    """One Ultralytics segmentation line per object: `0 x1 y1 x2 y2 ...`, normalised by width and height."""
    w, h = float(document["image"]["width"]), float(document["image"]["height"])
    lines = []
    for record in document["annotations"]:
        parts = mask_polygons(_mask(record))
        if not parts:
            continue
        poly = np.clip(_join(parts) / (w, h), 0.0, 1.0)
        lines.append("0 " + " ".join(f"{v:.6f}" for v in poly.reshape(-1)))
    return lines


def label_studio_tasks(documents: Sequence[dict], image_url: str, model_version: str = "samrt") -> List[dict]:
    """Label Studio tasks with one prediction each: a brush region per object (label `object`,
    score its predicted IoU). `image_url` is the prefix of each task's image: the file name is
    appended (e.g. `/data/local-files/?d=photos/` for Label Studio's local files)."""
    tasks = []
    for doc in documents:
        regions = [brush_region(_mask(r), LABEL_TAGS.brush, LABEL_TAGS.image, CATEGORY, r.get("predicted_iou") or 0.0)
                   for r in doc["annotations"]]
        scores = [r["score"] for r in regions]
        tasks.append({"data": {LABEL_TAGS.image_key: image_url + doc["image"]["file_name"]},
                      "predictions": [{"model_version": model_version, "score": float(np.mean(scores)) if scores else 0.0,
                                       "result": regions}]})
    return tasks


def _write_json(path: str, doc) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _link(source: str, target: str) -> None:
    if os.path.lexists(target):
        return
    try:
        os.symlink(os.path.abspath(source), target)
    except OSError:  # a file system without links: a copy
        shutil.copy2(source, target)


def write_exports(formats: Iterable[str], documents: Sequence[dict], out_dir: str, images_dir: str,
                  image_url: Optional[str] = None) -> Dict[str, str]:
    """Write each format into `out_dir/<format>/` (see the module docstring); returns {format:
    its main file}. `images_dir` holds the documents' images (linked into the YOLO layout);
    `image_url` is the Label Studio tasks' image prefix (default: Label Studio's local files
    under the folder's name, `/data/local-files/?d=<folder name>/`)."""
    written = {}
    for fmt in formats:
        folder = os.path.join(out_dir, fmt)
        os.makedirs(folder, exist_ok=True)
        if fmt == "coco":
            written[fmt] = os.path.join(folder, "instances.json")
            _write_json(written[fmt], coco_instances(documents, f"samrt: {os.path.abspath(images_dir)}"))
        elif fmt == "yolo":
            for sub in ("images", "labels"):
                os.makedirs(os.path.join(folder, sub), exist_ok=True)
            for doc in documents:
                name = doc["image"]["file_name"]
                _link(os.path.join(images_dir, name), os.path.join(folder, "images", name))
                with open(os.path.join(folder, "labels", os.path.splitext(name)[0] + ".txt"), "w") as f:
                    f.write("".join(line + "\n" for line in yolo_lines(doc)))
            written[fmt] = os.path.join(folder, "data.yaml")
            with open(written[fmt], "w") as f:  # JSON strings are YAML strings
                f.write(f"path: {json.dumps(os.path.abspath(folder))}\ntrain: images\nval: images\n"
                        f"names:\n  0: {json.dumps(CATEGORY)}\n")
        elif fmt == "label-studio":
            prefix = image_url if image_url is not None else \
                f"/data/local-files/?d={os.path.basename(os.path.abspath(images_dir))}/"
            written[fmt] = os.path.join(folder, "tasks.json")
            _write_json(written[fmt], label_studio_tasks(documents, prefix))
        else:
            raise InputError(f"export format: got {fmt!r}, expected one of {', '.join(FORMATS)}")
    return written


def read_documents(folder: str, names: Optional[Sequence[str]] = None) -> List[dict]:
    """The SA-1B documents of a folder (`<stem>.json` each), in file-name order, or those named."""
    names = names if names is not None else sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    docs = []
    for name in names:
        with open(os.path.join(folder, name)) as f:
            doc = json.load(f)
        if isinstance(doc, dict) and "image" in doc and "annotations" in doc:
            docs.append(doc)
    return docs
