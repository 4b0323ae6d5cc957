"""Orchestration, in one plain place: export if needed -> engine -> Triton repository -> server.

The CLI (`samrt serve`, `samrt demo`), the benchmarks and the apps call these functions; each
step is a library function of its own floor (`samrt.export`, `samrt.engines`,
`samrt.model_repository`). torch (through `samrt.export`) is imported only when an export or a
PyTorch evaluation has to run, so serving an existing export needs no torch.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, List, Optional, Tuple

from samrt.artifacts import ArtifactError, ExportManifest, check_output_dir, default_checkpoint
from samrt.engines import OnnxSamPredictor
from samrt.engines.build import EngineAccuracyError, build_variant
from samrt.engines.openvino_engine import bf16_support, int8_dot_support
from samrt.errors import SamrtError
from samrt.memory import (MemoryEstimate, available_memory, check_fits, decoder_params, encoder_params,
                          estimate_build_memory, estimate_export_memory, estimate_server_memory,
                          give_back_freed_memory)
from samrt.model_repository.launch import repository_from_plan, serve_forever
from samrt.model_repository.render import RepoOptions
from samrt.model_repository.server import TritonServer, check_ports_free
from samrt.scenes import eval_scenes, evaluate
from samrt.spec import get_config, resolve_model_type
from samrt.variants import (BACKENDS, DECODERS, GRAPHS, NATIVE_SERVING, PRECISIONS, ROLES, SERVING_BACKENDS, EngineReport,
                            ServedEngine, ServingPlan, Variant, auto_candidates)

__all__ = ["resolve_source", "export_model", "ensure_export", "plan_engines", "build_repository",
           "repository_for_export", "server_memory", "serve", "evaluate_model", "NO_MEMORY_CHECK"]

# What a refused start tells the user to pass to go on anyway (the CLI's flag of `memory_check`).
NO_MEMORY_CHECK = "pass --no-memory-check to start anyway"


def resolve_source(checkpoint: Optional[str], model_type: str = "auto", random_init: bool = False):
    """(checkpoint or None, model type) of what to serve: the given checkpoint, random weights of
    `model_type`, or the embedded default model. An alias ("default") comes back resolved ("vit_h")."""
    model_type = resolve_model_type(model_type)
    if random_init:
        if model_type in ("auto", None):
            raise SamrtError("--random-init needs --model-type (vit_b, vit_l, vit_h or tiny)")
        return None, model_type
    if checkpoint is None:
        checkpoint = default_checkpoint()
        if checkpoint is None:
            raise SamrtError("no --checkpoint given and no embedded default model in this install; "
                             "pass --checkpoint FILE or --random-init --model-type vit_b")
    return checkpoint, model_type


def export_model(out_dir: str, model_type: str = "auto", checkpoint: Optional[str] = None, random_init: bool = False,
                 seed: int = 0, name: Optional[str] = None, memory_check: bool = True):
    """`samrt export`: a checkpoint (or seeded random weights, with a loud warning) -> checked ONNX
    graphs in `out_dir`; returns `samrt.export.ExportResult`. `memory_check`: as `ensure_export`."""
    from samrt.export import export_sam, load_sam, random_sam  # torch: the export extra
    from samrt.export.checkpoint import RANDOM_INIT_WARNING

    if random_init:
        if model_type in ("auto", None):
            raise SamrtError("--random-init needs --model-type (vit_b, vit_l, vit_h or tiny), got 'auto'")
        cfg = get_config(model_type)
        if memory_check:
            _check_memory(estimate_export_memory(cfg))
        print(f"WARNING: {RANDOM_INIT_WARNING}", file=sys.stderr)
        sam = random_sam(cfg, seed=seed)
    else:
        sam, cfg = load_sam(checkpoint, model_type)
        print(f"loaded {checkpoint}: {cfg.model_type}", file=sys.stderr)
        if memory_check:  # the loaded model is part of the estimate and already held
            _check_memory(estimate_export_memory(cfg), already_held=4 * (encoder_params(cfg) + decoder_params(cfg)))
    return export_sam(sam, cfg, out_dir, name=name, checkpoint=checkpoint, random_init=random_init, seed=seed,
                      progress=_say)


def ensure_export(out_dir: str, model_type: str = "auto", checkpoint: Optional[str] = None,
                  seed: int = 0, memory_check: bool = True) -> ExportManifest:
    """Export (encoder, decoder and fast decoder ONNX, checked against PyTorch) unless `out_dir`
    already holds a passing export of the same source with every graph; `checkpoint` None means
    seeded random weights of `model_type`. `memory_check`: an export whose estimated peak
    (`samrt.memory.estimate_export_memory`) exceeds the memory available now is refused with
    InsufficientMemoryError before it starts (as soon as the model type is known)."""
    source = os.path.abspath(checkpoint) if checkpoint else None
    try:
        manifest = ExportManifest.read(out_dir)
        same_type = model_type in ("auto", None) or manifest.config.model_type == resolve_model_type(model_type)
        if manifest.checkpoint == source and same_type and manifest.fast_decoder_paths:
            _say(f"reusing the export in {out_dir}")
            return manifest
    except ArtifactError:
        pass
    known = resolve_model_type(model_type) not in ("auto", None)
    if memory_check and known:
        _check_memory(estimate_export_memory(model_type))
    _say(f"exporting {checkpoint or f'random-init {model_type}'} to ONNX in {out_dir} (first start only; "
         "each graph is checked against PyTorch; vit_b takes about two minutes on a 2-core CPU, vit_h about five)")
    t0 = time.perf_counter()
    from samrt.export import export_sam, load_sam, random_sam  # torch: only when an export has to run

    if checkpoint:
        sam, cfg = load_sam(checkpoint, model_type)
        if memory_check and not known:  # the loaded model is part of the estimate and already held
            _check_memory(estimate_export_memory(cfg), already_held=4 * (encoder_params(cfg) + decoder_params(cfg)))
    else:
        cfg = get_config(model_type)
        sam = random_sam(cfg, seed=seed)
    export_sam(sam, cfg, out_dir, checkpoint=checkpoint, random_init=checkpoint is None, seed=seed, progress=_say)
    _say(f"  exported in {time.perf_counter() - t0:.0f} s")
    return ExportManifest.read(out_dir)


def _check_memory(estimate: MemoryEstimate, already_held: int = 0) -> None:
    """Say the estimate and what is available; raise InsufficientMemoryError when it does not fit
    (`already_held`: bytes of it this process holds already)."""
    available = available_memory()
    where = f"; {available / 2**30:.1f} GiB available" if available is not None else ""
    _say(f"memory: {estimate.describe()}{where}")
    check_fits(estimate, available, override=NO_MEMORY_CHECK, already_held=already_held)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _openvino_bf16_native() -> Optional[bool]:
    """Whether OpenVINO runs bf16 natively here; None when openvino is not installed."""
    try:
        return bf16_support()["mode"] == "native"
    except (ImportError, SamrtError):  # OpenVINOUnavailable: the openvino extra is not installed
        return None


def _openvino_int8_dot() -> bool:
    """Whether OpenVINO runs int8 products on this CPU's int8 dot-product units (int8-dynamic
    first); False when openvino is not installed."""
    try:
        return _openvino_bf16_native() is not None and int8_dot_support()
    except (ImportError, SamrtError):
        return False


def _candidates(role: str, backend: str, precision: str, decoder: str, device: str) -> Tuple[List[Variant], bool]:
    """(the variants to try for `role` in order, whether speed decides): see `plan_engines`."""
    graph = "encoder" if role == "encoder" else DECODERS[decoder]
    exact = Variant(graph, "onnxruntime", "fp32")
    native_bf16 = _openvino_bf16_native()
    if backend in NATIVE_SERVING:  # the production variant: the classic decoder in a native backend
        b = NATIVE_SERVING[backend]
        graph = "encoder" if role == "encoder" else "decoder"
        if role == "decoder":
            p = "fp16" if b == "tensorrt" else ("fp32" if precision in ("auto", "int8") else precision)
        else:
            p = ("fp16" if b == "tensorrt" else "fp32") if precision == "auto" else precision
        return [Variant(graph, b, p)], False
    if precision == "auto":
        if backend == "auto":
            if device == "cuda":
                return [Variant(graph, "tensorrt", "fp16"), exact], True
            return (auto_candidates(role, device, bool(native_bf16), _openvino_int8_dot())
                    if native_bf16 is not None else [exact]), True
        if backend == "openvino":
            return [v for v in auto_candidates(role, device, bool(native_bf16), _openvino_int8_dot())
                    if v.backend == "openvino"], True
        return [Variant(graph, backend, "fp32")], False
    if role == "decoder" and precision not in GRAPHS[graph].precisions:  # int8, int8-dynamic: the encoder only
        return _candidates(role, backend, "auto", decoder, device)
    if backend == "auto":
        backend = next(b for b in (["openvino", "onnxruntime"] if device == "cpu" else ["tensorrt", "onnxruntime"])
                       if precision in BACKENDS[b].precisions and (b != "openvino" or native_bf16 is not None))
    return [Variant(graph, backend, precision)], False


def plan_engines(manifest: ExportManifest, backend: str = "auto", precision: str = "auto", decoder: str = "fast",
                 device: str = "cpu", say: Callable[[str], None] = _say, memory_check: bool = False) -> ServingPlan:
    """The one build-and-choose step of `samrt serve` and `samrt build-repo`: which engine of each
    graph to serve, built into the export folder when missing (once; later starts reuse it).

    `backend` "auto" and `precision` "auto" (the defaults): per graph, the first of
    `samrt.variants.auto_candidates` that builds, passes its accuracy gate and is faster than the
    exact path in its own build's timing (on a CPU: for the encoder OpenVINO int8-dynamic where the
    CPU has int8 dot-product units, then OpenVINO bf16 where bf16 is native, then OpenVINO fp32,
    then the exact path, ONNX Runtime fp32 on the exported graphs; the decoder in float). A backend or a
    precision given narrows that list; a precision given must pass its gate (ArtifactError
    otherwise). `decoder` "fast" (default) or "classic" (`samrt.variants.DECODERS`); the
    production variants (`NATIVE_SERVING`) serve the classic decoder. `say` gets progress lines.
    `memory_check`: a build whose estimate (`samrt.memory.estimate_build_memory`) exceeds the
    memory available now is refused (InsufficientMemoryError) before it starts.
    """
    if backend not in SERVING_BACKENDS:
        raise SamrtError(f"--backend: got {backend!r}, expected one of {SERVING_BACKENDS}")
    if precision not in ("auto",) + PRECISIONS:
        raise SamrtError(f"--precision: got {precision!r}, expected one of {('auto',) + PRECISIONS}")
    if decoder not in DECODERS:
        raise SamrtError(f"--decoder: got {decoder!r}, expected one of {sorted(DECODERS)}")
    chosen = {}
    for role in ROLES:
        candidates, by_speed = _candidates(role, backend, precision, decoder, device)
        if role == "encoder" and by_speed:
            candidates = _built_int8_first(manifest, candidates, say)
        chosen[role] = _choose(manifest, role, candidates, by_speed, device, say, memory_check)
    return ServingPlan(chosen["encoder"], chosen["decoder"], NATIVE_SERVING.get(backend))


INT8_ENCODER = Variant("encoder", "openvino", "int8")


def _built_int8_first(manifest: ExportManifest, candidates: List[Variant], say: Callable[[str], None]) -> List[Variant]:
    """The encoder's candidates with OpenVINO INT8 put first when it was built on request in this
    export folder (`samrt serve --precision int8`, or `samrt build-engine` into it), passed its gate
    and was faster against the exact path than every other built candidate that passed (each
    speedup is timed against ONNX Runtime fp32 in its own build: a VM's speed drifts between builds,
    the ratio less). INT8 is never built here: its calibration takes long (vit_b: ~12 minutes on 2
    cores), so when it is not built a line says how to build it."""
    if not any(v.backend == INT8_ENCODER.backend for v in candidates):
        return candidates
    report = EngineReport.find(manifest, INT8_ENCODER)
    if report is None:
        dynamic = any(v.precision == "int8-dynamic" for v in candidates)
        measured = ("on vit_b on a 2-core AMD EPYC no faster than int8-dynamic, which needs no calibration: 2231 "
                    "against 2184 ms per new image through the server" if dynamic else
                    "on vit_b on a 2-core AMD EPYC 3.07x ONNX Runtime fp32 per new image against bf16's 2.26x")
        say(f"not built: {INT8_ENCODER} (NNCF calibration; vit_b: ~12 minutes and ~15 GiB on 2 cores; {measured}). "
            f"`--precision int8` on this command builds it once into {manifest.export_dir}; later runs with no flags "
            "serve it when it passed its gate and its speedup over onnxruntime fp32 beats the other built engines' "
            "(each timed in its own build)")
        return candidates
    if not report.passed:
        say(f"not serving {INT8_ENCODER} built in {manifest.export_dir}: its gate failed ({report.describe()})")
        return candidates
    rivals = [r for r in (EngineReport.find(manifest, v) for v in candidates) if r is not None and r.passed]
    best = max(rivals, key=lambda r: r.speedup, default=None)
    if best is not None and best.speedup >= report.speedup:
        say(f"not serving {INT8_ENCODER} built in {manifest.export_dir}: {report.speedup:.2f}x against "
            f"{best.variant}'s {best.speedup:.2f}x, each timed against onnxruntime fp32 in its own build")
        return candidates
    return [INT8_ENCODER] + candidates


def _choose(manifest: ExportManifest, role: str, candidates: List[Variant], by_speed: bool, device: str,
            say: Callable[[str], None], memory_check: bool = False) -> ServedEngine:
    refused = []
    for variant in candidates:
        variant.check(device)
        if variant.is_export:
            why = f"{variant} (the exported graphs: the exact path)" + (f"; not used: {'; '.join(refused)}" if refused else "")
            return ServedEngine(variant, variant.paths(manifest), None, why)
        report = EngineReport.find(manifest, variant)
        if report is None:
            if memory_check and device == "cpu":
                give_back_freed_memory()
                _check_memory(estimate_build_memory(manifest.config, variant.backend, variant.precision))
            took = ("an INT8 encoder of vit_b takes about 12 minutes" if variant.precision == "int8" else
                    "an encoder of vit_b takes about 2 minutes (mostly its accuracy gate), of vit_h about 15; "
                    "a decoder 1-3 minutes")
            say(f"building {variant} for the {role}: first start only, cached in {manifest.export_dir} "
                f"(on a 2-core CPU {took})")
            t0 = time.perf_counter()
            try:
                build_variant(manifest, variant, device=device, progress=say)
            except EngineAccuracyError as e:
                say(f"  {e}")
            report = EngineReport.read(variant.report_path(manifest))
            say(f"  built {variant} in {time.perf_counter() - t0:.0f} s")
        else:
            _check_built_files(variant.paths(manifest), report)
            say(f"reusing {variant} built in {manifest.export_dir} ({report.describe()})")
        if not report.passed:
            if not by_speed:
                raise ArtifactError(f"{variant.path(manifest)}: its accuracy gate failed ({report.describe()}); "
                                    "not serving it")
            refused.append(f"{variant}: gate failed")
            continue
        if by_speed and report.speedup <= 1.0:
            refused.append(f"{variant}: not faster than onnxruntime fp32 here ({report.speedup:.2f}x)")
            continue
        why = report.describe() + (f"; not used: {'; '.join(refused)}" if refused else "")
        return ServedEngine(variant, variant.paths(manifest), report, why)
    raise ArtifactError(f"no {role} engine to serve: {'; '.join(refused)}")


def _check_built_files(paths: dict, report: EngineReport) -> None:
    """Refuse (ArtifactError) a built engine whose files' sizes are not those its report recorded
    (each engine file and, for an OpenVINO IR, its weights file): truncated or replaced after the
    build, it would fail deep inside the server. Sizes only: hashing vit_h's weights on every start
    would cost seconds."""
    r = report.report
    files, details = r.get("files") or {}, r.get("details") or {}
    for graph, path in paths.items():
        want = {path: (files.get(graph) or {}).get("bytes")}
        if path.endswith(".xml"):
            d = details if len(paths) == 1 else (details.get("files") or {}).get(graph) or {}
            want[path[: -len(".xml")] + ".bin"] = d.get("weights_bytes")
        for f, size in want.items():
            got = os.path.getsize(f) if os.path.isfile(f) else None
            if size is not None and got != size:
                raise ArtifactError(
                    f"{f}: got {'no file' if got is None else f'{got} bytes'}, expected {size} bytes as its report "
                    f"{report.path} recorded: the engine was changed or damaged after it was built; delete its files "
                    "and report to have the next start rebuild it (or rebuild it with `samrt build-engine`)")


def build_repository(build_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto", opts=None,
                     random_init: bool = False, precision: str = "auto", backend: str = "auto",
                     decoder: str = "fast", memory_check: bool = True) -> str:
    """Export (cached in `build_dir/export`), choose and build the engines (`plan_engines`), render
    `build_dir/repo`; returns the repository path. What starts a server on it calls this first
    (`samrt serve`, `samrt demo`, `samrt annotate`): with `memory_check`, an export and then a
    server whose estimated memory (`samrt.memory`) exceeds what this machine has available now
    are refused with InsufficientMemoryError (the estimate's parts) before they start."""
    checkpoint, model_type = resolve_source(checkpoint, model_type, random_init)
    manifest = ensure_export(os.path.join(build_dir, "export"), model_type, checkpoint, memory_check=memory_check)
    _say(f"model: {manifest.describe()}")
    repo, estimate = _repository(manifest, os.path.join(build_dir, "repo"), opts, backend, precision, decoder,
                                 memory_check)
    if estimate is not None and memory_check:
        give_back_freed_memory()  # what the builds freed leaves this process before it is measured
        _check_memory(estimate)
    return repo


def repository_for_export(export_dir: str, out_dir: str, opts=None, backend: str = "auto", precision: str = "auto",
                          decoder: str = "fast") -> str:
    """`samrt build-repo`: the repository of an export folder, with the engines `plan_engines`
    chooses (built into the export folder when missing). Says the server's memory estimate."""
    repo, estimate = _repository(ExportManifest.read(export_dir), out_dir, opts, backend, precision, decoder)
    if estimate is not None:
        available = available_memory()
        where = f"; {available / 2**30:.1f} GiB available here" if available is not None else ""
        _say(f"memory of a server on it: {estimate.describe()}{where}")
    return repo


def _repository(manifest: ExportManifest, out_dir: str, opts, backend: str, precision: str, decoder: str,
                memory_check: bool = False) -> Tuple[str, Optional[MemoryEstimate]]:
    check_output_dir(out_dir, "build-repo")  # a folder it may not write is refused before any engine is built
    opts = opts or RepoOptions()
    device = opts.device
    if memory_check and device == "cpu" and backend not in NATIVE_SERVING:
        # before any engine is built: the least a server on any of the candidates would take
        candidates = _candidates("encoder", backend or "auto", precision or "auto", decoder, device)[0]
        least = min((_server_estimate(manifest, v, opts) for v in candidates), key=lambda e: e.total)
        check_fits(least, available_memory(), override=NO_MEMORY_CHECK)
    plan = plan_engines(manifest, backend or "auto", precision or "auto", decoder, device, memory_check=memory_check)
    _say(plan.describe())
    return repository_from_plan(manifest, plan, out_dir, opts), server_memory(manifest, plan, opts)


def server_memory(manifest: ExportManifest, plan: ServingPlan, opts=None) -> Optional[MemoryEstimate]:
    """The memory estimate (`samrt.memory.estimate_server_memory`) of a server on `plan` with
    `opts` (RepoOptions; default settings when None); None where this machine does not run it (a
    production variant for NVIDIA's container, or models on a GPU: its memory is not estimated)."""
    opts = opts or RepoOptions()
    if plan.native or opts.device != "cpu":
        return None
    return _server_estimate(manifest, plan.encoder.variant, opts)


def _server_estimate(manifest: ExportManifest, encoder: Variant, opts) -> MemoryEstimate:
    return estimate_server_memory(manifest.config, encoder.backend, encoder.precision, opts.encoder_max_batch,
                                  opts.cache_bytes, device=opts.device)


def serve(build_dir: str, checkpoint: Optional[str] = None, model_type: str = "auto", opts=None,
          random_init: bool = False, precision: str = "auto", host: str = "127.0.0.1", http_port: int = 8000,
          grpc_port: int = 8001, metrics_port: int = 8002, backend: str = "auto", decoder: str = "fast",
          memory_check: bool = True) -> None:
    """`samrt serve`: build the repository (`build_repository`, memory checked), run tritonserver
    until Ctrl-C or SIGTERM. Ports another process listens on are refused first, before any
    export or build (TritonLaunchError)."""
    check_ports_free(host, http_port, grpc_port, metrics_port)
    repo = build_repository(build_dir, checkpoint, model_type, opts, random_init, precision, backend, decoder,
                            memory_check)
    gpu = bool(opts is not None and getattr(opts, "device", "cpu") == "cuda")
    serve_forever(TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                               gpu=gpu))


def evaluate_model(checkpoint: Optional[str] = None, onnx_dir: Optional[str] = None, scenes: int = 60,
                   device: str = "cpu") -> dict:
    """`samrt eval`: the paper's figures on held-out scenes, for an export folder (ONNX Runtime)
    or a checkpoint (PyTorch; default: the embedded model)."""
    if onnx_dir:
        manifest = ExportManifest.read(onnx_dir)
        predictor = OnnxSamPredictor.from_onnx(manifest.encoder_path, manifest.decoder_path)
        source = onnx_dir
    else:
        from segment_anything import SamPredictor  # torch: the export extra

        from samrt.export import load_sam  # torch

        source = checkpoint or default_checkpoint()
        if source is None:
            raise SamrtError("no --checkpoint and no embedded model in this install")
        predictor = SamPredictor(load_sam(source)[0].to(device))
    return {"source": source, **evaluate(predictor, eval_scenes(scenes), progress=True)}
