"""Engine variants, declared once: which backends build which precisions of which graphs, the file
each variant is, its report, the Triton platform that runs it natively, what the CLI offers, and
the order in which serving tries them when nothing is asked (`auto_candidates`).

A variant is (graph, backend, precision):
- graph: `encoder`, `decoder` (the classic decoder graph) or `fast_decoder` (the exact, lighter
  decoder: its three exported graphs image_prep, fast_decoder, fast_decoder_mask, built and gated
  together; `samrt.export.fast_decoder`);
- backend: `onnxruntime`, `openvino`, `tensorrt`;
- precision: `fp32`, `fp16`, `bf16`, `int8` (calibrated post-training quantisation), `int8-dynamic`
  (OpenVINO: int8 weights, activations quantised at run time per group: no calibration).
Its files are named by `engine_path` (the settings in the name: vit_b.encoder.bf16.xml), its
report sits beside its first file (`<file>.report.json`, read with `EngineReport`). onnxruntime
fp32 is the export itself (the exact path): nothing to build, no report.

Core floor: no torch, no engines; the pipeline (`samrt.app.pipeline`) builds and chooses, the
engines build (`samrt.engines.build`), the server renders (`samrt.model_repository`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .artifacts import ArtifactError, ExportManifest, engine_path
from .errors import SamrtError

__all__ = ["Backend", "Graph", "Variant", "EngineReport", "ServedEngine", "ServingPlan", "BACKENDS", "GRAPHS",
           "PRECISIONS", "ROLES", "REPORT_SUFFIX", "SERVING_BACKENDS", "NATIVE_SERVING", "DECODERS",
           "auto_candidates", "parse_variant"]

PRECISIONS: Tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "int8-dynamic")
REPORT_SUFFIX = ".report.json"


@dataclass(frozen=True)
class Backend:
    """An inference backend: the engine files it writes, what it builds, where it runs, and the
    Triton config (key, value, model file) that runs its files natively (production variant)."""

    name: str
    suffix: str
    precisions: Tuple[str, ...]
    devices: Tuple[str, ...]
    triton: Tuple[str, str, str]


BACKENDS: Dict[str, Backend] = {
    "onnxruntime": Backend("onnxruntime", "onnx", ("fp32", "fp16", "int8"), ("cpu", "cuda"),
                           ("platform", "onnxruntime_onnx", "model.onnx")),
    "openvino": Backend("openvino", "xml", ("fp32", "bf16", "int8", "int8-dynamic"), ("cpu",), ("backend", "openvino", "model.xml")),
    "tensorrt": Backend("tensorrt", "plan", ("fp32", "fp16", "int8"), ("cuda",),
                        ("platform", "tensorrt_plan", "model.plan")),
}


@dataclass(frozen=True)
class Graph:
    """A graph serving runs: its role (encoder or decoder), the exported graphs it is built from
    (the first carries the report), and the precisions that make sense for it."""

    name: str
    role: str
    files: Tuple[str, ...]
    precisions: Tuple[str, ...]
    summary: str


GRAPHS: Dict[str, Graph] = {
    "encoder": Graph("encoder", "encoder", ("encoder",), PRECISIONS, "the image encoder"),
    # int8 would change the answers beyond float rounding: decoders stay in float
    "decoder": Graph("decoder", "decoder", ("decoder",), ("fp32", "fp16", "bf16"),
                     "the classic decoder graph (one embedding row per prompt)"),
    "fast_decoder": Graph("fast_decoder", "decoder", ("fast_decoder", "fast_decoder_mask", "image_prep"),
                          ("fp32", "fp16", "bf16"), "the exact, lighter decoder (per-image precompute, "
                          "re-association, fixed prompt slots)"),
}
ROLES = ("encoder", "decoder")
# What `samrt serve` / `build-repo --backend` take: auto (the fastest variant that passes, per graph),
# a backend whose engines run in python-backend models (what runs on a CPU), or the production
# variant for NVIDIA's Triton container, whose encoder and decoder run in native Triton backends.
NATIVE_SERVING: Dict[str, str] = {"onnxruntime-native": "onnxruntime", "openvino-native": "openvino",
                                  "tensorrt": "tensorrt"}
SERVING_BACKENDS: Tuple[str, ...] = ("auto", "onnxruntime", "openvino", *NATIVE_SERVING)
# `--decoder`: the fast decoder (default) or the classic graph
DECODERS: Dict[str, str] = {"fast": "fast_decoder", "classic": "decoder"}


@dataclass(frozen=True)
class Variant:
    """One engine: (graph, backend, precision). `check()` raises SamrtError naming what is not
    possible (got X, expected Y)."""

    graph: str
    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.graph} {self.backend} {self.precision}"

    def check(self, device: str = "cpu") -> "Variant":
        if self.graph not in GRAPHS:
            raise SamrtError(f"graph: got {self.graph!r}, expected one of {sorted(GRAPHS)}")
        if self.backend not in BACKENDS:
            raise SamrtError(f"--backend: got {self.backend!r}, expected one of {sorted(BACKENDS)}")
        backend, graph = BACKENDS[self.backend], GRAPHS[self.graph]
        if self.precision not in backend.precisions:
            raise SamrtError(f"--precision {self.precision} with --backend {self.backend}: expected one of "
                             f"{backend.precisions}" + (" (bf16 is built by --backend openvino)"
                                                        if self.precision == "bf16" else ""))
        if self.precision not in graph.precisions:
            raise SamrtError(f"--precision {self.precision} for the {self.graph}: expected one of {graph.precisions} "
                             f"(the decoder stays in float; quantise the encoder)")
        if device not in backend.devices:
            raise SamrtError(f"--device {device} with --backend {self.backend}: expected one of {backend.devices}")
        return self

    @property
    def is_export(self) -> bool:
        """onnxruntime fp32 runs the exported graphs as they are (the exact path)."""
        return self.backend == "onnxruntime" and self.precision == "fp32"

    def paths(self, manifest: ExportManifest) -> Dict[str, str]:
        """Exported graph name -> the engine file of this variant (the export's own file for
        onnxruntime fp32), in `GRAPHS[graph].files` order."""
        sources = {f: manifest.graph_path(f) for f in GRAPHS[self.graph].files}
        if self.is_export:
            return sources
        return {f: engine_path(src, manifest.export_dir, self.backend, self.precision) for f, src in sources.items()}

    def path(self, manifest: ExportManifest) -> str:
        """The variant's first file (the one its report sits beside)."""
        return next(iter(self.paths(manifest).values()))

    def report_path(self, manifest: ExportManifest) -> str:
        return self.path(manifest) + REPORT_SUFFIX

    def built(self, manifest: ExportManifest) -> bool:
        """Every file and the report exist (always true for the export itself)."""
        if self.is_export:
            return all(os.path.isfile(p) for p in self.paths(manifest).values())
        return all(os.path.isfile(p) for p in self.paths(manifest).values()) and os.path.isfile(
            self.report_path(manifest))


def parse_variant(graph: str, backend: str, precision: str, device: str = "cpu") -> Variant:
    return Variant(graph, backend, precision).check(device)


@dataclass(frozen=True)
class EngineReport:
    """An engine's `<file>.report.json`, read once (written by `samrt build-engine`)."""

    path: str
    variant: Variant
    passed: bool
    engine_ms: float
    reference_ms: float
    mean_mask_iou: Optional[float]
    min_mean_iou: float
    report: dict

    @classmethod
    def read(cls, report_path: str) -> "EngineReport":
        """ArtifactError when the file is missing or not a report samrt wrote."""
        try:
            with open(report_path) as f:
                r = json.load(f)
            graph = r.get("graph_kind") or r["graph"]
            return cls(path=report_path, variant=Variant(graph, r["backend"], r["precision"]),
                       passed=bool(r["gate"]["passed"]), engine_ms=float(r["speed"]["engine_ms"]),
                       reference_ms=float(r["speed"]["fp32_ms"]), mean_mask_iou=r["accuracy"]["mean_mask_iou"],
                       min_mean_iou=float(r["gate"]["min"]), report=r)
        except OSError:
            raise ArtifactError(f"{report_path}: no engine report (build the engine with `samrt build-engine`)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{report_path}: not an engine report written by samrt ({type(e).__name__}: {e})") from None

    @classmethod
    def find(cls, manifest: ExportManifest, variant: Variant) -> Optional["EngineReport"]:
        """The report of `variant` built into `manifest`'s folder, or None when it is not built."""
        return cls.read(variant.report_path(manifest)) if variant.built(manifest) and not variant.is_export else None

    @property
    def speedup(self) -> float:
        """How many times faster than the exact path (onnxruntime fp32), timed in the same build."""
        return self.reference_ms / self.engine_ms if self.engine_ms > 0 else 0.0

    def describe(self) -> str:
        iou = "n/a" if self.mean_mask_iou is None else f"{self.mean_mask_iou:.4f}"
        return (f"{self.variant}: {self.engine_ms:.1f} ms vs {self.reference_ms:.1f} ms onnxruntime fp32 "
                f"({self.speedup:.2f}x), mean mask IoU vs fp32 {iou} (gate {self.min_mean_iou}: "
                f"{'passed' if self.passed else 'FAILED'})")


def auto_candidates(role: str, device: str = "cpu", native_bf16: bool = True,
                    int8_dot: bool = False) -> List[Variant]:
    """The variants serving tries for `role` when none is asked, in order; the first that builds,
    passes its accuracy gate and is faster than the exact path is served, else the exact path
    (the last candidate). On a CPU: for the encoder, OpenVINO int8-dynamic where the CPU has int8
    dot-product instructions (`int8_dot`: VNNI or AMX; weights compressed in seconds, no
    calibration; vit_b 1.28x its bf16 engine on the 2-core AMD EPYC, docs/engines.md), then
    OpenVINO bf16 where the CPU has native bf16 (calibrated int8 is built on request only: its
    calibration is slow; once built, `plan_engines` puts it first when it passed and is faster),
    then OpenVINO fp32; the decoder is the fast decoder, in float (bf16, fp32). On a GPU: TensorRT
    fp16 (written, not run here)."""
    if role not in ROLES:
        raise SamrtError(f"role: got {role!r}, expected one of {ROLES}")
    graph = "encoder" if role == "encoder" else "fast_decoder"
    if device == "cuda":
        return [Variant(graph, "tensorrt", "fp16"), Variant(graph, "onnxruntime", "fp32")]
    order = (["int8-dynamic"] if int8_dot and role == "encoder" else []) + (["bf16"] if native_bf16 else []) + ["fp32"]
    return [Variant(graph, "openvino", p) for p in order] + [Variant(graph, "onnxruntime", "fp32")]


@dataclass(frozen=True)
class ServedEngine:
    """What serving runs for one role: the variant, its files, its report (None for the export
    itself), and why it was chosen (printed at start, kept in the repository)."""

    variant: Variant
    paths: Dict[str, str]
    report: Optional[EngineReport]
    why: str


@dataclass(frozen=True)
class ServingPlan:
    """The engines a repository serves: encoder and decoder, and the native Triton backend of the
    production variant (None: python-backend models, what runs on a CPU)."""

    encoder: ServedEngine
    decoder: ServedEngine
    native: Optional[str] = None

    def describe(self) -> str:
        return f"serving encoder: {self.encoder.why}\nserving decoder: {self.decoder.why}"
