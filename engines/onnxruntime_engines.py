"""ONNX -> ONNX conversions for ONNX Runtime: offline graph optimisation, FP16 with the
numerically sensitive ops kept in FP32, and INT8 static (QDQ) quantisation with calibration.

Names say what converts to what; each writes a new file and returns its path.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np

from samrt import processing as P

__all__ = [
    "FP32_OPS",
    "optimized_onnx_from_onnx",
    "fp16_onnx_from_onnx",
    "int8_onnx_from_onnx",
    "ImageCalibrationReader",
    "calibrate_linear_layers",
    "sensitive_nodes",
]

log = logging.getLogger(__name__)

# FP16 SAM encoders overflow in LayerNorm and the attention softmax, and reductions lose their
# accumulation: these ops stay in FP32 (with casts around them) in every FP16 conversion.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div", "Erf")


def optimized_onnx_from_onnx(src: str, dst: str, level: str = "extended") -> str:
    """ONNX Runtime's offline graph optimisation, saved as its own model (portable levels only)."""
    import onnxruntime as ort  # onnxruntime: the cpu or gpu extra

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    if level not in levels:
        raise ValueError(f"level: got {level!r}, expected one of {sorted(levels)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = dst
    opts.log_severity_level = 3
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return dst


def fp16_onnx_from_onnx(src: str, dst: str, keep_fp32_ops: Sequence[str] = FP32_OPS) -> str:
    """FP16 weights and compute, FP32 inputs/outputs, `keep_fp32_ops` left in FP32."""
    import onnx  # onnx: the export extra
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32_ops))
    # An initializer shared by several kept-FP32 nodes (the exporter merges identical tensors)
    # gets one identical Cast per use; keep the first, which precedes every consumer.
    seen, nodes = set(), []
    for node in fp16.graph.node:
        key = (node.op_type, node.name, tuple(node.input), tuple(node.output))
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        nodes.append(node)
    del fp16.graph.node[:]
    fp16.graph.node.extend(nodes)
    onnx.save(fp16, dst)
    return dst


def weight_nodes(model_path: str, ops: Iterable[str] = ("MatMul", "Conv", "Gemm")) -> List[str]:
    """Names of the linear layers: the given op types with a weight initializer among their inputs.
    Activation-by-activation products (attention scores, attention times values) are left out."""
    import onnx  # onnx: the export extra

    graph = onnx.load(model_path, load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    ops = set(ops)
    return [n.name for n in graph.node if n.op_type in ops and any(i in weights for i in n.input)]


def sensitive_nodes(model_path: str, ops: Iterable[str] = ("LayerNormalization", "Softmax"),
                    name_parts: Iterable[str] = ("neck",)) -> List[str]:
    """Node names to keep in float: the given op types and every node of the encoder's neck."""
    import onnx  # onnx: the export extra

    ops, parts = set(ops), tuple(name_parts)
    graph = onnx.load(model_path, load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ops or any(p in n.name for p in parts)
            or any(p in o for o in n.output for p in parts)]


def calibrate_linear_layers(model_path: str, node_names: Sequence[str], images: Sequence[np.ndarray], image_size: int,
                            cache_path: str, input_name: str = "image") -> str:
    """Min/max ranges of the inputs and outputs of `node_names` only, one image at a time, written
    as an onnxruntime calibration cache (`quantize_static(calibration_cache_path=...)` reads it).

    quantize_static's own calibration watches every tensor of every op type it quantises, so for
    vit_b it adds reductions over each 12x4096x4096 attention map and needs more than 24 GB; its
    bound on collected outputs (CalibMaxIntermediateOutputs) drops the data instead of merging it
    in onnxruntime 1.31. Here each image's ranges are merged before the next image runs."""
    import onnx  # onnx: the export extra
    from onnxruntime.quantization import CalibrationDataReader, MinMaxCalibrater, save_tensors_data

    graph = onnx.load(model_path, load_external_data=False).graph
    chosen = set(node_names)
    wanted = {t for n in graph.node if n.name in chosen for t in list(n.input) + list(n.output)}

    class LinearLayerCalibrater(MinMaxCalibrater):
        def select_tensors_to_calibrate(self, model):
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return tensors & wanted, value_infos

    class OneImage(ImageCalibrationReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="samrt.calib.") as tmp:
        cal = LinearLayerCalibrater(model_path, None, os.path.join(tmp, "augmented.onnx"),
                                    use_external_data_format=True)
        cal.augment_graph()
        cal.create_inference_session()
        for image in images:
            cal.collect_data(OneImage([image], image_size, input_name))  # merges this image's ranges
        ranges = cal.compute_data()
        del cal
    save_tensors_data(ranges, cache_path)
    return cache_path


class ImageCalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed images."""

    def __init__(self, images: Iterable[np.ndarray], image_size: int, input_name: str = "image") -> None:
        self._feeds: Iterator[dict] = iter(
            [{input_name: P.preprocess_image(im, image_size)[0]} for im in images]
        )

    def get_next(self) -> Optional[dict]:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it for some methods
        pass


def int8_onnx_from_onnx(src: str, dst: str, calibration_images: Sequence[np.ndarray], image_size: int,
                        exclude: Optional[Sequence[str]] = None, per_channel: bool = True) -> str:
    """INT8 static quantisation in QDQ form (weights int8 per channel, activations uint8) of the
    linear layers, calibrated on `calibration_images`; LayerNorm, Softmax, the attention products
    and the neck stay in float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # onnxruntime: the cpu or gpu extra
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_images:
        raise ValueError("calibration_images: got none, expected at least one image")
    pre = dst + ".pre.onnx"
    quant_pre_process(src, pre, skip_symbolic_shape=True)

    try:
        excluded = set(exclude if exclude is not None else sensitive_nodes(pre))
        linear = [n for n in weight_nodes(pre) if n not in excluded]
        cache = dst + ".calibration.json"
        calibrate_linear_layers(pre, linear, calibration_images, image_size, cache)
        quantize_static(
            pre, dst, None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Conv", "Gemm"],
            # Linear layers only: the attention products stay in float (more accurate).
            nodes_to_quantize=linear,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_cache_path=cache,  # the ranges computed above: quantize_static does not calibrate again
        )
    finally:
        if os.path.exists(pre):
            os.remove(pre)
    return dst
