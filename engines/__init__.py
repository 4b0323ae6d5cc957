"""samrt.engines: runners over inference backends and a local predictor built on them."""

from .predictor import OnnxSamPredictor
from .runner import OnnxRuntimeRunner, Runner

__all__ = ["OnnxRuntimeRunner", "OnnxSamPredictor", "Runner"]
