"""Render the Triton model repository from the wire declaration (`samrt.wire`) and the I/O spec.

Each config is built as Triton's `ModelConfig` protobuf (shipped by tritonclient), written as
text, and parsed back as a check. The output folder is marked as samrt's (`samrt.artifacts`): a
re-render replaces only the models it rendered there; any other non-empty folder is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from samrt import wire
from samrt.artifacts import prepare_output_dir, record_entries, replace_recorded_entries
from samrt.errors import InputError
from samrt.spec import SamConfig, decoder_spec, encoder_spec
from samrt.variants import BACKENDS

from .disk_cache import engine_fingerprint

__all__ = ["RepoOptions", "render_repository", "model_configs", "parse_config", "decoder_files", "WARMUP_ORIGINAL_SIZE"]

# Native Triton backends of the production variant: (config key, value, model file name), as
# declared with the backends (Triton's OpenVINO backend takes the IR .xml with its .bin).
NATIVE_PLATFORMS = {name: b.triton for name, b in BACKENDS.items()}
DecoderFiles = Union[str, Mapping[str, str]]


def decoder_files(decoder: DecoderFiles) -> Dict[str, str]:
    """The decoder's engine files as `samrt.engines.decoders.decoder_from_paths` takes them: a path
    (the classic graph) -> {"decoder": path}; the fast decoder's {graph: path} as given. Absolute."""
    files = {"decoder": decoder} if isinstance(decoder, str) else dict(decoder)
    return {k: os.path.abspath(v) for k, v in files.items()}

# python-backend model -> (module of samrt.model_repository.models, class) its model.py imports
_MODEL_PY = {
    "sam_image_encoder": ("encode", "ImageEncoderModel"),
    "sam_encode": ("encode", "EncodeModel"),
    "sam_prompt_prep": ("click", "PromptPrepModel"),
    "sam_mask_decoder": ("click", "MaskDecoderModel"),
    "sam_embedding_cache": ("click", "CacheModel"),
    "sam_mask_select": ("click", "MaskSelectModel"),
    "sam_mask_upscale": ("click", "MaskUpscaleModel"),
    "sam_mask_rle": ("click", "MaskRleModel"),
    "sam_segment": ("click", "SegmentModel"),
    "sam_amg": ("amg", "AmgModel"),
}


@dataclass
class RepoOptions:
    """Serving settings that go into the configs."""

    device: str = "cpu"
    # 1 GiB: 102 images of an official model with the fast decoder (4 MiB embedding + 6 MiB of its
    # per-image tensors), 256 with the classic decoder (the embedding only)
    cache_bytes: int = 1024 * 1024 * 1024
    max_prompts: int = 256  # prompts per sam_decode request (and per dynamic batch)
    max_pixels: int = 8192 * 8192  # 67 M: 48-50 MP phone photos; the server holds 3 bytes/pixel while encoding
    # Encoder batch, and so many `sam_encode` instances: that many images decoded and preprocessed
    # at once, whose encoder calls reach the encoder's batcher together.
    encoder_max_batch: int = 4
    # 0: a lone click is decoded at once; under load, requests that queue while the decoder is
    # busy still form batches (Triton's dynamic batcher takes what is waiting).
    decoder_queue_delay_us: int = 0
    dynamic_batching: bool = True  # off: every sam_decode request runs alone (for comparison)
    # None: python-backend models running ONNX Runtime (what runs on CPU here).
    # "onnxruntime" / "tensorrt": the production variant for NVIDIA's Triton container, with
    # native backends for encoder and decoder (sam_image_encoder, sam_prompt_decoder).
    native: Optional[str] = None
    # How long a lone image waits for others to batch with. None: 0 on a CPU, where a batch runs
    # one image at a time anyway (waiting gathers nothing; measured 2.1 ms of queue per encode of
    # the embedded model), 2000 on a GPU, where a batch runs as one. Images that queue while the
    # encoder is busy form batches either way.
    encoder_queue_delay_us: Optional[int] = None
    # "idle": image encoding and automatic masks run under SCHED_IDLE, so clicks come first.
    background_priority: str = "idle"
    # A disk tier under the embedding cache (samrt.model_repository.disk_cache): entries survive a
    # restart. None: memory only. Its files are keyed by the served engines' content.
    cache_dir: Optional[str] = None
    cache_dir_bytes: int = 16 * 1024 ** 3  # 4096 official embeddings of 4 MiB

    def __post_init__(self) -> None:
        for name in ("encoder_max_batch", "max_prompts", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name}: got {getattr(self, name)}, expected at least 1")


def _encoder_queue_delay(opts: "RepoOptions") -> int:
    """`RepoOptions.encoder_queue_delay_us`, resolved for the device (see there)."""
    if opts.encoder_queue_delay_us is not None:
        return int(opts.encoder_queue_delay_us)
    return 0 if opts.device == "cpu" else 2000


def _params(**kw) -> dict:
    return {k: {"string_value": str(v)} for k, v in kw.items()}


def _model(model: wire.WireModel, sizes: Dict[str, int], max_batch_size: int = 0, **extra) -> dict:
    """One model's config: tensors from the wire declaration, the rest from `extra`."""
    return {"max_batch_size": max_batch_size, **model.config_io(sizes), **extra}


# The click path's steps are warmed up when they load (Triton's `model_warmup`): a python-backend
# model's first request cost 60-200 ms here (sam_prompt_prep, sam_mask_upscale on the embedded
# model, later requests 1-10 ms), which the first click after a start paid. Inputs are zeros,
# except `original_size`, read from the model's warmup/ folder (any valid image size).
WARMUP_ORIGINAL_SIZE = (48, 64)
_WARMUP_FILES = {"original_size": np.asarray(WARMUP_ORIGINAL_SIZE, np.int32).tobytes()}


def _warmup(model: wire.WireModel, sizes: Dict[str, int], inputs: Sequence[str]) -> dict:
    """`model_warmup` of one request (batch 1) carrying `inputs`; symbolic dims taken as 1."""
    def one(name: str) -> dict:
        t = model.input(name)
        source = {"input_data_file": name} if name in _WARMUP_FILES else {"zero_data": True}
        return {"data_type": t.config_type, "dims": [d if d > 0 else 1 for d in t.config_dims(sizes)], **source}

    return {"model_warmup": [{"name": "first_request", "batch_size": 1, "inputs": {n: one(n) for n in inputs}}]}


def graph_models(cfg: SamConfig) -> Dict[str, wire.WireModel]:
    """The graph-facing models, derived from the ONNX I/O spec (the prompt axis is Triton's batch)."""
    return {
        "sam_image_encoder": wire.model_from_graph("sam_image_encoder", encoder_spec(cfg), "batch",
                                                   "the image encoder graph"),
        "sam_prompt_decoder": wire.model_from_graph("sam_prompt_decoder", decoder_spec(cfg), "num_prompts",
                                                    "the prompt encoder + mask decoder graph"),
    }


def ensemble_config(steps) -> dict:
    """`ensemble_scheduling` in ModelConfig's JSON form, from `samrt.wire.click_path`."""
    return {"step": [{"model_name": st.model, "model_version": -1, "input_map": dict(st.inputs),
                      "output_map": dict(st.outputs)} for st in steps]}


def model_configs(cfg: SamConfig, encoder_onnx: str, decoder: DecoderFiles, opts: RepoOptions,
                  served_model: Optional[dict] = None) -> Dict[str, dict]:
    """Every model's config as a dict in ModelConfig's JSON form, derived from `samrt.wire` (the
    public models, the click path's ensemble and its steps) and from `samrt.spec` (the
    graph-facing models). `sam_decode` is an ensemble (`wire.click_path`). `served_model`
    (`ExportManifest.served_model`: the model's name, its recommended automatic-mask options)
    goes into sam_decode's parameters, where the SDK's model_info() reads it."""
    sizes = wire.config_sizes(cfg)
    kind = "KIND_GPU" if opts.device == "cuda" else "KIND_CPU"
    python = {"backend": "python"}
    one_cpu = {"instance_group": [{"count": 1, "kind": "KIND_CPU"}]}
    graphs = graph_models(cfg)
    embedding_shape = ",".join(str(sizes[d] if isinstance(d, str) else d)
                               for d in wire.SAM_MASK_DECODER.output("image_embeddings").dims)
    cache_params = _params(cache_bytes=opts.cache_bytes, embedding_shape=embedding_shape, image_size=cfg.image_size)
    files = decoder_files(decoder)
    decoder_params = _params(decoder_engine=json.dumps(files), device=opts.device, image_size=cfg.image_size)
    if opts.cache_dir:
        cache_params.update(_params(cache_dir=os.path.abspath(opts.cache_dir), cache_dir_bytes=opts.cache_dir_bytes,
                                    cache_model_key=engine_fingerprint([encoder_onnx, *files.values()])))
    batching = {"dynamic_batching": {"max_queue_delay_microseconds": opts.decoder_queue_delay_us}}
    batching = batching if opts.dynamic_batching else {}
    cache_model = wire.SAM_EMBEDDING_CACHE.name if opts.native else wire.SAM_MASK_DECODER.name
    p = opts.max_prompts
    configs = {
        "sam_image_encoder": _model(
            graphs["sam_image_encoder"], sizes, opts.encoder_max_batch, **python,
            dynamic_batching={"max_queue_delay_microseconds": _encoder_queue_delay(opts)},
            instance_group=[{"count": 1, "kind": kind}],
            parameters=_params(engine_path=os.path.abspath(encoder_onnx), device=opts.device,
                               background_priority=opts.background_priority)),
        # encoder_max_batch instances, so that many encodes reach the encoder's batcher together; no
        # batch dimension on the wire, so the queue only orders: foreground requests first
        wire.SAM_ENCODE.name: _model(
            wire.SAM_ENCODE, sizes, **python, instance_group=[{"count": opts.encoder_max_batch, "kind": "KIND_CPU"}],
            dynamic_batching={"priority_levels": wire.PRIORITY_LEVELS,
                              "default_priority_level": wire.FOREGROUND_PRIORITY},
            parameters=_params(image_size=cfg.image_size, max_pixels=opts.max_pixels, cache_model=cache_model,
                               background_priority=opts.background_priority, low_res_size=sizes["m"])),
        wire.SAM_DECODE.name: _model(
            wire.SAM_DECODE, sizes, p, platform="ensemble",
            ensemble_scheduling=ensemble_config(wire.click_path(native=bool(opts.native))),
            # for the SDK's model_info()
            parameters=_params(image_size=cfg.image_size, cache_model=cache_model,
                               served_model=json.dumps(served_model or {}))),
        wire.SAM_MASK_UPSCALE.name: _model(wire.SAM_MASK_UPSCALE, sizes, p, **python, **one_cpu,
                                           parameters=_params(image_size=cfg.image_size),
                                           **_warmup(wire.SAM_MASK_UPSCALE, sizes, ["mask_logits", "original_size"])),
        wire.SAM_MASK_RLE.name: _model(wire.SAM_MASK_RLE, sizes, p, **python, **one_cpu,
                                       parameters=_params(image_size=cfg.image_size),
                                       **_warmup(wire.SAM_MASK_RLE, sizes, ["mask_logits", "original_size"])),
        wire.SAM_AMG.name: _model(
            wire.SAM_AMG, sizes, **python, instance_group=[{"count": 1, "kind": kind}],
            parameters={**decoder_params, **_params(max_pixels=opts.max_pixels, cache_model=cache_model,
                                                    background_priority=opts.background_priority)}),
        wire.SAM_SEGMENT.name: _model(
            wire.SAM_SEGMENT, sizes, **python, **one_cpu,
            parameters=_params(image_size=cfg.image_size, max_pixels=opts.max_pixels, cache_model=cache_model,
                               low_res_size=sizes["m"])),
    }
    if not opts.native:
        # one instance: one process owns the cache, and the engine reads embeddings in place
        configs[wire.SAM_MASK_DECODER.name] = _model(
            wire.SAM_MASK_DECODER, sizes, p, **python, **batching, instance_group=[{"count": 1, "kind": kind}],
            parameters={**decoder_params, **cache_params}, **_warmup(wire.SAM_MASK_DECODER, sizes, ["image_id"]))
        return configs
    if opts.native not in NATIVE_PLATFORMS:
        raise ValueError(f"native: got {opts.native!r}, expected one of {sorted(NATIVE_PLATFORMS)}")
    if set(files) != {"decoder"}:
        raise ValueError(f"native {opts.native}: got decoder files {sorted(files)}, expected the classic decoder "
                         "graph (a native backend runs it; the fast decoder runs in the python-backend variant)")
    configs[wire.SAM_PROMPT_PREP.name] = _model(wire.SAM_PROMPT_PREP, sizes, p, **python, **one_cpu,
                                                parameters=_params(low_res_size=sizes["m"]),
                                                **_warmup(wire.SAM_PROMPT_PREP, sizes, ["point_coords", "point_labels"]))
    key, value, _ = NATIVE_PLATFORMS[opts.native]
    platform = {key: value}
    configs["sam_image_encoder"] = _model(
        graphs["sam_image_encoder"], sizes, opts.encoder_max_batch, **platform,
        dynamic_batching={"max_queue_delay_microseconds": _encoder_queue_delay(opts)},
        instance_group=[{"count": 1, "kind": kind}])
    decoder = _model(graphs["sam_prompt_decoder"], sizes, p, **platform, **batching,
                     instance_group=[{"count": 1, "kind": kind}])
    for t in decoder["input"]:
        if t["dims"] == []:  # the graph's [P] flag (has_mask_input) is Triton's batch dim alone
            t["dims"], t["reshape"] = [1], {"shape": []}
    configs["sam_prompt_decoder"] = decoder
    configs[wire.SAM_EMBEDDING_CACHE.name] = _model(wire.SAM_EMBEDDING_CACHE, sizes, p, **python, **one_cpu,
                                                    parameters=cache_params)
    configs[wire.SAM_MASK_SELECT.name] = _model(wire.SAM_MASK_SELECT, sizes, p, **python, **one_cpu)
    configs[wire.SAM_AMG.name]["parameters"].update(_params(decoder_model="sam_prompt_decoder",
                                                            low_res_size=sizes["m"]))
    return configs


def parse_config(text: str):
    """Parse config.pbtxt text into Triton's ModelConfig protobuf (raises on any unknown field)."""
    from google.protobuf import text_format  # protobuf: with tritonclient[grpc]
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _to_pbtxt(name: str, config: dict) -> str:
    from google.protobuf import json_format, text_format  # protobuf: with tritonclient[grpc]
    from tritonclient.grpc import model_config_pb2

    msg = json_format.ParseDict({"name": name, **config}, model_config_pb2.ModelConfig())
    return text_format.MessageToString(msg)


def _summary(report: dict) -> str:
    return json.dumps({"engine": report["engine"], "graph": report.get("graph"), "backend": report.get("backend"),
                       "precision": report["precision"], "accuracy": report["accuracy"], "gate": report["gate"]})


def render_repository(
    cfg: SamConfig, encoder_onnx: str, decoder: DecoderFiles, out_dir: str, opts: Optional[RepoOptions] = None,
    engine_report: Optional[dict] = None, decoder_report: Optional[dict] = None, served_model: Optional[dict] = None,
) -> str:
    """Write `out_dir/<model>/config.pbtxt` and `out_dir/<model>/1/model.py` for every model.

    `decoder`: the classic decoder graph's file, or the fast decoder's {graph: file}
    (`decoder_files`). `engine_report` / `decoder_report`: the served engines' build reports (they
    travel into the configs and beside them); None for the exported graphs themselves.
    `served_model`: see `model_configs`."""
    opts = opts or RepoOptions()
    for path in [encoder_onnx, *decoder_files(decoder).values()]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such engine or ONNX file (run `samrt export` first)")
    if opts.cache_dir:  # refused now, with the folder named, rather than when the model loads
        prepare_output_dir(opts.cache_dir, "embedding-cache")
    replace_recorded_entries(out_dir, "build-repo")
    configs = model_configs(cfg, encoder_onnx, decoder, opts, served_model)
    record_entries(out_dir, list(configs))
    reports = {"sam_image_encoder": engine_report,
               ("sam_prompt_decoder" if opts.native else wire.SAM_MASK_DECODER.name): decoder_report}
    for name, report in reports.items():  # served results carry the engine's accuracy report
        if report is not None:
            configs[name].setdefault("parameters", {})["engine_report"] = {"string_value": _summary(report)}
    for name, config in configs.items():
        os.makedirs(os.path.join(out_dir, name, "1"))
        text = _to_pbtxt(name, config)
        parse_config(text)
        with open(os.path.join(out_dir, name, "config.pbtxt"), "w") as f:
            f.write(text)
        for warmup in config.get("model_warmup", []):  # the warm-up's data files, in <model>/warmup/
            for spec in warmup["inputs"].values():
                if "input_data_file" in spec:
                    os.makedirs(os.path.join(out_dir, name, "warmup"), exist_ok=True)
                    with open(os.path.join(out_dir, name, "warmup", spec["input_data_file"]), "wb") as f:
                        f.write(_WARMUP_FILES[spec["input_data_file"]])
        if config.get("platform") == "ensemble":  # a version folder, empty
            continue
        if "platform" in config or config.get("backend") == "openvino":  # native: the model file goes into "1/"
            source = encoder_onnx if name == "sam_image_encoder" else decoder_files(decoder)["decoder"]
            target = os.path.join(out_dir, name, "1", NATIVE_PLATFORMS[opts.native][2])
            shutil.copy(source, target)
            if source.endswith(".xml"):  # an IR's weights travel beside it
                shutil.copy(source[:-4] + ".bin", target[:-4] + ".bin")
            continue
        module, cls = _MODEL_PY[name]
        with open(os.path.join(out_dir, name, "1", "model.py"), "w") as f:
            f.write(f'"""Rendered by samrt; the logic lives in samrt.model_repository."""\n'
                    f"from samrt.model_repository.models.{module} import {cls} as TritonPythonModel  # noqa: F401\n")
    for name, report in reports.items():
        if report is not None:
            with open(os.path.join(out_dir, name, "engine_report.json"), "w") as f:
                json.dump(report, f, indent=2)
    return out_dir
