import json

import numpy as np
import pytest
from click.testing import CliRunner

from pneumo_edge.benchmarks.variants import BenchConfig, cpu_info, run_benchmark
from pneumo_edge.cli import main

COLUMNS = ("variant", "threads", "batch", "iters", "p50_ms", "p95_ms", "p99_ms", "images_per_s", "size_mb",
           "roc_auc", "accuracy", "floor_ms", "x_floor", "speedup_vs_eager")


def test_bench_smoke_writes_complete_results(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "results"
    ledger = tmp_path / "ledger.jsonl"
    res = run_benchmark(BenchConfig(bundle=str(tiny_bundle), data=str(tiny_data), out=str(out), iters=3,
                                    batch_iters=2, warmup=1, ledger=str(ledger)))
    (line,) = ledger.read_text().splitlines()  # the test split's labels were read: one ledger line
    assert json.loads(line)["kind"] == "latency benchmark"
    files = sorted(p.suffix for p in out.iterdir())
    assert files == [".json", ".md", ".png"]
    saved = json.loads(next(out.glob("*.json")).read_text())
    assert saved["rows"] == res["rows"]
    variants = {r["variant"] for r in res["rows"]}
    assert variants == {"pytorch-eager-fp32", "onnxruntime-fp32", "onnxruntime-int8"}
    assert len(res["rows"]) == 3 * 2 * 2  # variants x threads x batches
    for r in res["rows"]:
        for c in COLUMNS:
            assert r[c] is not None and (isinstance(r[c], str) or r[c] > 0), (c, r)
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert res["macs"] > 0 and res["end_to_end_model.int8.onnx"]["images_per_s"] > 0
    f = res["features_output"]  # the heat-map output's cost, against the same graph without it
    assert f["available"] and set(f["p50_ms"]) == {"without_output", "with_output_not_fetched", "with_output_fetched"}
    assert f["ratio_not_fetched"] > 0 and "Heat-map output" in (out / next(out.glob("*.md")).name).read_text()
    cpu = cpu_info()
    assert cpu["cores"] >= 1 and res["env"]["onnxruntime"] in next(out.glob("*.json")).name


def test_bench_cli_asserts_minimums(tiny_bundle, tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["bench", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--out",
                                  str(tmp_path / "r"), "--smoke", "--min-auroc", "1.01", "--ledger",
                                  str(tmp_path / "ledger.jsonl")])
    assert r.exit_code == 4 and "ROC-AUC" in r.output and "<" in r.output


def test_bench_memory_refuses_bombs_and_measures_films_at_the_limit(tiny_bundle, tmp_path):
    """End to end: one DICOM at the pixel limit decodes, one declaring 256 Mpx is refused from its header."""
    r = CliRunner().invoke(main, ["bench-memory", "--model", str(tiny_bundle / "model.onnx"), "--out", str(tmp_path),
                                  "--files", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "decode-memory.json").read_text())
    assert res["folder"]["largest_file_mb"] < 2  # the bombs really are small on disk
    runs = {(r["set"], r["workers"]): r for r in res["runs"]}
    for w in (1, 2):
        films, bombs = runs[("films", w)], runs[("bombs", w)]
        assert films["rows"] == films["classified"] == 1 and bombs["rows"] == bombs["refused"] == 1
        assert films["over_baseline_mb"] > 100  # 128 MB of 16-bit pixels were decoded, and it shows
        assert bombs["over_baseline_mb"] < 100  # refused before its 512 MB were inflated or decoded
    sparse, lying, frame = (runs[(name, 1)] for name in ("sparse_element", "lying_length", "jpeg_frame"))
    assert res["header_bombs"]["sparse_element"]["bytes"] > 1 << 30 > res["header_bombs"]["sparse_element"]["on_disk_bytes"]
    assert sparse["classified"] == 1 and lying["refused"] == frame["refused"] == 1
    assert all(r["over_baseline_mb"] < 300 for r in (sparse, lying, frame))  # the 1 GiB element was never read


def test_bench_pipeline_times_infer_against_a_bare_session(tmp_path):
    from pathlib import Path

    xrays = Path(__file__).resolve().parents[2] / "examples" / "xrays"
    r = CliRunner().invoke(main, ["bench-pipeline", "--images", str(xrays), "--out", str(tmp_path), "--rounds", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "pipeline.json").read_text())
    assert res["images"] == 16 and set(res["best_seconds"]) == {"bare_session", "bare_session_spinning", "infer"}
    ratio = res["best_seconds"]["bare_session"] / res["best_seconds"]["infer"]  # from seconds rounded to 1 ms
    assert res["throughput_ratio"] == pytest.approx(ratio, abs=0.01)
    assert "of the bare session's throughput" in (tmp_path / "pipeline.md").read_text()
    missing = CliRunner().invoke(main, ["bench-pipeline", "--images", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "not a folder" in missing.output


def test_bench_paths_point_into_the_checkout():
    """The benches read films and protocols from the checkout by path: a moved module must still find them."""
    from pneumo_edge.benchmarks import node, node_bounds
    from pneumo_edge.studies import heatmaps

    assert node_bounds.REPO == node.ROOT and (node.ROOT / "pyproject.toml").is_file()
    assert sorted((node_bounds.REPO / "examples" / "xrays").rglob("*.jpeg"))
    assert heatmaps.PROTOCOL.is_file()
