"""Export SAM's encoder and decoder to ONNX from the declared spec, then check each graph
in ONNX Runtime against PyTorch. An export is not done until that check passes."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from samrt.artifacts import EXPORT_REPORT, prepare_output_dir
from samrt.errors import ExportCheckError
from samrt.prompts import ABSENT_LABEL
from samrt.spec import GraphSpec, SamConfig, decoder_spec, encoder_spec, fast_decoder_spec, image_prep_spec

from .fast_decoder import FastMaskDecoder, ImagePrecompute
from .wrappers import ImageEncoder, PromptDecoder

__all__ = [
    "OPSET",
    "Tolerance",
    "ExportResult",
    "export_graph",
    "check_graph",
    "check_fast_decoder",
    "random_decoder_inputs",
    "FAST_DECODER_GRAPHS",
    "export_sam",
]

log = logging.getLogger(__name__)

OPSET = 18  # >= 17 so LayerNorm is one LayerNormalization op
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf's limit is 2 GB; vit_h goes to external data


@dataclass(frozen=True)
class Tolerance:
    """Pass when |onnx - torch| <= atol + rtol * |torch| for every element."""

    atol: float
    rtol: float


ENCODER_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)
DECODER_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)


@dataclass
class ExportResult:
    encoder_path: str
    decoder_path: str
    report_path: str
    report: dict = field(default_factory=dict)
    fast_decoder_paths: Dict[str, str] = field(default_factory=dict)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(module: torch.nn.Module, spec: GraphSpec, example: Dict[str, torch.Tensor], path: str) -> str:
    """torch.onnx.export (dynamo) with names and symbolic axes taken from `spec`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dims: Dict[str, torch.export.Dim] = {}  # one Dim per symbolic name: axes sharing a name are tied
    dynamic_shapes = {}
    for t in spec.inputs:
        axes = {i: dims.setdefault(d, torch.export.Dim(d, min=1)) for i, d in t.dynamic_axes.items()}
        dynamic_shapes[t.name] = axes or None
    external = _param_bytes(module) > _EXTERNAL_DATA_BYTES
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            tuple(example[n] for n in spec.input_names),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=external,
            verbose=False,
        )
    program.save(path, external_data=external)
    return path


def _session(path: str):
    import onnxruntime as ort  # onnxruntime: the cpu or gpu extra

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def check_graph(
    path: str,
    module: torch.nn.Module,
    spec: GraphSpec,
    inputs: Dict[str, np.ndarray],
    tol: Tolerance,
) -> dict:
    """Run `path` in ONNX Runtime and `module` in PyTorch on the same inputs; compare outputs."""
    sess = _session(path)
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise ExportCheckError(
            f"{path}: graph has inputs {got_in} / outputs {got_out}, expected {spec.input_names} / {spec.output_names}"
        )
    with torch.no_grad():
        ref = module(*[torch.from_numpy(inputs[n]) for n in spec.input_names])
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    out = sess.run(spec.output_names, inputs)
    return _compare(path, spec.output_names, [r.numpy() for r in ref], out,
                    {k: list(v.shape) for k, v in inputs.items()}, tol)


def _compare(path: str, names, ref, out, input_shapes: dict, tol: Tolerance) -> dict:
    """Per output: max abs/rel difference of `out` (ONNX Runtime) against `ref` (PyTorch), passed
    when every element is within atol + rtol * |ref| and finite."""
    report = {"input_shapes": input_shapes, "outputs": {}, "passed": True}
    for name, r, o in zip(names, ref, out):
        if r.shape != o.shape:
            raise ExportCheckError(f"{path}: output {name} has shape {o.shape}, expected {r.shape} (PyTorch)")
        diff = np.abs(o.astype(np.float64) - r.astype(np.float64))
        bound = tol.atol + tol.rtol * np.abs(r.astype(np.float64))
        ok = bool(np.all(diff <= bound)) and bool(np.all(np.isfinite(o)))
        report["outputs"][name] = {
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / np.maximum(np.abs(r), 1e-12)).max()),
            "atol": tol.atol,
            "rtol": tol.rtol,
            "passed": ok,
        }
        report["passed"] &= ok
    return report


FAST_DECODER_GRAPHS = ("image_prep", "fast_decoder", "fast_decoder_mask")


def check_fast_decoder(paths: Dict[str, str], decoder: torch.nn.Module, cfg: SamConfig, seed: int = 0) -> List[dict]:
    """The fast decoder's graphs (`paths`: FAST_DECODER_GRAPHS -> .onnx) in ONNX Runtime against
    the classic decoder in PyTorch (`PromptDecoder`, the reference), on the same random embedding
    and prompts: with and without a mask prompt, prompts padded to more slots than they fill
    (ABSENT_LABEL), every label kind. Each case is compared like `check_graph`, with DECODER_TOLERANCE."""
    rng = np.random.default_rng(seed)
    sessions = {g: _session(p) for g, p in paths.items()}
    for g, sess in sessions.items():
        spec = image_prep_spec(cfg) if g == "image_prep" else fast_decoder_spec(cfg, g == "fast_decoder_mask")
        got_in, got_out = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
        if got_in != spec.input_names or got_out != spec.output_names:
            raise ExportCheckError(f"{paths[g]}: graph has inputs {got_in} / outputs {got_out}, expected "
                                   f"{spec.input_names} / {spec.output_names}")
    e, m = cfg.embedding_size, cfg.low_res_size
    emb = rng.standard_normal((1, cfg.prompt_embed_dim, e, e), dtype=np.float32)
    state = dict(zip(image_prep_spec(cfg).output_names, sessions["image_prep"].run(None, {"image_embeddings": emb})))
    state["image_tokens"] = np.ascontiguousarray(emb[0].reshape(emb.shape[1], -1).T)
    checks = []
    # (prompts, points, slots): one click + SAM's padding point in 2 slots; 3 points in 6 slots (boxes too)
    for i, (p, n, slots) in enumerate([(1, 2, 2), (5, 3, 6)]):
        coords = rng.uniform(0, cfg.image_size, (p, n, 2)).astype(np.float32)
        labels = rng.integers(0, 2, (p, n)).astype(np.float32)
        labels[:, -1] = -1  # SAM's padding point
        if n >= 3:
            labels[::2, 0], labels[::2, 1] = 2, 3  # a box in every other prompt
        mask = rng.standard_normal((p, 1, m, m), dtype=np.float32) * 4
        pad = slots - n
        fast_in = {**state, "point_coords": np.concatenate([coords, rng.uniform(0, 9, (p, pad, 2)).astype(np.float32)], 1),
                   "point_labels": np.concatenate([labels, np.full((p, pad), ABSENT_LABEL, np.float32)], 1)}
        for with_mask in (False, True):
            graph = "fast_decoder_mask" if with_mask else "fast_decoder"
            feeds = dict(fast_in, **({"mask_input": mask} if with_mask else {}))
            out = sessions[graph].run(["low_res_masks", "iou_predictions"], feeds)
            with torch.no_grad():
                ref = decoder(torch.from_numpy(np.repeat(emb, p, 0)), torch.from_numpy(coords), torch.from_numpy(labels),
                              torch.from_numpy(mask), torch.full((p,), float(with_mask)))
            shapes = {"prompts": p, "points": n, "slots": slots, "mask_input": with_mask}
            checks.append(_compare(paths[graph], ["low_res_masks", "iou_predictions"], [r.numpy() for r in ref], out,
                                   shapes, DECODER_TOLERANCE))
    return checks


def random_decoder_inputs(cfg: SamConfig, num_prompts: int, num_points: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random but valid decoder inputs: every label kind, some prompts with a mask input."""
    rng = np.random.default_rng(seed)
    spec = decoder_spec(cfg)
    axes = {"num_prompts": num_prompts, "num_points": num_points}
    shape = {t.name: t.concrete_shape(**axes) for t in spec.inputs}
    return {
        "image_embeddings": rng.standard_normal(shape["image_embeddings"], dtype=np.float32),
        "point_coords": rng.uniform(0, cfg.image_size, shape["point_coords"]).astype(np.float32),
        "point_labels": rng.integers(-1, 4, shape["point_labels"]).astype(np.float32),
        "mask_input": (rng.standard_normal(shape["mask_input"], dtype=np.float32) * 4),
        "has_mask_input": (np.arange(num_prompts) % 2).astype(np.float32),
    }


def _versions() -> dict:
    import onnx  # onnx: the export extra
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def export_sam(
    sam: torch.nn.Module,
    cfg: SamConfig,
    out_dir: str,
    name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    random_init: bool = False,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> ExportResult:
    """Export encoder and decoder of `sam` to `out_dir`, check both, write export_report.json.
    `progress` gets a line after each step (what, how long it took).

    Raises ExportCheckError (after writing the report) when a tolerance is exceeded.
    """
    def step(what: str, key: str) -> None:
        if progress is not None:
            progress(f"  {what} in {timings[key]:.0f} s")

    name = name or cfg.model_type
    prepare_output_dir(out_dir, "export")
    enc_path = os.path.join(out_dir, f"{name}.encoder.onnx")
    dec_path = os.path.join(out_dir, f"{name}.decoder.onnx")
    enc_spec, dec_spec = encoder_spec(cfg), decoder_spec(cfg)
    encoder, decoder = ImageEncoder(sam).eval(), PromptDecoder(sam).eval()
    rng = np.random.default_rng(seed)
    timings = {}

    t0 = time.perf_counter()
    # Example batch of 2 so the exporter keeps the batch axis symbolic (size 1 specialises).
    s = cfg.image_size
    export_graph(encoder, enc_spec, {"image": torch.randn(2, 3, s, s)}, enc_path)
    timings["encoder_export_s"] = time.perf_counter() - t0
    step(f"encoder exported{' (weights to external data: past protobuf limit)' if _param_bytes(encoder) > _EXTERNAL_DATA_BYTES else ''}",
         "encoder_export_s")

    t0 = time.perf_counter()
    example = {k: torch.from_numpy(v) for k, v in random_decoder_inputs(cfg, 3, 4, seed).items()}
    export_graph(decoder, dec_spec, example, dec_path)
    timings["decoder_export_s"] = time.perf_counter() - t0
    step("decoder exported", "decoder_export_s")

    t0 = time.perf_counter()
    image = rng.standard_normal((1, 3, s, s), dtype=np.float32)
    enc_check = check_graph(enc_path, encoder, enc_spec, {"image": image}, ENCODER_TOLERANCE)
    timings["encoder_check_s"] = time.perf_counter() - t0
    step("encoder checked against PyTorch", "encoder_check_s")
    t0 = time.perf_counter()
    dec_checks: List[dict] = [
        check_graph(dec_path, decoder, dec_spec, random_decoder_inputs(cfg, p, n, seed + 1 + i), DECODER_TOLERANCE)
        for i, (p, n) in enumerate([(1, 1), (5, 3)])
    ]
    timings["decoder_check_s"] = time.perf_counter() - t0
    step("decoder checked against PyTorch", "decoder_check_s")

    t0 = time.perf_counter()
    fast_paths = {g: os.path.join(out_dir, f"{name}.{g}.onnx") for g in FAST_DECODER_GRAPHS}
    _export_fast_decoder(sam, cfg, fast_paths, seed)
    timings["fast_decoder_export_s"] = time.perf_counter() - t0
    step("fast decoder exported", "fast_decoder_export_s")
    t0 = time.perf_counter()
    fast_checks = check_fast_decoder(fast_paths, decoder, cfg, seed + 7)
    timings["fast_decoder_check_s"] = time.perf_counter() - t0
    step("fast decoder checked against the decoder in PyTorch", "fast_decoder_check_s")

    report = {
        "name": name,
        "config": cfg.to_dict(),
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "random_init": random_init,
        "opset": OPSET,
        "versions": _versions(),
        "encoder": {"path": os.path.basename(enc_path), "spec": _spec_dict(enc_spec), "checks": [enc_check]},
        "decoder": {"path": os.path.basename(dec_path), "spec": _spec_dict(dec_spec), "checks": dec_checks},
        "fast_decoder": {"paths": {g: os.path.basename(p) for g, p in fast_paths.items()},
                         "specs": {g: _spec_dict(image_prep_spec(cfg) if g == "image_prep" else
                                                 fast_decoder_spec(cfg, g == "fast_decoder_mask"))
                                   for g in FAST_DECODER_GRAPHS},
                         "reference": "decoder (PromptDecoder) in PyTorch", "checks": fast_checks},
        "timings": timings,
        "passed": enc_check["passed"] and all(c["passed"] for c in dec_checks + fast_checks),
    }
    report_path = os.path.join(out_dir, EXPORT_REPORT)
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    if not report["passed"]:
        failed = [
            f"{g}.{o}: max abs {r['max_abs_diff']:.3g} > atol {r['atol']} + rtol {r['rtol']}"
            for g, checks in (("encoder", [enc_check]), ("decoder", dec_checks), ("fast_decoder", fast_checks))
            for c in checks
            for o, r in c["outputs"].items()
            if not r["passed"]
        ]
        raise ExportCheckError(f"ONNX disagrees with PyTorch ({'; '.join(failed)}); see {report_path}")
    return ExportResult(enc_path, dec_path, report_path, report, fast_paths)


def _export_fast_decoder(sam: torch.nn.Module, cfg: SamConfig, paths: Dict[str, str], seed: int) -> None:
    """The fast decoder's three graphs (`samrt.export.fast_decoder`) to `paths`."""
    rng = np.random.default_rng(seed)
    prep = ImagePrecompute(sam).eval()
    e, m = cfg.embedding_size, cfg.low_res_size
    emb = torch.from_numpy(rng.standard_normal((1, cfg.prompt_embed_dim, e, e), dtype=np.float32))
    export_graph(prep, image_prep_spec(cfg), {"image_embeddings": emb}, paths["image_prep"])
    with torch.no_grad():
        state = dict(zip(image_prep_spec(cfg).output_names, prep(emb)))
    state["image_tokens"] = emb[0].reshape(emb.shape[1], -1).T.contiguous()
    # 3 prompts of 5 slots so that both axes stay symbolic
    prompts = {"point_coords": torch.from_numpy(rng.uniform(0, cfg.image_size, (3, 5, 2)).astype(np.float32)),
               "point_labels": torch.ones(3, 5), "mask_input": torch.randn(3, 1, m, m)}
    for graph, with_mask in (("fast_decoder", False), ("fast_decoder_mask", True)):
        spec = fast_decoder_spec(cfg, with_mask)
        example = {n: (state[n] if n in state else prompts[n]) for n in spec.input_names}
        export_graph(FastMaskDecoder(sam, with_mask).eval(), spec, example, paths[graph])


def _spec_dict(spec: GraphSpec) -> dict:
    return {
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.outputs],
    }
