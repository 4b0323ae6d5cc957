"""samrt.engines: runners over inference backends and a local predictor built on them."""

from .factory import runner_for_engine
from .predictor import OnnxSamPredictor
from .runner import OnnxRuntimeRunner, Runner

__all__ = ["OnnxRuntimeRunner", "OnnxSamPredictor", "Runner", "runner_for_engine"]
