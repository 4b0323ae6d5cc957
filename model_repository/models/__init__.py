"""Triton python-backend models. Each rendered `model.py` is one line that imports a class here,
from the module of its path: `encode` (sam_image_encoder, sam_encode), `click` (the steps of the
sam_decode ensemble, sam_segment), `amg` (sam_amg); `base` holds what they share (the request
loop, the error codes, the one BLS call).

Tensor names and dtypes come from the wire declaration (`samrt.wire`); prompt rules from
`samrt.prompts`. Every request gets exactly one response; a bad request gets an error response
with Triton's code (INVALID_ARG for bad input, NOT_FOUND for an unknown or evicted image_id,
UNAVAILABLE for overload, CANCELLED for an abandoned job, INTERNAL for the unplanned) and the
other requests of the batch go on.

Where the embedding lives, and why. An embedding is 4 MiB (official models); a click is a few
hundred bytes. Python-backend models are separate processes, and a tensor that passes between
two of them is copied through shared memory. So the model that runs the decoder also owns the
cache: in the CPU variant `sam_mask_decoder` is the cache and the engine in one process, and a
click reads its embedding in place (an earlier design fetched it from a cache model through BLS:
4 MiB copied twice per click). The encode path (`sam_encode`, `sam_amg`) stores and fetches
embeddings there through BLS, once per image, not per click. The cache keeps its byte bound,
its LRU order and its NOT_FOUND error (`logic.EmbeddingCache`); it lives and dies with that
process (the launcher's watchdog restarts it, and images are then encoded again). The price: one
decoder process per server (instance count 1; a second instance would hold a second cache). On
a CPU one decoder instance uses the cores it is given; beyond that, scale out with replicas and
image-affine routing (README, "Several replicas").

The production variant runs the decoder in a native backend (TensorRT / ONNX Runtime /
OpenVINO), which cannot own a cache: there `sam_embedding_cache` owns it and hands the native
`sam_prompt_decoder` each prompt's embedding as an ensemble tensor (the decoder graph takes one
embedding row per prompt: P x 4 MiB per request, copied once into Triton's memory). On a GPU that
tensor is copied to the device anyway (4 MiB is ~0.1 ms over PCIe 5); this variant was rendered
and its ensemble checked by tests, not run (no GPU, no NVIDIA container here).
"""
