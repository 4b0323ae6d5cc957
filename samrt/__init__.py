"""samrt: serve Segment Anything fast on Triton, with ONNX Runtime, OpenVINO and TensorRT engines.

This root package is the core floor, torch-free (numpy and PIL; scipy and pycocotools inside the
functions that use them), imported by every other floor and importing none of them:
`spec` (the I/O spec), `wire` (the server's API), `prompts`, `imageio`, `processing`, `upscale`,
`masks` (COCO RLE, IoU, boxes), `amg` (the automatic-mask logic), `errors`, `artifacts`, `visualize`, `predictor_api`, and
`layers` (the floors themselves).

The other floors, each a package of its own (`samrt.layers` declares what each may import):
`samrt.scenes` (generated scenes, evaluation, training data), `samrt.export`, `samrt.engines`,
`samrt.model_repository` (the Triton server), `samrt.client` (the SDK), and the applications
`samrt.app` (CLI, orchestration, demo, annotate, Ray jobs) and `samrt.benchmarks`.
"""

__version__ = "0.1.0"
