"""Peak memory of automatic mask generation (what the `sam_amg` model process needs per job).

Runs `samrt.amg.generate_masks` in this process with ONNX Runtime runners, exactly as `sam_amg`
does (encode the crop, decode points in batches of points_per_batch), and reads the process's peak
resident set: the peak is reset (/proc/self/clear_refs) after the runners are loaded and the image
is embedded, so `peak_above_idle_mb` is what the job itself adds.

    python -m benchmarks.amg_memory --export DIR --height 1500 --width 2250 [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict

import numpy as np

from samrt import amg, prompts
from samrt import processing as P
from samrt.artifacts import ExportManifest
from samrt.engines import OnnxRuntimeRunner
from samrt.engines.runner import run_decoder
from samrt.imageio import load_image

__all__ = ["measure_amg_memory"]


def _vm(field: str) -> int:
    """VmRSS / VmHWM of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _crop_fn(encoder, decoder, image_size: int):
    low_res_size = int(decoder.input_shapes["mask_input"][-1])
    cache: Dict[bytes, np.ndarray] = {}

    def set_crop(crop: np.ndarray):
        key = crop.tobytes()[:4096] + bytes(str(crop.shape), "ascii")
        if key not in cache:
            x, _ = P.preprocess_image(np.ascontiguousarray(crop), image_size)
            cache[key] = encoder.run({"image": x})["image_embeddings"]
        emb = cache[key]
        size = crop.shape[:2]
        input_size = P.get_preprocess_shape(size[0], size[1], image_size)

        def upscale(low: np.ndarray) -> np.ndarray:
            return P.upscale_masks(low, input_size, size, image_size)

        def run(points: np.ndarray):
            coords, labels = prompts.assemble_prompts(points[:, None, :], np.ones((len(points), 1), np.int32), None)
            coords, labels = prompts.decoder_prompts(coords, labels, size, image_size)
            low, iou = run_decoder(decoder, emb, coords, labels, None, low_res_size)
            low, iou = P.select_masks(low, iou, True)
            return low, iou, upscale if getattr(amg, "LOW_RES_DECODE", False) else None

        def run_full(points: np.ndarray):
            low, iou, _ = run(points)
            return upscale(low), iou

        return run if getattr(amg, "LOW_RES_DECODE", False) else run_full

    return set_crop


def measure_amg_memory(encoder_path: str, decoder_path: str, image: np.ndarray, image_size: int = 1024,
                       **options) -> dict:
    """Run one AMG job in this process; its peak RSS above the idle process (runners loaded, image
    embedded), its duration and mask count. Linux only. Run it in a fresh process per figure."""
    encoder = OnnxRuntimeRunner(encoder_path)
    decoder = OnnxRuntimeRunner(decoder_path)
    set_crop = _crop_fn(encoder, decoder, image_size)
    set_crop(image)  # embed the image now: its cost is not the job's
    opts = amg.AmgOptions(**options)
    idle = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    t = time.perf_counter()
    records = amg.generate_masks(image, set_crop, opts, "coco_rle")
    seconds = time.perf_counter() - t
    peak = _vm("VmHWM")
    return {"bench": "amg_memory", "image_hw": list(image.shape[:2]), "options": opts.to_dict(),
            "idle_rss_mb": idle, "peak_rss_mb": peak, "peak_above_idle_mb": peak - idle,
            "seconds": round(seconds, 1), "masks": len(records),
            "low_res_decode": bool(getattr(amg, "LOW_RES_DECODE", False))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True, help="an export folder (samrt export)")
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--width", type=int, default=2250)
    ap.add_argument("--image", help="an image file instead of a synthetic one")
    ap.add_argument("--options", default="{}", help="AmgOptions fields as JSON (default: SAM's defaults)")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    m = ExportManifest.read(args.export)
    if args.image:
        image = load_image(args.image)
    else:
        image = _scene(args.height, args.width)
    row = measure_amg_memory(m.encoder_path, m.decoder_path, image, m.config.image_size, **json.loads(args.options))
    row["model"] = args.label or m.describe()
    print(json.dumps(row), flush=True)


def _scene(h: int, w: int) -> np.ndarray:
    """Smooth colours plus noise (as tests.conftest.random_image): a non-trivial image of any size."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    main()
