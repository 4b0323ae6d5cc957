"""`samrt bench upscale` in quick mode: schema and sanity of the rows (no timing assertions)."""

import json

from samrt.benchmarks.upscale import BUDGET_MS

METHODS = {"banded-matmul", "banded-matmul first call", "numpy fancy indexing", "torch F.interpolate"}


def test_upscale_quick(tmp_path):
    from samrt.benchmarks.run import run_upscale

    paths = run_upscale(str(tmp_path / "out"), quick=True)
    rows = json.load(open(paths["json"]))["rows"]
    assert {r["method"] for r in rows} == METHODS
    for r in rows:
        assert r["bench"] == "upscale" and r["timed"] and r["machine"]["cpu"]
        assert r["original_size"] == [48, 64] and r["masks"] == 3 and r["image_size"] == 64
        assert r["n"] >= 1 and 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert 0.0 <= r["max_abs_diff_vs_torch"] <= 1e-4
    steady = next(r for r in rows if r["method"] == "banded-matmul")
    assert steady["warmup_ms"] > 0 and steady["budget_ms"] == BUDGET_MS
    assert steady["budget_met_p50"] == (steady["p50_ms"] <= BUDGET_MS)
    first = next(r for r in rows if r["method"] == "banded-matmul first call")
    assert first["build_weights_p50_ms"] > 0
    assert open(paths["csv"]).readline().startswith("bench,")
