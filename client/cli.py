"""Library functions behind `samrt segment` and `samrt amg` (the CLI only parses arguments)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from samrt import imageio, prompts
from samrt.artifacts import atomic_write_json, prepare_output_dir
from samrt.errors import ImageNotCachedError, InputError, InvalidRequestError, SamrtError
from samrt.wire import image_id_of
from samrt.visualize import overlay, save_png

from ._client import SamClient
from .amg import TritonSamAutomaticMaskGenerator, served_amg_options
from .predictor import TritonSamPredictor

__all__ = ["parse_point", "parse_box", "check_pixel_prompt", "load_image", "segment_file", "amg_folder", "amg_document",
           "AmgFolderResult", "encode_folder", "ENCODE_WORKERS"]

ENCODE_WORKERS = 4  # requests in flight: the server's encoder batch (RepoOptions.encoder_max_batch)


def parse_point(text: str) -> Tuple[float, float, int]:
    """'x,y' (foreground) or 'x,y:label' -> (x, y, label), label 1 (foreground) or 0 (background)."""
    try:
        xy, _, label = text.partition(":")
        x, y = (float(v) for v in xy.split(","))
        lab = int(label) if label else 1
    except ValueError:
        raise InputError(f"--point: got {text!r}, expected x,y or x,y:label (label 1 foreground, 0 background)") from None
    if lab not in (0, 1):
        raise InputError(f"--point: got {text!r}, label {lab}, expected label 1 (foreground) or 0 (background); "
                         f"a box goes in --box x0,y0,x1,y1")
    return x, y, lab


def parse_box(text: str) -> np.ndarray:
    try:
        box = np.array([float(v) for v in text.split(",")])
    except ValueError:
        box = np.zeros(0)
    if box.shape != (4,):
        raise InputError(f"--box: got {text!r}, expected x0,y0,x1,y1")
    return box


def check_pixel_prompt(coords: Optional[np.ndarray], box: Optional[np.ndarray], original_size: Tuple[int, int]) -> None:
    """`samrt segment` refuses what the SDK only warns about: InputError for points (or box
    corners) more than the image's size outside it (`samrt.prompts.check_points_in_image`) and for
    prompts that look like fractions of the image (`samrt.prompts.looks_like_fractions`)."""
    parts = [np.asarray(a, np.float64).reshape(-1, 2) for a in (coords, box) if a is not None]
    if not parts:
        return
    points = np.concatenate(parts)
    prompts.check_points_in_image(points, None, original_size, name="--point/--box")
    if prompts.looks_like_fractions(points, None, original_size):
        raise InputError(prompts.fractions_message(original_size, name="--point/--box"))


def load_image(path: str, max_pixels: Optional[int] = None) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB in displayed orientation (samrt.imageio.load_image)."""
    return imageio.load_image(path, max_pixels)


def segment_file(client: SamClient, path: str, points: Sequence[str], box: Optional[str], out: str,
                 overlay_path: Optional[str] = None, multimask: bool = True) -> dict:
    """Segment one image from clicks and/or a box, in the image's pixels (points far outside the
    image and fractions of it are refused, `check_pixel_prompt`); write the best mask as PNG (and
    an overlay with the clicks and the box). As SAM's protocol: one click alone gets three
    candidates (the best-scored is written), a box or several clicks the single-mask output."""
    image = load_image(path)
    pts = [parse_point(p) for p in points]
    if not pts and box is None:
        raise InputError("segment: got no --point and no --box, expected at least one")
    coords = np.array([p[:2] for p in pts]) if pts else None
    labels = np.array([p[2] for p in pts]) if pts else None
    box_xyxy = None if box is None else parse_box(box)
    check_pixel_prompt(coords, box_xyxy, image.shape[:2])
    predictor = TritonSamPredictor(client)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(coords, labels, box_xyxy, multimask_output=multimask and len(pts) == 1 and box is None)  # SAM's protocol
    best = int(np.argmax(scores))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(masks[best].astype(np.uint8) * 255).save(out)
    if overlay_path:
        save_png(overlay_path, overlay(image, masks[best], coords, labels, box=box_xyxy))
    return {"image": path, "mask": out, "overlay": overlay_path, "score": float(scores[best]),
            "area": int(masks[best].sum())}


def amg_document(image_id: int, file_name: str, image: np.ndarray, records: List[dict]) -> dict:
    """One SA-1B style document: {"image": {image_id, file_name, height, width}, "annotations":
    records with an "id" each}. `samrt amg` through a server and on Ray (samrt.app.dataset_amg) both write it."""
    return {"image": {"image_id": int(image_id), "file_name": file_name, "height": int(image.shape[0]),
                      "width": int(image.shape[1])},
            "annotations": [{"id": k, **r} for k, r in enumerate(records)]}


def _encode_one(client: SamClient, path: str) -> str:
    """'encoded' or 'held' (the server already holds the image: nothing sent but its id)."""
    image = load_image(path)
    try:
        client.image_size(image_id_of(image))  # asks the cache (memory, or its disk tier) without encoding
        return "held"
    except ImageNotCachedError:
        client.encode(image, background=True)  # bulk work: behind the images people look at
        return "encoded"


def encode_folder(client: SamClient, folder: str, workers: int = ENCODE_WORKERS, progress: bool = True) -> dict:
    """`samrt encode`: embed every image of `folder` on the server ahead of time, `workers`
    requests in flight. Resumable: an image the server already holds (same pixels: same id) is
    skipped. An image that cannot be read or encoded is listed under `failed` and the rest go on.
    Returns {images, encoded, held, failed: [{file_name, reason}], seconds}."""
    from tqdm import tqdm  # tqdm: the client extra

    if workers < 1:
        raise InputError(f"workers: got {workers}, expected >= 1")
    files = imageio.list_images(folder)
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


@dataclass
class AmgFolderResult:
    """What `amg_folder` did: the files written, masks per image, the files skipped and why, and
    the options it ran with."""

    written: List[str] = field(default_factory=list)
    masks: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.masks.values())


def amg_folder(client: SamClient, folder: str, out_dir: str, progress: bool = True,
               on_image: Optional[Callable[[str, Optional[int], Optional[str]], None]] = None,
               **amg_kwargs) -> AmgFolderResult:
    """One SA-1B style JSON (image info + COCO RLE annotations) per image of `folder`.

    Options: `amg_kwargs` (SamAutomaticMaskGenerator's names; None: not given), then what the
    served model's card recommends (`served_amg_options`), then SAM's defaults. A file that cannot
    be decoded, or that the server refuses (InvalidRequestError: too large, ...), is skipped with
    its reason; `on_image(name, masks, None)` or `on_image(name, None, reason)` is called per file.
    `out_dir` must be new, empty, or written by samrt amg before (OutputDirError otherwise,
    nothing in it changed); its JSON files of the same images are replaced."""
    from tqdm import tqdm  # tqdm: the client extra

    files = imageio.list_images(folder)
    options = served_amg_options(client.model_info(), **amg_kwargs).to_dict()
    generator = TritonSamAutomaticMaskGenerator(client, output_mode="coco_rle", **options)
    # new, empty, or written by samrt amg (its marker): a folder of the user's own files is refused untouched
    prepare_output_dir(out_dir, "amg")
    result = AmgFolderResult(options=options)
    for i, name in enumerate(tqdm(files, desc="amg", disable=not progress)):
        try:
            image = load_image(os.path.join(folder, name))
            records = generator.generate(image)
        except (InputError, InvalidRequestError) as e:
            result.skipped[name] = str(e)
            if on_image:
                on_image(name, None, str(e))
            continue
        doc = amg_document(i, name, image, records)
        path = os.path.join(out_dir, os.path.splitext(name)[0] + ".json")
        atomic_write_json(path, doc)
        result.written.append(path)
        result.masks[name] = len(records)
        if on_image:
            on_image(name, len(records), None)
    return result
