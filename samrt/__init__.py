"""samrt: serve Segment Anything fast on Triton, with ONNX Runtime and TensorRT engines.

Subpackages: samrt.export, samrt.engines, samrt.model_repository, samrt.client,
samrt.benchmarks. This root package (spec, processing, errors) imports only numpy and PIL.
"""

__version__ = "0.1.0"
