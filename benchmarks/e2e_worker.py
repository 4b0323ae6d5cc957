"""The PyTorch side of `samrt bench e2e`, each step in a process of its own (so that its peak
memory is its own, and given back when it exits):

- `python -m samrt.benchmarks.e2e_worker checkpoint MODEL_TYPE PATH`: an official-format
  checkpoint of seeded random weights (what a test or a benchmark uses where the real weights
  cannot be downloaded);
- `python -m samrt.benchmarks.e2e_worker reference CHECKPOINT IN.npz OUT.npz`: segment_anything's
  `SamPredictor` on IN's `image` (H x W x 3 uint8), a click (`point_coords` 1 x 2, `point_labels` 1)
  and a box (`box`, 4: x0 y0 x1 y1), multimask output; OUT holds `point_masks` / `box_masks`
  (3 x H x W bool), `point_scores` / `box_scores` (3,) and the seconds of set_image / each predict.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def write_checkpoint(model_type: str, path: str, seed: int = 0) -> None:
    from samrt.export import random_sam, save_checkpoint
    from samrt.spec import get_config

    save_checkpoint(random_sam(get_config(model_type), seed=seed), path)


def reference(checkpoint: str, inputs: str, out: str) -> None:
    from segment_anything import SamPredictor

    from samrt.export import load_sam

    data = np.load(inputs)
    predictor = SamPredictor(load_sam(checkpoint)[0])
    t0 = time.perf_counter()
    predictor.set_image(data["image"])
    t1 = time.perf_counter()
    pm, ps, _ = predictor.predict(point_coords=data["point_coords"], point_labels=data["point_labels"],
                                  multimask_output=True)
    t2 = time.perf_counter()
    bm, bs, _ = predictor.predict(box=data["box"], multimask_output=True)
    t3 = time.perf_counter()
    np.savez(out, point_masks=pm, point_scores=ps, box_masks=bm, box_scores=bs,
             seconds=np.array([t1 - t0, t2 - t1, t3 - t2]))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "checkpoint":
        write_checkpoint(args[0], args[1])
    elif command == "reference":
        reference(*args)
    else:
        raise SystemExit(f"command: got {command!r}, expected 'checkpoint' or 'reference'")
