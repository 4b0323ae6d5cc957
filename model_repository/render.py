"""Render the Triton model repository from the I/O spec.

Each config is built as Triton's `ModelConfig` protobuf (shipped by tritonclient), written as
text, and parsed back as a check. The wire API (model names and tensors) is declared here
once; the SDK and the README follow it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional

from samrt.spec import SamConfig, decoder_spec, encoder_spec

__all__ = ["RepoOptions", "render_repository", "model_configs", "parse_config"]

_TYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
          "bytes": "TYPE_STRING"}

NATIVE_PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}

_MODEL_PY = {
    "sam_embedding_cache": "CacheModel",
    "sam_image_encoder": "ImageEncoderModel",
    "sam_encode": "EncodeModel",
    "sam_decode": "DecodeModel",
    "sam_segment": "SegmentModel",
    "sam_amg": "AmgModel",
}


@dataclass
class RepoOptions:
    """Serving settings that go into the configs."""

    device: str = "cpu"
    cache_bytes: int = 512 * 1024 * 1024  # 128 official embeddings of 4 MiB
    max_prompts: int = 256  # prompts per sam_decode request (and per dynamic batch)
    max_pixels: int = 8192 * 8192  # 67 M: 48-50 MP phone photos; the server holds 3 bytes/pixel while encoding
    encoder_max_batch: int = 4
    decoder_queue_delay_us: int = 5000
    dynamic_batching: bool = True  # off: every sam_decode request runs alone (for comparison)
    # None: python-backend models running ONNX Runtime (what runs on CPU here).
    # "onnxruntime" / "tensorrt": the production variant for NVIDIA's Triton container, with
    # native backends for encoder and decoder (sam_image_encoder, sam_prompt_decoder).
    native: Optional[str] = None
    encoder_queue_delay_us: int = 2000


def _io(name: str, dtype: str, dims: List[int], optional: bool = False) -> dict:
    d = {"name": name, "data_type": _TYPES[dtype], "dims": dims}
    if optional:
        d["optional"] = True
    return d


def model_configs(cfg: SamConfig, encoder_onnx: str, decoder_onnx: str, opts: RepoOptions) -> Dict[str, dict]:
    """The six models' configs as dicts in ModelConfig's JSON form."""
    enc, dec = encoder_spec(cfg), decoder_spec(cfg)
    emb = [d for d in enc.tensor("image_embeddings").shape[1:]]
    img = [d for d in enc.tensor("image").shape[1:]]
    m = cfg.low_res_size
    kind = "KIND_GPU" if opts.device == "cuda" else "KIND_CPU"
    prompts_in = [
        _io("point_coords", "float32", [-1, 2]),
        _io("point_labels", "int32", [-1]),
        _io("mask_input", "float32", [1, m, m], optional=True),
        _io("multimask_output", "bool", [1], optional=True),
    ]
    masks_out = [
        _io("masks", "bool", [-1, -1, -1]),
        _io("iou_predictions", "float32", [-1]),
        _io("low_res_masks", "float32", [-1, m, m]),
        _io("masks_rle", "bytes", [-1]),
    ]
    common = {"backend": "python"}

    def params(**kw) -> dict:
        return {k: {"string_value": str(v)} for k, v in kw.items()}

    configs = {
        "sam_embedding_cache": {
            **common, "max_batch_size": 0,
            "input": [_io("image_id", "bytes", [1]), _io("image_embeddings", "float32", emb, optional=True),
                      _io("original_size", "int32", [2], optional=True)],
            "output": [_io("found", "bool", [1]), _io("image_embeddings", "float32", emb),
                       _io("original_size", "int32", [2])],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],  # one owner: one cache
            "parameters": params(cache_bytes=opts.cache_bytes),
        },
        "sam_image_encoder": {
            **common, "max_batch_size": opts.encoder_max_batch,
            "input": [_io("image", "float32", img)],
            "output": [_io("image_embeddings", "float32", emb)],
            "dynamic_batching": {"max_queue_delay_microseconds": opts.encoder_queue_delay_us},
            "instance_group": [{"count": 1, "kind": kind}],
            "parameters": params(onnx_path=os.path.abspath(encoder_onnx), device=opts.device),
        },
        "sam_encode": {
            **common, "max_batch_size": 0,
            "input": [_io("image", "uint8", [-1, -1, -1], optional=True), _io("image_bytes", "bytes", [1], optional=True)],
            "output": [_io("image_id", "bytes", [1]), _io("original_size", "int32", [2])],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
            "parameters": params(image_size=cfg.image_size, max_pixels=opts.max_pixels),
        },
        "sam_decode": {
            **common, "max_batch_size": opts.max_prompts,
            "input": [_io("image_id", "bytes", [1])] + prompts_in,
            "output": masks_out,
            **({"dynamic_batching": {"max_queue_delay_microseconds": opts.decoder_queue_delay_us}}
               if opts.dynamic_batching else {}),
            "instance_group": [{"count": 1, "kind": kind}],
            "parameters": params(onnx_path=os.path.abspath(decoder_onnx), device=opts.device,
                                 image_size=cfg.image_size, spec=json.dumps(cfg.to_dict())),
        },
        "sam_amg": {
            **common, "max_batch_size": 0,
            "input": [_io("image", "uint8", [-1, -1, -1], optional=True), _io("image_bytes", "bytes", [1], optional=True),
                      _io("options", "bytes", [1], optional=True)],
            "output": [_io("records", "bytes", [1])],
            "instance_group": [{"count": 1, "kind": kind}],
            "parameters": params(onnx_path=os.path.abspath(decoder_onnx), device=opts.device,
                                 image_size=cfg.image_size, max_pixels=opts.max_pixels),
        },
        "sam_segment": {
            **common, "max_batch_size": 0,
            "input": [_io("image", "uint8", [-1, -1, -1], optional=True), _io("image_bytes", "bytes", [1], optional=True)]
            + prompts_in,
            "output": masks_out,
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        },
    }
    if opts.native:
        if opts.native not in NATIVE_PLATFORMS:
            raise ValueError(f"native: got {opts.native!r}, expected one of {sorted(NATIVE_PLATFORMS)}")
        platform = NATIVE_PLATFORMS[opts.native][0]
        configs["sam_image_encoder"] = {
            "platform": platform, "max_batch_size": opts.encoder_max_batch,
            "input": [_io("image", "float32", img)], "output": [_io("image_embeddings", "float32", emb)],
            "dynamic_batching": {"max_queue_delay_microseconds": opts.encoder_queue_delay_us},
            "instance_group": [{"count": 1, "kind": kind}],
        }
        has_mask = _io("has_mask_input", "float32", [1])
        has_mask["reshape"] = {"shape": []}  # the graph's [P] is Triton's batch dim alone
        configs["sam_prompt_decoder"] = {
            "platform": platform, "max_batch_size": opts.max_prompts,
            "input": [_io("image_embeddings", "float32", emb), _io("point_coords", "float32", [-1, 2]),
                      _io("point_labels", "float32", [-1]), _io("mask_input", "float32", [1, m, m]), has_mask],
            "output": [_io("low_res_masks", "float32", [cfg.num_mask_tokens, m, m]),
                       _io("iou_predictions", "float32", [cfg.num_mask_tokens])],
            "instance_group": [{"count": 1, "kind": kind}],
        }
        for name in ("sam_decode", "sam_amg"):
            configs[name]["parameters"]["decoder_model"] = {"string_value": "sam_prompt_decoder"}
            configs[name]["parameters"]["low_res_size"] = {"string_value": str(m)}
    return configs


def parse_config(text: str):
    """Parse config.pbtxt text into Triton's ModelConfig protobuf (raises on any unknown field)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _to_pbtxt(name: str, config: dict) -> str:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    msg = json_format.ParseDict({"name": name, **config}, model_config_pb2.ModelConfig())
    return text_format.MessageToString(msg)


def render_repository(
    cfg: SamConfig, encoder_onnx: str, decoder_onnx: str, out_dir: str, opts: Optional[RepoOptions] = None,
    engine_report: Optional[dict] = None,
) -> str:
    """Write `out_dir/<model>/config.pbtxt` and `out_dir/<model>/1/model.py` for every model."""
    opts = opts or RepoOptions()
    for path in (encoder_onnx, decoder_onnx):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ONNX file (run `samrt export` first)")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    configs = model_configs(cfg, encoder_onnx, decoder_onnx, opts)
    if engine_report is not None:  # served results carry the engine's accuracy report
        summary = {"engine": engine_report["engine"], "precision": engine_report["precision"],
                   "accuracy": engine_report["accuracy"], "gate": engine_report["gate"]}
        configs["sam_image_encoder"]["parameters"]["engine_report"] = {"string_value": json.dumps(summary)}
    for name, config in configs.items():
        os.makedirs(os.path.join(out_dir, name, "1"))
        text = _to_pbtxt(name, config)
        parse_config(text)
        with open(os.path.join(out_dir, name, "config.pbtxt"), "w") as f:
            f.write(text)
        if "platform" in config:  # native backend: the model file goes into the version folder
            source = encoder_onnx if name == "sam_image_encoder" else decoder_onnx
            shutil.copy(source, os.path.join(out_dir, name, "1", NATIVE_PLATFORMS[opts.native][1]))
            continue
        with open(os.path.join(out_dir, name, "1", "model.py"), "w") as f:
            f.write(f'"""Rendered by samrt; the logic lives in samrt.model_repository."""\n'
                    f"from samrt.model_repository.python_models import {_MODEL_PY[name]} as TritonPythonModel  # noqa: F401\n")
    if engine_report is not None:
        with open(os.path.join(out_dir, "sam_image_encoder", "engine_report.json"), "w") as f:
            json.dump(engine_report, f, indent=2)
    return out_dir
