"""samrt.app: the applications, built on every floor below them.

- `cli`: the `samrt` command (parses arguments, calls library functions).
- `pipeline`: orchestration: export if needed, build engines, render the repository, serve.
- `demo`: `samrt demo` / `make demo`.
- `dataset_amg`: `samrt amg --ray`, automatic masks for a folder on a Ray cluster.
- `annotate`: `samrt annotate`, SAM's data engine in a browser.

Floor "app" (`samrt.layers`): may import every floor; no floor imports it. Optional heavy
dependencies (torch through `samrt.export`, ray, aiohttp) are imported inside the functions that
need them, so `samrt --help` and the server-side commands start without them.
"""
