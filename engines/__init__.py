"""samrt.engines: runners over inference backends (ONNX Runtime, OpenVINO, TensorRT), the engine
builder with its accuracy gate, and an in-process predictor and mask generator built on them.

Floor "engines" (`samrt.layers`): imports the core, `samrt.scenes` (calibration and held-out
images) and `samrt.export`; backends are imported inside the functions that use them.
"""

from .amg import InProcessMaskGenerator, amg_crop_decoder
from .factory import runner_for_engine
from .predictor import OnnxSamPredictor
from .runner import OnnxRuntimeRunner, Runner

__all__ = ["InProcessMaskGenerator", "OnnxRuntimeRunner", "OnnxSamPredictor", "Runner", "amg_crop_decoder",
           "runner_for_engine"]
