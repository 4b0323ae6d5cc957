"""samrt.app.pipeline: what to serve, and when an export is reused. The model-type alias "default"
(vit_h) reaches the export step as vit_h from `samrt serve` and `samrt demo` (issue #22: it ended in
a KeyError). vit_h is never exported here: the export step is replaced by a stand-in that records
what it was asked for and stops."""

import json
import os

import pytest

import samrt.export
from samrt.app import pipeline
from samrt.app.cli import main
from samrt.spec import get_config


class _Stop(Exception):
    """Raised by the stand-in export: the pipeline got that far."""


@pytest.fixture
def asked(monkeypatch):
    """The model types the (stubbed) export step was asked for."""
    seen = []

    def random_sam(cfg, seed=0):
        seen.append(("random_sam", cfg.model_type))
        return object()

    def export_sam(sam, cfg, out_dir, **kwargs):
        seen.append(("export_sam", cfg.model_type))
        raise _Stop(out_dir)

    monkeypatch.setattr(samrt.export, "random_sam", random_sam)
    monkeypatch.setattr(samrt.export, "export_sam", export_sam)
    return seen


@pytest.mark.parametrize("command", [
    ["serve", "--random-init", "--model-type", "default", "--build-dir"],
    ["demo", "--random-init", "--model-type", "default", "--out"],
])
def test_the_default_alias_is_exported_as_vit_h(command, asked, tmp_path):
    with pytest.raises(_Stop):
        main(command + [str(tmp_path / "build")])
    assert asked == [("random_sam", "vit_h"), ("export_sam", "vit_h")]


def test_resolve_source_resolves_the_alias():
    assert pipeline.resolve_source(None, "default", random_init=True) == (None, "vit_h")
    assert pipeline.resolve_source("x.pth", "default") == ("x.pth", "vit_h")
    assert pipeline.resolve_source("x.pth", "auto") == ("x.pth", "auto")


def _fake_export(folder, model_type: str) -> None:
    """An export folder's report as `samrt export` writes it (random weights of `model_type`)."""
    os.makedirs(folder)
    report = {"config": get_config(model_type).to_dict(), "name": model_type, "checkpoint": None, "random_init": True,
              "passed": True, "encoder": {"path": f"{model_type}.encoder.onnx"},
              "decoder": {"path": f"{model_type}.decoder.onnx"},
              "fast_decoder": {"paths": {g: f"{model_type}.{g}.onnx"
                                         for g in ("image_prep", "fast_decoder", "fast_decoder_mask")}}}
    with open(os.path.join(folder, "export_report.json"), "w") as f:
        json.dump(report, f)


def test_an_export_of_vit_h_is_reused_for_the_alias(asked, tmp_path):
    _fake_export(tmp_path / "export", "vit_h")
    manifest = pipeline.ensure_export(str(tmp_path / "export"), "default", None)
    assert manifest.config == get_config("vit_h") and asked == []  # no new export
    with pytest.raises(_Stop):  # another type: exported again
        pipeline.ensure_export(str(tmp_path / "export"), "vit_b", None)
    assert asked == [("random_sam", "vit_b"), ("export_sam", "vit_b")]


def test_an_export_without_the_fast_decoder_is_exported_again(asked, tmp_path):
    """An export folder written before samrt exported the fast decoder is exported again."""
    _fake_export(tmp_path / "export", "vit_b")
    report_path = tmp_path / "export" / "export_report.json"
    report = json.loads(report_path.read_text())
    del report["fast_decoder"]
    report_path.write_text(json.dumps(report))
    with pytest.raises(_Stop):
        pipeline.ensure_export(str(tmp_path / "export"), "vit_b", None)
    assert asked == [("random_sam", "vit_b"), ("export_sam", "vit_b")]


@pytest.mark.slow  # builds the engines it serves (~20 s here)
def test_build_repository_exports_builds_once_and_renders(tmp_path, monkeypatch, capsys, tiny_graphs_reused):
    """On the tiny model, as `samrt serve` runs it with no flags: the first call exports, builds the
    engines it serves and renders; the second reuses the export and the engines (nothing built)."""
    from samrt.engines import build as engine_build
    from samrt.model_repository.render import parse_config

    builds = []
    real_build = engine_build.build_engine

    def counting_build(*args, **kwargs):
        builds.append(os.path.basename(args[0]))
        return real_build(*args, **{**kwargs, "eval_images": 2, "speed_repeats": 1})

    monkeypatch.setattr(engine_build, "build_engine", counting_build)
    build_dir = str(tmp_path / "build")
    repo = pipeline.build_repository(build_dir, None, "tiny", random_init=True)
    err = capsys.readouterr().err
    assert "exporting random-init tiny" in err and "serving encoder:" in err and "serving decoder:" in err
    first = list(builds)
    assert "tiny.encoder.onnx" in tiny_graphs_reused  # exported (the dynamo step copied: see the fixture)
    assert first  # OpenVINO (the dev install has it) engines were built: the default serves them
    served = json.load(open(os.path.join(repo, "serving_plan.json")))
    assert served["decoder"]["variant"].startswith("fast_decoder")
    assert parse_config(open(os.path.join(repo, "sam_mask_decoder", "config.pbtxt")).read()).name == "sam_mask_decoder"
    repo2 = pipeline.build_repository(build_dir, None, "tiny", random_init=True)
    err = capsys.readouterr().err
    assert repo2 == repo and builds == first and "reusing the export" in err
    assert len(tiny_graphs_reused) == 5  # nothing exported the second time
    assert json.load(open(os.path.join(repo, "serving_plan.json"))) == served
