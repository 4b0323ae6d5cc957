"""samrt.app.pipeline: what to serve, and when an export is reused. The model-type alias "default"
(vit_h) reaches the export step as vit_h from `samrt serve` and `samrt demo` (issue #22: it ended in
a KeyError). vit_h is never exported here: the export step is replaced by a stand-in that records
what it was asked for and stops."""

import json
import os

import pytest

import samrt.errors
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
    # the memory check passes (what this machine has free does not decide these tests; see `available`)
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2**40)
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
    for step in ("encoder exported in", "encoder checked against PyTorch in", "fast decoder exported in"):
        assert step in err  # the first start says what it is doing, step by step
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


# -- the memory check: a start that will not fit is refused before it begins (issue #24) --

@pytest.fixture
def available(monkeypatch):
    """Sets what the pipeline reads as this machine's available memory (GiB)."""
    def set_gib(gib):
        monkeypatch.setattr(pipeline, "available_memory", lambda: int(gib * 2**30))
    return set_gib


def test_an_export_that_would_not_fit_is_refused_before_it_starts(asked, available, tmp_path, capsys):
    available(2)
    assert main(["serve", "--random-init", "--model-type", "vit_h", "--build-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "error: the export of vit_h: about" in err and "got 2.0 GiB, expected at least" in err
    assert "pass --no-memory-check to start anyway" in err
    assert asked == []  # no model was even built
    assert not (tmp_path / "b" / "export").exists()
    with pytest.raises(_Stop):  # the override goes on to the export
        main(["serve", "--random-init", "--model-type", "vit_h", "--no-memory-check", "--build-dir", str(tmp_path / "b")])
    assert asked == [("random_sam", "vit_h"), ("export_sam", "vit_h")]


def test_an_export_of_a_checkpoint_of_unknown_type_is_checked_once_loaded(asked, available, tmp_path, monkeypatch):
    loaded = []

    def load_sam(path, model_type="auto"):
        loaded.append(path)
        return object(), get_config("vit_l")

    monkeypatch.setattr(samrt.export, "load_sam", load_sam)
    available(1)
    with pytest.raises(samrt.errors.InsufficientMemoryError, match=r"the export of vit_l: about .*got (\d|\.)+ GiB"):
        pipeline.ensure_export(str(tmp_path / "export"), "auto", str(tmp_path / "sam_vit_l.pth"))
    assert loaded and asked == []


def test_a_server_that_would_not_fit_is_refused_before_any_engine_is_built(available, tmp_path, monkeypatch):
    """vit_h's export is there (reused); the least any candidate engine would take does not fit:
    refused before an engine is built; --no-memory-check goes on to the build."""
    built = []

    def build_variant(manifest, variant, **kwargs):
        built.append(str(variant))
        raise _Stop(str(variant))

    monkeypatch.setattr(pipeline, "build_variant", build_variant)
    _fake_export(tmp_path / "b" / "export", "vit_h")
    available(3)
    with pytest.raises(samrt.errors.InsufficientMemoryError,
                       match=r"a vit_h server \(.* encoder, one image at a time\): about .*encoder weights.*got 3\.0 GiB"):
        pipeline.build_repository(str(tmp_path / "b"), None, "vit_h", random_init=True)
    assert built == [] and not (tmp_path / "b" / "repo").exists()
    with pytest.raises(_Stop):
        pipeline.build_repository(str(tmp_path / "b"), None, "vit_h", random_init=True, memory_check=False)
    assert len(built) == 1


def test_the_server_estimate_follows_the_served_engine_and_the_options():
    from samrt.model_repository.render import RepoOptions
    from samrt.variants import ServedEngine, ServingPlan, Variant

    manifest = type("M", (), {"config": get_config("vit_b")})()
    plan = ServingPlan(ServedEngine(Variant("encoder", "openvino", "bf16"), {}, None, ""),
                       ServedEngine(Variant("fast_decoder", "openvino", "bf16"), {}, None, ""))
    est = pipeline.server_memory(manifest, plan, RepoOptions(encoder_max_batch=1, cache_bytes=0))
    assert "a vit_b server (openvino bf16 encoder, one image at a time)" in est.describe()
    assert est.parts["embedding cache"] == 0
    assert pipeline.server_memory(manifest, plan, RepoOptions(device="cuda")) is None  # GPU memory: not estimated
    assert pipeline.server_memory(manifest, ServingPlan(plan.encoder, plan.decoder, "tensorrt")) is None


def test_a_build_that_would_not_fit_is_refused_before_it_starts(available, tmp_path, monkeypatch):
    """Past the server's check, building the engines (the gate's fp32 encoder beside the engine:
    vit_h's took 16 GiB here) is checked before each build."""
    built = []
    monkeypatch.setattr(pipeline, "build_variant", lambda manifest, variant, **kw: built.append(str(variant)))
    _fake_export(tmp_path / "export", "vit_h")
    from samrt.artifacts import ExportManifest

    manifest = ExportManifest.read(str(tmp_path / "export"))
    available(12)  # a vit_h server fits in 12 GiB, its builds do not
    with pytest.raises(samrt.errors.InsufficientMemoryError, match=r"building the openvino (int8-dynamic|bf16|fp32) engine of vit_h: about"):
        pipeline.plan_engines(manifest, memory_check=True)
    assert built == []


def test_annotate_and_export_take_the_override(asked, available, tmp_path, capsys):
    available(1)
    assert main(["export", "--random-init", "--model-type", "vit_b", "--out", str(tmp_path / "e")]) == 2
    assert "got 1.0 GiB" in capsys.readouterr().err and asked == []
    with pytest.raises(_Stop):
        main(["export", "--random-init", "--model-type", "vit_b", "--out", str(tmp_path / "e"), "--no-memory-check"])
    from samrt.app.cli import build_parser

    args = build_parser().parse_args(["annotate", str(tmp_path), "--out", str(tmp_path / "o"), "--no-memory-check"])
    assert args.memory_check is False


def test_repo_options_refuse_a_batch_of_zero():
    from samrt.errors import InputError
    from samrt.model_repository.render import RepoOptions

    with pytest.raises(InputError, match=r"encoder_max_batch: got 0, expected at least 1"):
        RepoOptions(encoder_max_batch=0)
