"""Library functions behind `samrt segment` and `samrt amg` (the CLI only parses arguments)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from samrt import imageio
from samrt.errors import ImageNotCachedError, InputError, SamrtError
from samrt.wire import image_id_of
from samrt.visualize import overlay, save_png

from ._client import SamClient
from .amg import TritonSamAutomaticMaskGenerator
from .predictor import TritonSamPredictor

__all__ = ["parse_point", "parse_box", "load_image", "segment_file", "amg_folder", "amg_document", "encode_folder",
           "list_images", "IMAGE_SUFFIXES", "ENCODE_WORKERS"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ENCODE_WORKERS = 4  # requests in flight: the server's encoder batch (RepoOptions.encoder_max_batch)
# Keyword arguments of SamClient.encode for bulk work (e.g. background priority, where the SDK has it).
BULK_ENCODE: dict = {}


def parse_point(text: str) -> Tuple[float, float, int]:
    """'x,y' (foreground) or 'x,y:label' -> (x, y, label)."""
    try:
        xy, _, label = text.partition(":")
        x, y = (float(v) for v in xy.split(","))
        return x, y, int(label) if label else 1
    except ValueError:
        raise InputError(f"--point: got {text!r}, expected x,y or x,y:label (label 1 foreground, 0 background)") from None


def parse_box(text: str) -> np.ndarray:
    try:
        box = np.array([float(v) for v in text.split(",")])
    except ValueError:
        box = np.zeros(0)
    if box.shape != (4,):
        raise InputError(f"--box: got {text!r}, expected x0,y0,x1,y1")
    return box


def load_image(path: str, max_pixels: Optional[int] = None) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB in displayed orientation (samrt.imageio.load_image)."""
    return imageio.load_image(path, max_pixels)


def segment_file(client: SamClient, path: str, points: Sequence[str], box: Optional[str], out: str,
                 overlay_path: Optional[str] = None, multimask: bool = True) -> dict:
    """Segment one image from clicks and/or a box; write the best mask as PNG (and an overlay)."""
    image = load_image(path)
    pts = [parse_point(p) for p in points]
    if not pts and box is None:
        raise InputError("segment: got no --point and no --box, expected at least one")
    predictor = TritonSamPredictor(client)
    predictor.set_image(image)
    coords = np.array([p[:2] for p in pts]) if pts else None
    labels = np.array([p[2] for p in pts]) if pts else None
    masks, scores, _ = predictor.predict(coords, labels, None if box is None else parse_box(box),
                                         multimask_output=multimask and len(pts) <= 1)
    best = int(np.argmax(scores))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(masks[best].astype(np.uint8) * 255).save(out)
    if overlay_path:
        save_png(overlay_path, overlay(image, masks[best], coords, labels))
    return {"image": path, "mask": out, "overlay": overlay_path, "score": float(scores[best]),
            "area": int(masks[best].sum())}


def amg_document(image_id: int, file_name: str, image: np.ndarray, records: List[dict]) -> dict:
    """One SA-1B style document: {"image": {image_id, file_name, height, width}, "annotations":
    records with an "id" each}. `samrt amg` through a server and on Ray (samrt.app.dataset_amg) both write it."""
    return {"image": {"image_id": int(image_id), "file_name": file_name, "height": int(image.shape[0]),
                      "width": int(image.shape[1])},
            "annotations": [{"id": k, **r} for k, r in enumerate(records)]}


def list_images(folder: str) -> List[str]:
    """The image files of `folder` (by suffix, IMAGE_SUFFIXES), sorted; InputError when none."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: not a folder; expected a folder of images")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _encode_one(client: SamClient, path: str) -> str:
    """'encoded' or 'held' (the server already holds the image: nothing sent but its id)."""
    image = load_image(path)
    try:
        client.image_size(image_id_of(image))  # asks the cache (memory, or its disk tier) without encoding
        return "held"
    except ImageNotCachedError:
        client.encode(image, **BULK_ENCODE)
        return "encoded"


def encode_folder(client: SamClient, folder: str, workers: int = ENCODE_WORKERS, progress: bool = True) -> dict:
    """`samrt encode`: embed every image of `folder` on the server ahead of time, `workers`
    requests in flight. Resumable: an image the server already holds (same pixels: same id) is
    skipped. An image that cannot be read or encoded is listed under `failed` and the rest go on.
    Returns {images, encoded, held, failed: [{file_name, reason}], seconds}."""
    from tqdm import tqdm  # tqdm: the client extra

    if workers < 1:
        raise InputError(f"workers: got {workers}, expected >= 1")
    files = list_images(folder)
    counts, failed, t0 = {"encoded": 0, "held": 0}, [], time.monotonic()
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(files), desc="encode", unit="image",
                                                   disable=not progress) as bar:
        futures = {pool.submit(_encode_one, client, os.path.join(folder, name)): name for name in files}
        for future in as_completed(futures):
            try:
                counts[future.result()] += 1
            except (SamrtError, OSError, ValueError) as e:
                failed.append({"file_name": futures[future], "reason": f"{type(e).__name__}: {e}"})
            bar.update(1)
            bar.set_postfix(encoded=counts["encoded"], held=counts["held"], failed=len(failed))
    return {"images": len(files), **counts, "failed": sorted(failed, key=lambda f: f["file_name"]),
            "seconds": round(time.monotonic() - t0, 3)}


def amg_folder(client: SamClient, folder: str, out_dir: str, progress: bool = True, **amg_kwargs) -> List[str]:
    """One SA-1B style JSON (image info + COCO RLE annotations) per image of `folder`."""
    from tqdm import tqdm  # tqdm: the client extra

    files = list_images(folder)
    generator = TritonSamAutomaticMaskGenerator(client, output_mode="coco_rle", **amg_kwargs)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, name in enumerate(tqdm(files, desc="amg", disable=not progress)):
        image = load_image(os.path.join(folder, name))
        records = generator.generate(image)
        doc = amg_document(i, name, image, records)
        path = os.path.join(out_dir, os.path.splitext(name)[0] + ".json")
        with open(path, "w") as f:
            json.dump(doc, f)
        written.append(path)
    return written
