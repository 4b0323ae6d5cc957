"""The vit_b comparison of test_parity, in a process of its own.

`python -m tests.engines.vit_b_worker CHECKPOINT EXPORT_DIR H W` loads segment_anything's vit_b
from CHECKPOINT and samrt's ONNX export of it, sets the same random H x W image in both and runs
test_parity's prompt suite (an AssertionError, exit 1, on any difference beyond its tolerances).
Both vit_b models and their 1024 x 1024 activations (a few GB) are given back when it exits, not
kept by the test process beside the session's servers and engines (CI was OOM-killed there).
"""

import sys


def main(checkpoint: str, export_dir: str, h: int, w: int) -> None:
    from segment_anything import SamPredictor, sam_model_registry

    from samrt.engines import OnnxSamPredictor

    from ..conftest import random_image
    from .test_parity import run_prompt_suite

    ref = SamPredictor(sam_model_registry["vit_b"](checkpoint=checkpoint))
    ours = OnnxSamPredictor.from_onnx(f"{export_dir}/vit_b.encoder.onnx", f"{export_dir}/vit_b.decoder.onnx")
    image = random_image(h, w, seed=w)
    ref.set_image(image)
    ours.set_image(image)
    run_prompt_suite(ref, ours, h, w, seed=w)
    print(f"vit_b {h}x{w}: same as SamPredictor")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
