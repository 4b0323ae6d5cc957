"""samrt.model_repository: the Triton server floor.

- `render`: the model repository (config.pbtxt and one-line model.py files) from `samrt.wire`.
- `models`: the python-backend models those model.py files load (encode, click, AMG paths).
- `logic`: their torch-free, Triton-free logic (the embedding cache, prompt preparation).
- `server`: the real tritonserver from nvidia-pytriton, started and watched; `launch`: build-repo
  and the serving loop; `nginx`: the NGINX configuration that routes replicas by image.

Floor "server" (`samrt.layers`): imports the core, `samrt.scenes` and `samrt.engines`, never
`samrt.export` (the server runs without torch).
"""
