"""samrt.export: official SAM checkpoints to checked ONNX graphs (needs the `export` extra)."""

from .checkpoint import (build_sam, config_from_state_dict, load_sam, load_state_dict, random_sam, resize_image_input,
                         save_checkpoint)
from .onnx_export import ExportResult, Tolerance, check_graph, export_sam, random_decoder_inputs
from .wrappers import ImageEncoder, PromptDecoder

__all__ = [
    "build_sam",
    "config_from_state_dict",
    "load_sam",
    "load_state_dict",
    "random_sam",
    "resize_image_input",
    "save_checkpoint",
    "ExportResult",
    "Tolerance",
    "check_graph",
    "export_sam",
    "random_decoder_inputs",
    "ImageEncoder",
    "PromptDecoder",
]
