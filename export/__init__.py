"""samrt.export: official SAM checkpoints to checked ONNX graphs, and the training of samrt's own
small model (`samrt.export.training`); needs the `export` extra (torch, segment-anything, onnx).

Floor "export" (`samrt.layers`): imports the core and `samrt.scenes`; never the engines, the
server, the client or the applications.
"""

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
