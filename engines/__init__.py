"""samrt.engines: runners over inference backends and a local predictor built on them."""

from .amg import InProcessMaskGenerator, amg_crop_decoder
from .factory import runner_for_engine
from .predictor import OnnxSamPredictor
from .runner import OnnxRuntimeRunner, Runner

__all__ = ["InProcessMaskGenerator", "OnnxRuntimeRunner", "OnnxSamPredictor", "Runner", "amg_crop_decoder",
           "runner_for_engine"]
