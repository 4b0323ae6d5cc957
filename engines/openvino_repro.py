"""A minimal reproduction of OpenVINO 2026.4's wrong static bf16 decoder, kept so that the next
OpenVINO release can be checked: `python -m samrt.engines.openvino_repro`.

What it does: SAM's classic decoder graph (the official modules, random weights, the small `tiny`
configuration; the decoder is full-size in every configuration) is exported to ONNX, then compiled
by OpenVINO for the CPU in bf16 with static input shapes for one prompt of 2, 3 and 4 points (7, 8
and 9 tokens), with OpenVINO's Snippets fusion on (its default) and off. Each compile runs the
same random inputs three times and is compared with the same graph in f32 (dynamic shapes): the
share of low-res mask pixels whose sign agrees, and the largest predicted-IoU difference.

Seen on an Intel Xeon (AMX, 2026-11-30) and an AMD EPYC (Zen 4, AVX512_BF16, 2026-12-03), both
OpenVINO 2026.4.1: with Snippets on, 3 points (8 tokens) agreed on 94-96% of the pixels with IoU
off by 0.03-0.05, slightly differently from run to run; 2 and 4 points agreed on 99.6%; with Snippets off
every case agreed on >= 99.6%. samrt compiles its decoders with Snippets off and checks each static
compile when it is made (samrt.engines.openvino_engine.OpenVINORunner).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np

__all__ = ["reproduce"]


def _export_decoder(path: str) -> None:
    import torch  # torch: the export extra (this script only)

    from samrt.export import random_sam
    from samrt.export.onnx_export import export_graph, random_decoder_inputs
    from samrt.export.wrappers import PromptDecoder
    from samrt.spec import decoder_spec, get_config

    cfg = get_config("tiny")
    example = {k: torch.from_numpy(v) for k, v in random_decoder_inputs(cfg, 3, 4).items()}
    export_graph(PromptDecoder(random_sam(cfg)).eval(), decoder_spec(cfg), example, path)


def reproduce(onnx_path: str, points=(2, 3, 4), runs: int = 3) -> List[Dict[str, object]]:
    """One row per (points, snippets): mask sign agreement and IoU difference against f32, per run."""
    import openvino as ov  # openvino: the openvino extra
    import openvino.properties.hint as hints

    core = ov.Core()
    reference = core.compile_model(core.read_model(onnx_path), "CPU", {hints.inference_precision: ov.Type.f32})
    rng = np.random.default_rng(0)
    rows = []
    for n in points:
        labels = np.array([[1.0, 0.0, 1.0, 1.0][: n - 1] + [-1.0]], np.float32)
        feeds = {"image_embeddings": rng.standard_normal((1, 256, 64, 64)).astype(np.float32),
                 "point_coords": (rng.random((1, n, 2)) * 1000).astype(np.float32), "point_labels": labels,
                 "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}
        ref = reference(feeds)
        for snippets in (True, False):
            model = core.read_model(onnx_path)
            model.reshape({k: list(v.shape) for k, v in feeds.items()})
            config = {hints.inference_precision: ov.Type.bf16, **({} if snippets else {"SNIPPETS_MODE": "DISABLE"})}
            compiled = core.compile_model(model, "CPU", config)
            outs = [compiled(feeds) for _ in range(runs)]
            rows.append({"points": n, "tokens": n + 5, "snippets": snippets,
                         "inference_precision": compiled.get_property(hints.inference_precision()).get_type_name(),
                         "mask_agreement": [round(float(np.mean((o[0] > 0) == (ref[0] > 0))), 4) for o in outs],
                         "max_iou_diff": [round(float(np.abs(o[1] - ref[1]).max()), 4) for o in outs]})
    return rows


def main(argv=None) -> int:
    import openvino as ov  # openvino: the openvino extra

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "decoder.onnx")
        _export_decoder(path)
        rows = reproduce(path)
    print(json.dumps({"openvino": ov.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
