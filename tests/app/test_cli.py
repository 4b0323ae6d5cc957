"""The `samrt` command: bad checkpoints give a clear error and exit code 2; export works."""

import json
import subprocess
import sys

import pytest
import torch

from samrt.app.cli import main


def test_export_random_init_says_so(tmp_path, capsys, tiny_graphs_reused):
    assert main(["export", "--model-type", "tiny", "--random-init", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "RANDOM-INIT WEIGHTS" in captured.err and "mean nothing" in captured.err
    assert (tmp_path / "tiny.encoder.onnx").is_file() and (tmp_path / "tiny.decoder.onnx").is_file()
    assert json.load(open(tmp_path / "export_report.json"))["random_init"] is True


@pytest.mark.parametrize(
    "content,match",
    [
        (b"not a zip file at all", "cannot be read"),
        (None, "not a SAM checkpoint"),
    ],
)
def test_bad_checkpoint_exit_code_and_message(tmp_path, capsys, content, match):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save({"weight": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err


def test_model_type_mismatch_via_cli(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "--model-type", "vit_h", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path)]) == 2
    assert "asked for vit_h" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "samrt.app.cli", "--help"], capture_output=True, text=True, check=True)
    assert "export" in out.stdout


def test_client_side_imports_need_no_torch():
    code = "import sys, samrt.spec, samrt.processing, samrt.visualize; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_range_flags_say_what_they_expect(capsys):
    from samrt.app.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--out", "x.pth", "--scene-long-side", "640"])
    assert "got '640', expected two int values as MIN,MAX" in capsys.readouterr().err


def test_train_image_size_must_be_a_multiple_of_the_patch(capsys):
    from samrt.app.cli import main

    assert main(["train", "--out", "x.pth", "--image-size", "500"]) != 0
    assert "--image-size: got 500, expected a positive multiple of the patch size 16" in capsys.readouterr().err


def test_train_options_left_out_keep_the_train_options_defaults(monkeypatch, capsys):
    import dataclasses

    from samrt.export import training

    seen = []
    monkeypatch.setattr(training, "train", lambda out, opts, cfg, init=None: seen.append((opts, cfg, init)) or {})
    assert main(["train", "--out", "x.pth"]) == 0
    assert main(["train", "--out", "x.pth", "--seed", "6", "--scene-long-side", "192,640", "--device", "cuda",
                 "--image-size", "512", "--init", "w.pth"]) == 0
    (plain, cfg, init), (flagged, big, init2) = seen
    assert plain == training.TrainOptions() and plain.steps == 2400  # the library's defaults, 2400 steps
    assert cfg == training.SMALL_CONFIG and init is None
    assert flagged == dataclasses.replace(training.TrainOptions(), seed=6, scene_long_side=(192, 640),
                                          device="cuda")
    assert big.image_size == 512 and init2 == "w.pth"


def test_every_help_shows_the_defaults():
    import argparse

    from samrt.app.cli import build_parser

    def parsers(p, name="samrt"):
        yield name, p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, child in a.choices.items():
                    yield from parsers(child, f"{name} {sub}")

    for name, p in parsers(build_parser()):
        text = " ".join(p.format_help().split())
        for a in p._actions:
            if not a.option_strings or a.default in (None, False, argparse.SUPPRESS) or a.help == argparse.SUPPRESS:
                continue
            assert a.help, f"{name} {a.option_strings[0]}: no help"
            shown = " ".join(a.help.split())
            assert "default" in shown or f"(default: {a.default})" in text, f"{name} {a.option_strings[0]}: no default"


def test_a_client_only_install_says_what_serve_needs(tmp_path):
    """The missing packages are simulated: a None in sys.modules makes their import fail."""
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'onnxruntime', 'onnx', 'openvino', 'pytriton', 'segment_anything'):\n"
            "    sys.modules[m] = None\n"
            "from samrt.app.cli import main\n"
            f"sys.exit(main(['serve', '--build-dir', {str(tmp_path / 'b')!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "samrt serve needs the Python package 'torch'" in out.stderr
    assert "pip install 'samrt[serve,export,cpu]'" in out.stderr


def test_point_labels_on_the_command_line_are_0_or_1(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["segment", str(tmp_path / "a.png"), "--point", "5,5:2", "--out", str(tmp_path / "m.png"), "--url", "127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--point: got '5,5:2', label 2, expected label 1 (foreground) or 0 (background)" in err and "--box" in err


@pytest.mark.parametrize("url,protocol,match", [
    ("http://localhost:8001", "grpc", "an http URL, expected host:port of the grpc endpoint"),
    ("grpc://localhost:8000", "http", "use protocol 'grpc'"),
    ("https://localhost:8000", "http", "no scheme; TLS is not supported"),
])
def test_a_url_with_the_wrong_scheme_says_so(url, protocol, match, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--point", "5,5", "--out", str(tmp_path / "m.png"),
                 "--url", url, "--protocol", protocol]) == 2
    assert match in capsys.readouterr().err
