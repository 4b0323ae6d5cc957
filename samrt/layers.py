"""The floors of samrt, declared once: which package is on which floor, what each floor may
import, and the optional dependencies that may only be imported inside functions.
`tests/test_layering.py` checks every import of the distribution against this file.

    app, benchmarks        (samrt.app, samrt.benchmarks)   anything
    server                 (samrt.model_repository)        engines, scenes, core
    engines                (samrt.engines)                 export, scenes, core
    export                 (samrt.export)                  scenes, core
    scenes                 (samrt.scenes)                  core
    core                   (samrt)                         core
    client                 (samrt.client)                  core

A module is on the floor of the longest prefix below that names it (`samrt.scenes.generate`:
scenes; `samrt.spec`: core).
"""

from __future__ import annotations

from typing import Dict, FrozenSet

__all__ = ["FLOORS", "MAY_IMPORT", "OPTIONAL_DEPENDENCIES", "floor_of"]

# import prefix (a package; its folder in pyproject's package-dir) -> floor
FLOORS: Dict[str, str] = {
    "samrt": "core",
    "samrt.scenes": "scenes",
    "samrt.export": "export",
    "samrt.engines": "engines",
    "samrt.model_repository": "server",
    "samrt.client": "client",
    "samrt.app": "app",
    "samrt.benchmarks": "app",
}

# floor -> the floors its modules may import (their own included)
MAY_IMPORT: Dict[str, FrozenSet[str]] = {
    "core": frozenset({"core"}),
    "scenes": frozenset({"core", "scenes"}),
    "export": frozenset({"core", "scenes", "export"}),
    "engines": frozenset({"core", "scenes", "export", "engines"}),
    # not export: the server runs engine files and never needs torch
    "server": frozenset({"core", "scenes", "engines", "server"}),
    # the SDK installs without torch, onnx or the server: core only
    "client": frozenset({"core", "client"}),
    "app": frozenset({"core", "scenes", "export", "engines", "server", "client", "app"}),
}

# Top-level modules that are not in the base install (numpy + PIL) and are therefore imported
# inside the functions that use them, never at module level (except by a module of a floor
# that needs them to exist at all: samrt.export imports torch). A function-level import is
# allowed for these and for samrt modules that import one of them at module level; any other
# import belongs at the top of its module, where the layering test sees it.
OPTIONAL_DEPENDENCIES: Dict[str, str] = {
    "torch": "the export extra; core, client and server install without it",
    "torchvision": "the export extra",
    "segment_anything": "the export extra (the official model definition)",
    "onnx": "the export extra",
    "onnxruntime": "the cpu or gpu extra (one of two wheels)",
    "openvino": "the openvino extra",
    "nncf": "the openvino extra (INT8 quantisation)",
    "tensorrt": "NVIDIA's container only",
    "ray": "the ray extra",
    "playwright": "tests only (the annotate page in Chromium)",
    "tritonclient": "the client extra; grpc and http are imported for the protocol asked",
    "google": "protobuf, with tritonclient[grpc]",
    "gevent": "with tritonclient[http]",
    "triton_python_backend_utils": "exists only inside Triton's python-backend stub",
    "pycocotools": "the client extra (COCO RLE)",
    "scipy": "the client extra",
    "tqdm": "the client extra (progress bars)",
    "aiohttp": "the annotate and label-studio extras",
    "cv2": "the exports extra (polygons from OpenCV's contours)",
    "label_studio_converter": "the exports extra (Label Studio's own brush RLE)",
    "matplotlib": "the dev extra (benchmark plots)",
}


def floor_of(module: str) -> str:
    """The floor of a `samrt...` module name: that of the longest prefix in FLOORS naming it."""
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise KeyError(f"got module {module!r}, expected a name under one of {sorted(FLOORS)}")
    return FLOORS[best]
