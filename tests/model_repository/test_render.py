"""The rendered repository: configs derive from the spec and parse as Triton's ModelConfig."""

import os

import pytest

from samrt.artifacts import MARKER, OutputDirError, read_marker
from samrt.model_repository.render import RepoOptions, model_configs, parse_config, render_repository
from samrt.spec import decoder_spec, encoder_spec

MODELS = ["sam_amg", "sam_decode", "sam_encode", "sam_image_encoder", "sam_mask_decoder", "sam_mask_rle",
          "sam_mask_upscale", "sam_segment"]


def test_every_model_is_rendered_and_parses(tiny_repo):
    assert sorted(n for n in os.listdir(tiny_repo) if n != MARKER) == MODELS
    assert read_marker(tiny_repo)["kind"] == "build-repo" and read_marker(tiny_repo)["entries"] == MODELS
    for name in MODELS:
        cfg = parse_config(open(os.path.join(tiny_repo, name, "config.pbtxt")).read())
        assert cfg.name == name
        if name == "sam_decode":  # the click path: an ensemble, no code of its own
            assert cfg.platform == "ensemble" and os.listdir(os.path.join(tiny_repo, name, "1")) == []
            continue
        assert cfg.backend == "python"
        model_py = open(os.path.join(tiny_repo, name, "1", "model.py")).read()
        assert "import" in model_py and len(model_py.splitlines()) <= 3  # thin: logic lives in samrt


def test_configs_follow_the_spec(tiny_cfg, tiny_export):
    configs = model_configs(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, RepoOptions(max_prompts=32))
    enc = encoder_spec(tiny_cfg)
    assert configs["sam_image_encoder"]["input"][0]["dims"] == list(enc.tensor("image").shape[1:])
    cache_out = {o["name"]: o["dims"] for o in configs["sam_mask_decoder"]["output"]}
    assert cache_out["image_embeddings"] == list(enc.tensor("image_embeddings").shape[1:])
    m = decoder_spec(tiny_cfg).tensor("mask_input").shape[-1]
    decode = configs["sam_decode"]
    assert decode["max_batch_size"] == 32 and decode["platform"] == "ensemble"
    assert "dynamic_batching" in configs["sam_mask_decoder"]  # the decoder step batches prompts of all clients
    assert {i["name"]: i["dims"] for i in decode["input"]}["mask_input"] == [1, m, m]
    assert [o["name"] for o in decode["output"]] == ["masks", "iou_predictions", "low_res_masks", "masks_rle"]
    # a lone image is encoded at once on a CPU (its batches run one image at a time); on a GPU it
    # waits 2 ms for others to run with it; a value given is kept
    delay = lambda c: c["sam_image_encoder"]["dynamic_batching"]["max_queue_delay_microseconds"]  # noqa: E731
    assert delay(configs) == 0
    cuda = model_configs(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, RepoOptions(device="cuda"))
    assert delay(cuda) == 2000
    assert delay(model_configs(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path,
                               RepoOptions(encoder_queue_delay_us=500))) == 500


def test_missing_onnx_is_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `samrt export` first"):
        render_repository(tiny_cfg, str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), str(tmp_path / "r"))


def test_bad_config_text_is_rejected():
    with pytest.raises(Exception, match="no_such_field"):
        parse_config('name: "x"\nno_such_field: 3\n')


@pytest.mark.parametrize("native,ext", [("onnxruntime", "model.onnx"), ("tensorrt", "model.plan")])
def test_production_variant_is_rendered_and_schema_checked(tiny_cfg, tiny_export, tmp_path, native, ext):
    out = render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, str(tmp_path / "r"),
                            RepoOptions(native=native, device="cuda"))
    names = sorted(os.listdir(out))
    assert "sam_prompt_decoder" in names
    for name in ("sam_image_encoder", "sam_prompt_decoder"):
        cfg = parse_config(open(os.path.join(out, name, "config.pbtxt")).read())
        assert cfg.platform == ("onnxruntime_onnx" if native == "onnxruntime" else "tensorrt_plan")
        assert os.path.isfile(os.path.join(out, name, "1", ext))
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    dec = parse_config(open(os.path.join(out, "sam_prompt_decoder", "config.pbtxt")).read())
    assert [i.name for i in dec.input] == decoder_spec(tiny_cfg).input_names
    assert list(dec.input[4].reshape.shape) == []  # has_mask_input [P]: Triton's batch dim alone
    assert dec.HasField("dynamic_batching")  # the native decoder batches prompts of all clients
    decode = parse_config(open(os.path.join(out, "sam_decode", "config.pbtxt")).read())
    assert [st.model_name for st in decode.ensemble_scheduling.step] == [
        "sam_prompt_prep", "sam_embedding_cache", "sam_prompt_decoder", "sam_mask_select", "sam_mask_upscale",
        "sam_mask_rle"]
    amg = parse_config(open(os.path.join(out, "sam_amg", "config.pbtxt")).read())
    assert amg.parameters["decoder_model"].string_value == "sam_prompt_decoder"


def _dims_fit(a, b) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("native", [None, "onnxruntime", "tensorrt", "openvino"])
def test_the_click_ensemble_is_wired_right(tiny_cfg, tiny_export, native):
    """What Triton checks when it loads an ensemble, and what its pruning needs, on the configs of
    every variant (the production ones cannot load here): each step input is fed, in order, by an
    ensemble input or an earlier step's output of the same datatype and dims; each required input
    is fed; each ensemble output is made once and is no step's input (Triton 2.51 prunes wrongly
    otherwise); every step's model is in the repository and batches over prompts."""
    decoder = tiny_export.decoder_path if native else tiny_export.fast_decoder_paths
    configs = model_configs(tiny_cfg, tiny_export.encoder_path, decoder, RepoOptions(native=native, max_prompts=32))
    decode = configs["sam_decode"]
    made = {i["name"]: (i["data_type"], i["dims"]) for i in decode["input"]}
    outputs = {o["name"]: (o["data_type"], o["dims"]) for o in decode["output"]}
    consumed, produced = set(), []
    for step in decode["ensemble_scheduling"]["step"]:
        model = configs[step["model_name"]]
        assert model["max_batch_size"] == 32, step["model_name"]
        ins = {i["name"]: i for i in model["input"]}
        for name, i in ins.items():
            assert name in step["input_map"] or i.get("optional"), f"{step['model_name']}.{name} is not fed"
        for key, tensor in step["input_map"].items():
            assert tensor in made, f"{step['model_name']}.{key} <- {tensor}: nothing makes it before"
            assert _dims_fit(made[tensor][1], ins[key]["dims"]), (step["model_name"], key, made[tensor])
            assert made[tensor][0] == ins[key]["data_type"], (step["model_name"], key)
            consumed.add(tensor)
        outs = {o["name"]: o for o in model["output"]}
        for key, tensor in step["output_map"].items():
            made[tensor] = (outs[key]["data_type"], outs[key]["dims"])
            produced.append(tensor)
    for name, (dtype, dims) in outputs.items():
        assert produced.count(name) == 1 and made[name] == (dtype, dims), name
        assert name not in consumed, f"ensemble output {name} is also a step input"


def test_build_repo_cli_production_variant(tiny_export, tmp_path, capsys):
    from samrt.app.cli import main

    export_dir = os.path.dirname(tiny_export.encoder_path)
    assert main(["build-repo", "--export", export_dir, "--backend", "onnxruntime-native", "--device", "cuda",
                 "--out", str(tmp_path / "native")]) == 0
    assert os.path.isfile(tmp_path / "native" / "sam_prompt_decoder" / "1" / "model.onnx")
    assert main(["build-repo", "--export", export_dir, "--backend", "tensorrt", "--precision", "fp16",
                 "--out", str(tmp_path / "trt")]) == 2
    assert "--device cpu with --backend tensorrt: expected one of ('cuda',)" in capsys.readouterr().err
    # on a GPU machine the plan builds the TensorRT engines first; here TensorRT is not installed
    assert main(["build-repo", "--export", export_dir, "--backend", "tensorrt", "--device", "cuda",
                 "--out", str(tmp_path / "trt")]) == 2
    assert "TensorRT" in capsys.readouterr().err


def test_build_repo_refuses_a_folder_it_did_not_render(tiny_export, tmp_path, capsys, monkeypatch):
    """The fault: `build-repo --out DIR` used to delete DIR whatever it held. It is refused before
    any engine is built (minutes on a real model)."""
    from samrt.app import pipeline
    from samrt.app.cli import main

    def no_build(*args, **kwargs):
        raise AssertionError("an engine was built for a folder that is refused")

    monkeypatch.setattr(pipeline, "build_variant", no_build)

    export_dir = os.path.dirname(tiny_export.encoder_path)
    users = tmp_path / "work"
    users.mkdir()
    (users / "thesis.tex").write_text("years of work")
    assert main(["build-repo", "--export", export_dir, "--out", str(users)]) == 2
    err = capsys.readouterr().err
    assert str(users) in err and "not written by samrt" in err and "thesis.tex" in err
    assert sorted(os.listdir(users)) == ["thesis.tex"] and (users / "thesis.tex").read_text() == "years of work"


def test_re_render_replaces_only_what_it_rendered(tiny_cfg, tiny_export, tmp_path):
    out = str(tmp_path / "repo")
    render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, out)
    with open(os.path.join(out, "notes.txt"), "w") as f:  # something of the user's, added later
        f.write("keep me")
    os.remove(os.path.join(out, "sam_segment", "config.pbtxt"))
    render_repository(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, out,
                      RepoOptions(native="onnxruntime", device="cuda"))
    assert open(os.path.join(out, "notes.txt")).read() == "keep me"
    assert os.path.isfile(os.path.join(out, "sam_segment", "config.pbtxt"))
    assert "sam_prompt_decoder" in read_marker(out)["entries"]
    with pytest.raises(OutputDirError, match="holds the output of samrt build-repo"):
        from samrt.artifacts import prepare_output_dir

        prepare_output_dir(out, "export")


def _fake_engine(manifest, graph, precision, ms, iou, passed, backend="openvino"):
    """Engine files with their report, as build-engine writes them (contents not read here)."""
    import json

    from samrt.variants import Variant

    variant = Variant(graph, backend, precision)
    paths = variant.paths(manifest)
    for path in paths.values():
        open(path, "w").write("<net/>")
        open(path[:-4] + ".bin", "wb").write(b"\0")
    json.dump({"engine": os.path.basename(variant.path(manifest)), "graph": graph, "backend": backend,
               "precision": precision, "speed": {"engine_ms": ms, "fp32_ms": 100.0},
               "accuracy": {"mean_mask_iou": iou}, "gate": {"passed": passed, "min": 0.98}},
              open(variant.report_path(manifest), "w"))
    return paths


def _vnni_bf16_export(tiny_export, tmp_path, monkeypatch):
    """A copy of the tiny export, planned as on a CPU with int8 dot products and native bf16."""
    import shutil

    from samrt.app import pipeline
    from samrt.artifacts import ExportManifest

    monkeypatch.setattr(pipeline, "_openvino_bf16_native", lambda: True)
    monkeypatch.setattr(pipeline, "_openvino_int8_dot", lambda: True)
    export_dir = str(tmp_path / "export")
    shutil.copytree(os.path.dirname(tiny_export.encoder_path), export_dir)
    return ExportManifest.read(export_dir)


def test_int8_dynamic_encoder_first_where_the_cpu_has_int8_dot_products(tiny_export, tmp_path, capsys, monkeypatch):
    """With int8 dot-product units (VNNI/AMX) the encoder's first candidate is OpenVINO
    int8-dynamic, then bf16; the decoder stays in float. A failed int8-dynamic gate falls through to
    bf16; a calibrated int8 built on request is served only when its speedup beats int8-dynamic's."""
    from samrt.app import pipeline
    from samrt.variants import Variant, auto_candidates

    assert [str(v) for v in auto_candidates("encoder", "cpu", True, True)] == [
        "encoder openvino int8-dynamic", "encoder openvino bf16", "encoder openvino fp32", "encoder onnxruntime fp32"]
    assert [v.precision for v in auto_candidates("decoder", "cpu", True, True)] == ["bf16", "fp32", "fp32"]
    assert [v.precision for v in auto_candidates("encoder", "cpu", True, False)] == ["bf16", "fp32", "fp32"]
    m = _vnni_bf16_export(tiny_export, tmp_path, monkeypatch)
    dynamic = _fake_engine(m, "encoder", "int8-dynamic", 40.0, 0.995, True)
    bf16 = _fake_engine(m, "encoder", "bf16", 50.0, 0.997, True)
    _fake_engine(m, "fast_decoder", "bf16", 20.0, 0.995, True)
    plan = pipeline.plan_engines(m)
    assert plan.encoder.paths == dynamic and plan.decoder.variant == Variant("fast_decoder", "openvino", "bf16")
    assert pipeline.plan_engines(m, "openvino").encoder.paths == dynamic  # --backend openvino: the same order
    assert pipeline.plan_engines(m, precision="bf16").encoder.paths == bf16
    int8 = _fake_engine(m, "encoder", "int8", 45.0, 0.99, True)  # calibrated, slower than int8-dynamic: not served
    assert pipeline.plan_engines(m).encoder.paths == dynamic
    assert "2.22x against encoder openvino int8-dynamic's 2.50x" in capsys.readouterr().err
    _fake_engine(m, "encoder", "int8-dynamic", 40.0, 0.95, False)  # its gate failed: int8 beats bf16 (2.22x, 2.00x)
    assert pipeline.plan_engines(m).encoder.paths == int8
    _fake_engine(m, "encoder", "int8", 45.0, 0.95, False)  # both gates failed: bf16
    plan = pipeline.plan_engines(m)
    assert plan.encoder.paths == bf16 and "encoder openvino int8-dynamic: gate failed" in plan.encoder.why


def test_serving_picks_the_first_variant_that_passes_and_is_faster(tiny_export, tmp_path, capsys, monkeypatch):
    """plan_engines on built engines (their reports say how they did): the first auto candidate that
    passed its gate and is faster than the exact path; a refused one is named in the why."""
    import json
    import shutil

    from samrt.app import pipeline
    from samrt.artifacts import ExportManifest
    from samrt.model_repository.launch import repository_from_plan

    monkeypatch.setattr(pipeline, "_openvino_bf16_native", lambda: True)  # this test's CPU: native bf16
    monkeypatch.setattr(pipeline, "_openvino_int8_dot", lambda: False)  # and no int8 dot-product units
    export_dir = str(tmp_path / "export")
    shutil.copytree(os.path.dirname(tiny_export.encoder_path), export_dir)
    m = ExportManifest.read(export_dir)
    _fake_engine(m, "encoder", "bf16", 50.0, 0.97, False)  # faster, but its gate failed
    fp32 = _fake_engine(m, "encoder", "fp32", 80.0, 1.0, True)
    fast = _fake_engine(m, "fast_decoder", "bf16", 20.0, 0.995, True)
    plan = pipeline.plan_engines(m)
    assert plan.encoder.paths == fp32 and "encoder openvino bf16: gate failed" in plan.encoder.why
    assert "not built: encoder openvino int8" in capsys.readouterr().err  # never built here: how to build it
    # int8 built on request is served with no flags once it passed and beats the float candidates
    int8 = _fake_engine(m, "encoder", "int8", 10.0, 0.999, True)
    assert pipeline.plan_engines(m).encoder.paths == int8
    _fake_engine(m, "encoder", "int8", 90.0, 0.999, True)  # slower than fp32's speedup (1.25x): not served
    assert pipeline.plan_engines(m).encoder.paths == fp32
    assert "1.11x against encoder openvino fp32's 1.25x" in capsys.readouterr().err
    _fake_engine(m, "encoder", "int8", 10.0, 0.95, False)  # its gate failed: not served
    assert pipeline.plan_engines(m).encoder.paths == fp32
    assert "its gate failed" in capsys.readouterr().err
    _fake_engine(m, "encoder", "int8", 10.0, 0.999, True)
    assert pipeline.plan_engines(m, precision="fp32").encoder.paths == fp32  # a precision asked for: that one
    assert plan.decoder.paths == fast and plan.native is None
    repo = repository_from_plan(m, plan, str(tmp_path / "repo"))
    enc = parse_config(open(os.path.join(repo, "sam_image_encoder", "config.pbtxt")).read())
    assert enc.parameters["engine_path"].string_value == fp32["encoder"]
    dec = parse_config(open(os.path.join(repo, "sam_mask_decoder", "config.pbtxt")).read())
    assert json.loads(dec.parameters["decoder_engine"].string_value) == fast
    assert json.load(open(os.path.join(repo, "serving_plan.json")))["decoder"]["variant"] == "fast_decoder openvino bf16"
    # a precision asked for is served only through its gate
    with pytest.raises(Exception, match="its accuracy gate failed"):
        pipeline.plan_engines(m, "openvino", "bf16")
    assert pipeline.plan_engines(m, precision="int8").encoder.variant.precision == "int8"
    # not faster than the exact path: the next candidate (here the exact path itself)
    _fake_engine(m, "fast_decoder", "bf16", 150.0, 0.995, True)
    _fake_engine(m, "fast_decoder", "fp32", 120.0, 1.0, True)
    plan = pipeline.plan_engines(m)
    assert plan.decoder.variant.is_export and "not faster than onnxruntime fp32" in plan.decoder.why
    assert plan.decoder.paths == m.fast_decoder_paths
    # the production variant serves the classic decoder in the native backend
    _fake_engine(m, "decoder", "fp32", 30.0, 1.0, True)
    plan = pipeline.plan_engines(m, "openvino-native", "fp32")
    native = repository_from_plan(m, plan, str(tmp_path / "native"))
    cfg = parse_config(open(os.path.join(native, "sam_image_encoder", "config.pbtxt")).read())
    assert cfg.backend == "openvino"
    assert os.path.isfile(os.path.join(native, "sam_image_encoder", "1", "model.xml"))
    assert os.path.isfile(os.path.join(native, "sam_image_encoder", "1", "model.bin"))
    assert parse_config(open(os.path.join(native, "sam_prompt_decoder", "config.pbtxt")).read()).backend == "openvino"


def test_a_built_engine_changed_after_its_build_is_refused_on_reuse(tiny_export, tmp_path, monkeypatch):
    """The sizes its report recorded (engine file and IR weights) are checked when an engine is
    reused: a truncated weights file is named, with what was expected and how to rebuild."""
    import json

    from samrt.app import pipeline
    from samrt.artifacts import ArtifactError
    from samrt.variants import Variant

    m = _vnni_bf16_export(tiny_export, tmp_path, monkeypatch)
    paths = _fake_engine(m, "encoder", "int8-dynamic", 40.0, 0.995, True)
    _fake_engine(m, "fast_decoder", "bf16", 20.0, 0.995, True)
    report_path = Variant("encoder", "openvino", "int8-dynamic").report_path(m)
    report = json.load(open(report_path))
    xml = paths["encoder"]
    report["files"] = {"encoder": {"bytes": os.path.getsize(xml)}}
    report["details"] = {"weights_bytes": os.path.getsize(xml[:-4] + ".bin")}
    json.dump(report, open(report_path, "w"))
    assert pipeline.plan_engines(m).encoder.paths == paths  # as recorded: reused
    open(xml[:-4] + ".bin", "wb").close()  # truncated after the build
    with pytest.raises(ArtifactError, match=r"encoder\.int8-dynamic\.bin: got 0 bytes, expected 1 bytes as its report"):
        pipeline.plan_engines(m)
    assert os.path.isfile(xml) and os.path.isfile(report_path)  # nothing deleted
