"""The benchmarks' quick mode: schema and sanity of the rows (no timing assertions)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from samrt.benchmarks.common import latency_stats, machine_info, write_rows


def _check_stats(stats):
    assert stats["n"] >= 1 and 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


def test_machine_info_and_rows(tmp_path):
    info = machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["onnxruntime_version"] and info["tritonclient_version"]
    paths = write_rows([{"bench": "x", **latency_stats([1.0, 2.0, 3.0]), "timed": "t"}], str(tmp_path), "x")
    doc = json.load(open(paths["json"]))
    assert doc["machine"]["cores"] == info["cores"] and doc["rows"][0]["p50_ms"] == 2.0
    assert open(paths["csv"]).readline().strip().split(",")[0]


@pytest.mark.slow  # a benchmark's smoke run: every engine of the ladder built and timed (minutes here)
def test_engines_quick(tmp_path, tiny_export):
    import shutil

    from samrt.benchmarks.run import run_engines

    # a copy of the session's tiny export (the export itself is tested elsewhere): engines are built
    # into it. fp16 (ONNX Runtime's CPU fallback, tested in engines/test_build) is left out here.
    export_dir = str(tmp_path / "export_tiny")
    shutil.copytree(os.path.dirname(tiny_export.encoder_path), export_dir)
    paths = run_engines(str(tmp_path / "out"), "tiny", None, quick=True, build_dir=str(tmp_path / "build"),
                        export_dir=export_dir, precisions=("fp32", "int8"))
    rows = json.load(open(paths["json"]))["rows"]
    enc = [r for r in rows if r["stage"] == "encoder" and "p50_ms" in r]
    assert {r["backend"] for r in enc} >= {"pytorch-eager", "onnxruntime"}
    assert any(r["precision"] == "int8" for r in enc)
    for r in enc:
        _check_stats(r)
        assert r["timed"]
        assert r["warmup_ms"] > 0 and r["machine"]["cpu"]
    dec = [r for r in rows if r["stage"] == "decoder"]
    assert {r["num_prompts"] for r in dec} == {1, 16}
    for r in dec:
        _check_stats(r)
        assert r["timed"]
        assert r["ms_per_prompt"] > 0
    ov = [r for r in rows if r["backend"] == "openvino"]  # quick: bf16 encoder and decoder
    assert {(r["stage"], r["precision"]) for r in ov} == {("encoder", "bf16"), ("decoder", "bf16")}
    if importlib.util.find_spec("openvino") is not None:
        assert all("error" not in r and r["accuracy_vs_fp32"]["masks_compared"] > 0 for r in ov), ov
    else:  # each row says why it was not measured
        assert all("OpenVINO is not installed" in r["error"] for r in ov), ov
    assert os.path.isfile(tmp_path / "out" / "encoder_ladder.png")
    assert os.path.isfile(tmp_path / "out" / "decoder_vs_prompts.png")


@pytest.mark.triton
def test_serve_and_amg_quick(tmp_path, server):
    from samrt.benchmarks.amg import bench_amg
    from samrt.benchmarks.run import _images, run_amg, run_serve
    from samrt.client import SamClient, TritonSamAutomaticMaskGenerator

    paths = run_serve(str(tmp_path / "out"), "tiny", None, quick=True, build_dir=str(tmp_path / "b"),
                      url=server.grpc_url, concurrency=[1, 2], clicks=3, scenarios=("sessions",))
    rows = json.load(open(paths["json"]))["rows"]
    assert [r["concurrency"] for r in rows] == [1, 2] and all(r["dynamic_batching"] == "as served" for r in rows)
    for r in rows:
        assert not r["errors"] and r["timed"] and r["warmup_ms"] > 0
        _check_stats(r["click_to_mask"])
        assert r["click_to_mask"]["n"] == 3 * r["concurrency"]
        assert r["amortized_ms_per_click"] > 0 and r["throughput_clicks_per_s"] > 0
        assert isinstance(r["budget_met_p50"], bool) and r["budget_ms"] == 50.0
    paths = run_amg(str(tmp_path / "amg"), server.grpc_url, None, quick=True, points_per_side=4)
    row = json.load(open(paths["json"]))["rows"][0]
    assert row["images"] == 2 and row["images_per_s"] > 0
    # masks_per_image is the mean number of records per image: counted here for the quick run's images
    images = _images(2)
    with SamClient(server.grpc_url) as c:
        generator = TritonSamAutomaticMaskGenerator(c, points_per_side=4, output_mode="coco_rle")
        assert row["masks_per_image"] == np.mean([len(generator.generate(im)) for im in images])
    # with SAM's filters off, so that the count is not 0 (a random-init model's masks rarely pass them)
    unfiltered = bench_amg(server.grpc_url, images, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert unfiltered[0]["masks_per_image"] > 0


@pytest.mark.triton
def test_interactive_under_load_quick(tmp_path, server):
    from samrt.benchmarks.report import interactive_table
    from samrt.benchmarks.run import run_serve

    paths = run_serve(str(tmp_path / "out"), "tiny", None, quick=True, build_dir=str(tmp_path / "b"),
                      url=server.grpc_url, concurrency=[1], clicks=3, scenarios=("interactive",))
    rows = json.load(open(paths["json"]))["rows"]
    assert [r["protocol"] for r in rows] == ["grpc"]  # a given url is one gRPC endpoint
    for r in rows:
        assert r["bench"] == "interactive" and not r["errors"] and r["timed"]
        _check_stats(r["idle"])
        _check_stats(r["loaded"])
        _check_stats(r["idle_masks_from_server"])  # the A/B: the same idle clicks, masks made by the server
        assert r["idle"]["n"] == r["loaded"]["n"] == r["idle_masks_from_server"]["n"] == 8
        assert r["encodes_during_clicks"] >= 1  # the load really ran while clicking
        assert r["loaded_vs_idle_p50"] > 0 and isinstance(r["met_loaded_ratio"], bool)
        boxes = r["boxes"]  # 64 boxes in one request against one box alone
        assert boxes["boxes_per_request"] == 64 and boxes["many_boxes_request"]["n"] >= 3
        assert boxes["per_prompt_ms"] > 0 and isinstance(boxes["met_no_slower_per_prompt"], bool)
    table = interactive_table(rows)
    assert table.count(" | grpc | ") == 1 and "not measured (external server)" in table


@pytest.mark.triton
def test_new_images_through_the_server_against_onnxruntime_in_process(server, tiny_export, tiny_cfg):
    from samrt.benchmarks.report import new_image_table
    from samrt.benchmarks.serve import TARGET_NEW_IMAGE, new_image_rows
    from samrt.visualize import sample_image

    images = [sample_image(120, 160, seed=900 + i)[0] for i in range(3)]  # new to the session's server
    rows = new_image_rows(server.grpc_url, "grpc", images, tiny_export.encoder_path, tiny_cfg.image_size,
                          {"model": "tiny"})
    (r,) = rows
    assert r["bench"] == "new_image" and r["image"] == [120, 160] and r["timed"]
    assert r["served"]["n"] == r["reference_onnxruntime_fp32"]["n"] == 2  # the first of each: a warm-up
    assert len(r["first_images_ms"]) == 1 and r["first_images_ms"][0] > 0
    _check_stats(r["served"])
    _check_stats(r["reference_onnxruntime_fp32"])
    assert r["vs_reference_p50"] == pytest.approx(r["reference_onnxruntime_fp32"]["p50_ms"] / r["served"]["p50_ms"])
    assert r["met_vs_reference"] == (r["vs_reference_p50"] >= TARGET_NEW_IMAGE)
    r["machine"] = {"cpu": "cpu", "cores": 2}
    assert "ONNX Runtime fp32" in new_image_table(rows) and f"{r['vs_reference_p50']:.2f}×" in new_image_table(rows)
    with pytest.raises(ValueError, match="got 1 images, expected more than the 1 warm-up ones"):
        new_image_rows(server.grpc_url, "grpc", images[:1], None, tiny_cfg.image_size, {})


def test_bench_serve_refuses_an_unknown_scenario(tmp_path):
    from samrt.benchmarks.run import run_serve
    from samrt.errors import SamrtError

    with pytest.raises(SamrtError, match=r"--scenarios: got \['encoder'\], expected some of"):
        run_serve(str(tmp_path), "tiny", None, True, str(tmp_path), "localhost:1", [1], 1, ("encoder",))
    with pytest.raises(SamrtError, match=r"--scenarios: got \[\], expected some of"):
        run_serve(str(tmp_path), "tiny", None, True, str(tmp_path), "localhost:1", [1], 1, ())


@pytest.mark.parametrize("argv, expect", [
    (["--scenarios", ""], "--scenarios: got [], expected some of"),
    (["--scenarios", "encode,,foo"], "--scenarios: got ['foo'], expected some of"),
    (["--concurrency", "x"], "--concurrency: got 'x', expected positive integers"),
    (["--concurrency", "0,2"], "--concurrency: got '0,2', expected positive integers"),
])
def test_bench_serve_cli_says_what_is_wrong_without_a_traceback(tmp_path, capsys, argv, expect):
    from samrt.app.cli import main

    assert main(["bench", "serve", "--url", "localhost:1", "--out", str(tmp_path / "out"), *argv]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bench_refuses_an_out_folder_of_the_user_s_before_it_runs(tmp_path, capsys, monkeypatch):
    from samrt.app.cli import main
    from samrt.benchmarks import run as bench_run

    ran = []
    monkeypatch.setattr(bench_run, "run_upscale", lambda *a, **k: ran.append(a))  # would it run at all?
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["bench", "upscale", "--out", str(mine)]) == 2
    assert ran == []  # refused before the benchmark, not after it
    assert "notes.txt" in capsys.readouterr().err and os.listdir(mine) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep me"


def test_report_says_what_it_needs(tmp_path, capsys):
    from samrt.benchmarks.report import main

    assert main(str(tmp_path / "missing")) == 2
    assert "expected a results folder" in capsys.readouterr().err
    assert main(str(tmp_path)) == 1
    assert "no rows to tabulate" in capsys.readouterr().err


def test_serve_table_ratio_to_reference_and_verdict():
    from samrt.benchmarks.report import serve_table

    def row(protocol, p50, amortized, batching="on"):
        return {"bench": "serve", "model": "m", "clicks_per_session": 4, "dynamic_batching": batching,
                "protocol": protocol, "shared_memory": False, "concurrency": 1,
                "click_to_mask": {"p50_ms": p50, "p90_ms": p50, "p99_ms": p50}, "throughput_clicks_per_s": 1.0,
                "amortized_ms_per_click": amortized, "budget_met_p50": p50 <= 50, "budget_met_amortized": amortized <= 50}

    lines = serve_table([row("in-process (SamPredictor)", 100.0, 400.0, "n/a"), row("grpc", 40.0, 100.0)]).splitlines()
    ref, served = lines[-2], lines[-1]
    assert "| 1.00× / 1.00× |" in ref and "| missed / missed |" in ref
    assert "| 2.50× / 4.00× |" in served and "| met / missed |" in served


@pytest.mark.triton
def test_perf_analyzer_on_sam_decode(tmp_path, server):
    from samrt.benchmarks.perf_analyzer import find_perf_analyzer, run_perf_analyzer, write_decode_input_data
    from samrt.client import SamClient
    from samrt.scenes import scene_for_index

    if not find_perf_analyzer():
        pytest.skip("perf_analyzer is not installed (make perf-analyzer installs it)")
    with SamClient(server.grpc_url) as c:
        enc = c.encode(scene_for_index(0, stream=11, long_side=200).image)
    data = write_decode_input_data(str(tmp_path / "data.json"), enc.image_id, enc.original_size, clicks=4)
    csv = tmp_path / "pa.csv"
    cmd, binary = run_perf_analyzer(server.grpc_url, data, str(csv), concurrency="1:2:1", measurement_ms=1500,
                                    stability_percent=100,  # a busy CI machine: the tool, not the figures
                                    log_path=str(tmp_path / "pa.log"))
    assert binary and cmd[0] == "perf_analyzer"
    lines = open(csv).read().strip().splitlines()
    header = lines[0].split(",")
    assert header[0] == "Concurrency" and "Inferences/Second" in header and len(lines) == 3
    assert all(float(line.split(",")[1]) > 0 for line in lines[1:])  # throughput at concurrency 1 and 2


def test_e2e_steps_measure_their_own_process(tmp_path):
    """`samrt bench e2e` (benchmarks/e2e.py): a step's peak memory is its own process's; a failed
    step names its log; children are found by name; mask IoU of two empty masks is 1."""
    import subprocess
    import sys

    from samrt.benchmarks import e2e
    from samrt.errors import SamrtError

    log = str(tmp_path / "log")
    seconds, peak = e2e._measured([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); "
                                   "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"], log)
    assert seconds > 0 and 300 * 2**20 < peak < 2 * 2**30
    with pytest.raises(SamrtError, match=r"exit status 3, expected 0 \(see .*log\)"):
        e2e._measured([sys.executable, "-c", "import sys; sys.exit(3)"], log)
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert e2e._children(os.getpid(), "sleep") == [child.pid]
        assert e2e._vm_hwm(child.pid) > 0
    finally:
        child.kill()
        child.wait()
    empty = np.zeros((4, 4), bool)
    assert e2e._iou(empty, empty) == 1.0 and e2e._iou(empty, ~empty) == 0.0


@pytest.mark.triton
def test_memory_phases_on_the_session_server(server):
    """`samrt bench memory`'s phases (benchmarks/memory.py) on the running tiny server: every
    phase sees tritonserver and every model's stub, with a positive PSS that sums per model."""
    from samrt.benchmarks.memory import bench_memory
    from samrt.scenes import scene_for_index

    images = [scene_for_index(i, stream=11, long_side=96).image for i in range(4)]
    rows = bench_memory("", images, clients=[2], rounds=1, clicks=1, work_dir="", base={"model": "tiny"},
                        server=server)
    assert [r["phase"] for r in rows] == ["idle", "encode", "load 2 clients", "idle after 2 clients"]
    models = set(server.model_processes())
    for r in rows:
        assert r["model"] == "tiny" and r["processes"] == len(models) + 1
        per_model = r["per_model_peak_mib"]
        assert {"tritonserver", "sam_image_encoder", "sam_mask_decoder", "sam_encode"} <= set(per_model)
        assert all(v > 0 for v in per_model.values())
        assert 0 < r["peak_total_gib"] * 1024 <= sum(per_model.values()) + 1  # the peak of the sum <= sum of peaks


@pytest.mark.slow  # the served encoder and the fast decoder built through the gate (a minute or two)
def test_decoder_quick(tmp_path, tiny_export):
    """`samrt bench decoder` on the tiny model, the fast decoder on OpenVINO bf16: one click, the
    click after a pause, 64 boxes, and (bf16 native) the A/B of the kept tensors; the report's table."""
    import shutil

    from samrt.benchmarks.decoder import PAUSE_S, bench_decoder
    from samrt.benchmarks.report import decoder_table
    from samrt.engines.openvino_engine import bf16_support

    build_dir = tmp_path / "build"
    shutil.copytree(os.path.dirname(tiny_export.encoder_path), build_dir / "export_tiny")
    rows = bench_decoder("tiny", None, str(build_dir), quick=True, variants=(("fast_decoder", "openvino", "bf16"),))
    rows = json.load(open(write_rows(rows, str(tmp_path / "out"), "decoder")["json"]))["rows"]
    enc = next(r for r in rows if r["stage"] == "encoder")
    _check_stats(enc["served_ms"])
    dec = next(r for r in rows if r["stage"] == "decoder")
    assert "error" not in dec, dec
    for key in ("prepare_image", "one_click", "one_click_after_pause", "many_boxes"):
        _check_stats(dec[key])
    assert dec["pause_s"] == PAUSE_S and dec["boxes"] == 64
    assert dec["ms_per_box"] == pytest.approx(dec["many_boxes"]["p50_ms"] / 64)
    if bf16_support()["mode"] == "native":
        ab = dec["one_click_state_ab"]
        _check_stats(ab["bf16"])
        _check_stats(ab["float32"])
        assert ab["bf16"]["n"] == ab["float32"]["n"]
    table = decoder_table(rows)
    assert "| fast_decoder | openvino | bf16 |" in table and "after a 100 ms pause" in table
