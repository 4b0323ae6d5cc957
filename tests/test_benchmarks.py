"""The benchmarks' quick mode: schema and sanity of the rows (no timing assertions)."""

import json
import os

import pytest

from samrt.benchmarks.common import latency_stats, machine_info, write_rows


def _check_stats(stats):
    assert stats["n"] >= 1 and 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


def test_machine_info_and_rows(tmp_path):
    info = machine_info()
    assert info["cores"] >= 1 and info["cpu"] and "onnxruntime_version" in info
    paths = write_rows([{"bench": "x", **latency_stats([1.0, 2.0, 3.0]), "timed": "t"}], str(tmp_path), "x")
    doc = json.load(open(paths["json"]))
    assert doc["machine"]["cores"] == info["cores"] and doc["rows"][0]["p50_ms"] == 2.0
    assert open(paths["csv"]).readline().strip().split(",")[0]


def test_engines_quick(tmp_path):
    from samrt.benchmarks.run import run_engines

    paths = run_engines(str(tmp_path / "out"), "tiny", None, quick=True, build_dir=str(tmp_path / "build"))
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
    assert os.path.isfile(tmp_path / "out" / "encoder_ladder.png")
    assert os.path.isfile(tmp_path / "out" / "decoder_vs_prompts.png")


@pytest.mark.triton
def test_serve_and_amg_quick(tmp_path, server):
    from samrt.benchmarks.run import run_amg, run_serve

    paths = run_serve(str(tmp_path / "out"), "tiny", None, quick=True, build_dir=str(tmp_path / "b"),
                      url=server.grpc_url, concurrency=[1, 2], clicks=3)
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
    assert row["images"] == 2 and row["images_per_s"] > 0 and row["masks_per_image"] >= 0
