"""The README's and docs/' examples and commands work as written."""

import glob
import os
import re
import shlex

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = os.path.join(ROOT, "README.md")
DOC_FILES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
README_MAX_LINES = 350  # the README is a front page; reference material lives in docs/


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _find_block(marker: str):
    """(code, path) of the python block that starts with `# <marker>`, in the README or docs/."""
    found = [(m.group(1), path) for path in DOC_FILES
             for m in re.finditer(r"```python\n(# " + re.escape(marker) + r"\n.*?)```", _text(path), re.S)]
    assert len(found) == 1, f"expected one block marked {marker!r} in README.md and docs/, found {len(found)}"
    return found[0]


def _block(marker: str) -> str:
    return _find_block(marker)[0]


def _run_block(marker: str, replacements: dict) -> dict:
    code, path = _find_block(marker)
    for old, new in replacements.items():
        assert old in code, f"{marker}: the block no longer names {old!r}"
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, os.path.relpath(path, ROOT), "exec"), scope)
    return scope


@pytest.mark.triton
def test_plain_tritonclient_example_runs(server):
    scope = _run_block("readme-example: wire", {"localhost:8001": server.grpc_url})
    assert scope["masks"].shape == (1, 3, 480, 640) and scope["masks"].dtype == bool
    assert scope["scores"].shape == (1, 3)


@pytest.mark.triton
def test_sdk_example_runs(server):
    scope = _run_block("readme-example: sdk", {"localhost:8001": server.grpc_url})
    assert scope["masks"].shape == (2, 3, 480, 640) and scope["scores"].shape == (2, 3)
    assert isinstance(scope["records"], list)


def test_sdk_example_is_on_the_front_page():
    assert _find_block("readme-example: sdk")[1] == README


def test_onnx_predictor_example_runs(tiny_export):
    scope = _run_block("readme-example: onnx-predictor", {
        "build/vit_b/vit_b.encoder.onnx": tiny_export.encoder_path,
        "build/vit_b/vit_b.decoder.onnx": tiny_export.decoder_path})
    assert scope["masks"].shape == (3, 480, 640) and scope["masks"].dtype == bool
    assert scope["scores"].shape == (3,) and scope["low_res"].ndim == 3


def _command_lines(path: str):
    return [l.strip() for l in _text(path).splitlines() if l.strip().startswith(".venv/bin/samrt ")]


def test_every_samrt_command_in_the_readme_and_docs_parses():
    from samrt.app.cli import build_parser

    parser = build_parser()
    lines = [(os.path.relpath(p, ROOT), l) for p in DOC_FILES for l in _command_lines(p)]
    assert len(lines) >= 8 and len(_command_lines(README)) >= 5
    for path, line in lines:
        argv = shlex.split(line.split("#")[0])[1:]
        try:
            parser.parse_args(argv)  # exits on an unknown subcommand or option
        except SystemExit:
            pytest.fail(f"{path}: {line!r} does not parse")


def test_the_readme_is_a_front_page():
    n = len(_text(README).splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines, expected at most {README_MAX_LINES}: move reference to docs/"


@pytest.mark.triton
@pytest.mark.slow
def test_the_readme_segment_and_amg_commands_give_masks_on_the_embedded_model(small_server, tmp_path, monkeypatch, capsys):
    """The README's `samrt segment` and `samrt amg` lines as written (the files they name made to
    exist, `--url` of the test's server added), on the embedded model: non-empty masks. The
    automatic masks use the thresholds of the model's card (samrt/assets/sam_samrt_small.amg.json),
    which the server tells the CLI."""
    import json

    import numpy as np
    from PIL import Image

    from samrt.app.cli import main
    from samrt.scenes import eval_scenes

    lines = {shlex.split(l.split("#")[0])[1]: shlex.split(l.split("#")[0])[1:] for l in _command_lines(README)}
    segment, amg = lines["segment"], lines["amg"]
    monkeypatch.chdir(tmp_path)
    scenes = eval_scenes(4)
    Image.fromarray(scenes[3].image).save(segment[1])               # photo.jpg: 633 x 338, holds the README's points
    os.makedirs(amg[1])
    Image.fromarray(scenes[1].image).save(os.path.join(amg[1], "scene.png"))   # images/: a small scene, the default grid
    url = ["--url", small_server.grpc_url]
    assert main(segment + url) == 0
    assert np.asarray(Image.open(segment[segment.index("--out") + 1])).any()
    assert os.path.getsize(segment[segment.index("--overlay") + 1]) > 0
    assert main(amg + url) == 0
    doc = json.load(open(os.path.join(amg[amg.index("--out") + 1], "scene.json")))
    assert len(doc["annotations"]) >= 1
    assert "masks in all" in capsys.readouterr().out
