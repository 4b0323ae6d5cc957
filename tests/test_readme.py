"""The README's examples and commands work as written."""

import os
import re
import shlex

import pytest

README = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()


def _block(marker: str) -> str:
    m = re.search(r"```python\n(# " + re.escape(marker) + r"\n.*?)```", README, re.S)
    assert m, f"README has no block marked {marker}"
    return m.group(1)


@pytest.mark.triton
def test_plain_tritonclient_example_runs(server):
    code = _block("readme-example: wire").replace("localhost:8001", server.grpc_url)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["masks"].shape == (1, 3, 480, 640) and scope["masks"].dtype == bool
    assert scope["scores"].shape == (1, 3)


@pytest.mark.triton
def test_sdk_example_runs(server):
    code = _block("readme-example: sdk").replace("localhost:8001", server.grpc_url)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["masks"].shape == (2, 3, 480, 640) and scope["scores"].shape == (2, 3)
    assert isinstance(scope["records"], list)


def test_every_samrt_command_in_the_readme_parses():
    from samrt.app.cli import build_parser

    parser = build_parser()
    lines = [l.strip() for l in README.splitlines() if l.strip().startswith(".venv/bin/samrt ")]
    assert len(lines) >= 8
    for line in lines:
        argv = shlex.split(line.split("#")[0])[1:]
        parser.parse_args(argv)  # exits (fails the test) on an unknown subcommand or option
