"""Drift monitoring: the rolling window, the alarm band's false-alarm rate, /metrics, the reference in the
bundle, and `pneumo-edge monitor` over infer rows."""

import csv
import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from pneumo_edge.cli import main
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.edge.monitor import Monitor, Reference, fit_reference, replay
from pneumo_edge.edge.stamp import graph_bytes


def draw(rng, n, shift=1.0):
    """Probabilities and guard scores shaped like a model's: most near 0 or 1, guard scores around 0.4."""
    z = np.where(rng.random(n) < 0.7, rng.normal(4, 2, n), rng.normal(-4, 2, n))
    return 1 / (1 + np.exp(-z)), rng.gamma(8, 0.05, n) * shift


@pytest.fixture(scope="module")
def reference():
    p, g = draw(np.random.default_rng(0), 500)
    return fit_reference(p, g, p >= 0.5, g > 1, fitted_on="synthetic", simulations=400)


def feed(mon, p, g, threshold=0.5):
    rows = [(pi, gi, "REJECTED_OOD" if gi > 1 else "PNEUMONIA" if pi >= threshold else "NORMAL", gi > 1)
            for pi, gi in zip(p, g)]
    return replay(mon, rows)


def test_in_distribution_streams_rarely_trip_the_alarm(reference):
    rng = np.random.default_rng(1)
    tripped = 0
    for _ in range(40):
        mon = Monitor(reference)
        feed(mon, *draw(rng, reference.stream_images))
        tripped += mon.trips > 0
    # stated: 5% of 1000-image streams; new draws of the same distribution, not the reference films
    assert tripped <= 6
    assert reference.alarm_threshold >= reference.alarm_threshold_probability_only > 0


def test_a_shift_trips_the_alarm_and_logs_one_warning(reference, caplog):
    rng = np.random.default_rng(2)
    mon = Monitor(reference)
    with caplog.at_level(logging.WARNING, logger="pneumo_edge.monitor"):
        feed(mon, *draw(rng, 300))
        assert not mon.alarm and mon.statistic is not None
        trace = feed(mon, *draw(rng, 400, shift=2.0))
    assert mon.alarm and mon.trips == 1
    first = next(i for i, t in enumerate(trace) if t["alarm"])
    assert first < 200  # before the window is all shifted films
    warnings = [r for r in caplog.records if "drift alarm" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    s = mon.snapshot()
    assert s["alarm"] and s["statistic"] > s["alarm_threshold"] and s["totals"]["images"] == 700
    assert s["window_images"] == 200 and set(s["components"]) == {"probability", "guard_score"}


def test_the_alarm_holds_until_a_whole_window_is_back_below_its_band(reference, caplog):
    """A shift that comes and goes while the statistic hovers at the band is one episode and one warning;
    the alarm clears only once a full window of in-distribution images has replaced the shifted ones."""
    rng = np.random.default_rng(4)
    mon = Monitor(reference)
    with caplog.at_level(logging.WARNING, logger="pneumo_edge.monitor"):
        feed(mon, *draw(rng, 300))
        trace = []
        for _ in range(3):  # the shift in bursts: the statistic rises and falls around the band
            trace += feed(mon, *draw(rng, 150, shift=2.0))
            trace += feed(mon, *draw(rng, 230))
        raw_crossings = sum(1 for a, b in zip(trace, trace[1:])
                            if b["statistic"] > mon.band() >= a["statistic"])
        assert mon.alarm and mon.trips == 1 and raw_crossings >= 2  # without the hold: several trips
        tail = feed(mon, *draw(rng, 2 * mon.window))
    assert not mon.alarm and mon.trips == 1
    full = trace + tail
    last_shifted = len(trace) - 230 - 1
    off = next(i for i, t in enumerate(full) if i > last_shifted and not t["alarm"])
    assert off - last_shifted >= mon.window  # a whole window after the last shifted image, not before
    assert len([r for r in caplog.records if "drift alarm" in r.getMessage()]) == 1


def test_guard_off_uses_the_probability_band_and_no_reference_still_reports_rates(reference):
    mon = Monitor(reference)
    p, _ = draw(np.random.default_rng(3), 250)
    for pi in p:
        mon.observe(pi, None, "PNEUMONIA" if pi >= 0.5 else "NORMAL", False)
    assert mon.band() == reference.alarm_threshold_probability_only and mon.statistic is not None
    bare = Monitor(None)
    bare.observe(0.9, 0.3, "PNEUMONIA", False)
    bare.observe(0.2, 2.0, "REJECTED_OOD", True)
    s = bare.snapshot()
    assert s["positive_rate"] == 0.5 and s["refusal_rate"] == 0.5 and "unavailable" in s["drift"]
    assert not bare.alarm and s["totals"] == {"images": 2, "positive": 1, "negative": 0, "rejected": 1}


def test_reference_round_trips_and_follows_a_new_temperature(reference):
    again = Reference.from_meta(json.loads(json.dumps(reference.to_meta())))
    assert np.array_equal(again.prob_edges, reference.prob_edges) and again.alarm_threshold == reference.alarm_threshold
    p, _ = draw(np.random.default_rng(4), 100)
    z = np.log(p) - np.log1p(-p)  # margins at T = 1
    moved = reference.retempered(1.0, 2.0)
    assert np.array_equal(np.searchsorted(reference.prob_edges, p), np.searchsorted(moved.prob_edges,
                                                                                     1 / (1 + np.exp(-z / 2))))


def test_monitor_reference_restamps_metadata_only(stamped_bundle, tiny_bundle):
    for name in ("model.onnx", "model.int8.onnx"):
        assert graph_bytes(stamped_bundle / name) == graph_bytes(tiny_bundle / name)
        meta, before = read_meta(stamped_bundle / name), read_meta(tiny_bundle / name)
        assert meta.monitor["window"] == 200 and meta.monitor["n_reference"] > 0
        assert meta.threshold == before.threshold and meta.ood == before.ood
    info = CliRunner().invoke(main, ["info", str(stamped_bundle)])
    assert info.exit_code == 0 and "reference fitted on validation" in info.output


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("which", ["plain", "stamped"])
def test_metrics_counters_move_as_requests_arrive(which, tiny_bundle, stamped_bundle):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pneumo_edge.edge.serve import ServeConfig, create_app
    from test_serve import LOCAL, encoded

    bundle = tiny_bundle if which == "plain" else stamped_bundle
    with TestClient(create_app(ServeConfig(model=str(bundle / "model.onnx"), threads=1)), base_url=LOCAL) as c:
        before = c.get("/metrics")
        assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
        assert metric(before.text, "pneumo_edge_window_images") == 0
        labels = [c.post("/v1/predict", files={"file": ("x.png", encoded("PNG", pneumonia=i % 2 == 1, seed=i),
                                                        "image/png")}).json()["label"] for i in range(3)]
        after = c.get("/metrics").text
    counted = {k: metric(after, f'pneumo_edge_images_total{{outcome="{k}"}}') for k in ("positive", "negative",
                                                                                       "rejected")}
    assert sum(counted.values()) == 3 and counted["positive"] == labels.count("PNEUMONIA")
    assert counted["rejected"] == labels.count("REJECTED_OOD") and metric(after, "pneumo_edge_window_images") == 3
    assert metric(after, "pneumo_edge_drift_reference_available") == (which == "stamped")
    if which == "stamped":
        assert metric(after, "pneumo_edge_drift_alarm_threshold") > 0
        assert 'pneumo_edge_bin_share{bin="0",score="probability",set="reference"}' in after
    else:
        assert "pneumo_edge_drift_statistic" not in after


def write_rows(path, p, g, threshold=0.5):
    """infer's CSV: scored rows through the same encoder, then one error row."""
    from pneumo_edge.edge.outputs import CsvFormat

    rows = []
    for i, (pi, gi) in enumerate(zip(p, g)):
        rejected, model_label = gi > 1, "PNEUMONIA" if pi >= threshold else "NORMAL"
        rows.append({"path": f"x{i}.png", "status": "rejected" if rejected else "ok",
                     "label": "REJECTED_OOD" if rejected else model_label, "model_label": model_label,
                     "probability": round(pi, 6), "threshold": threshold, "guard_score": round(gi, 4),
                     "guard_verdict": "rejected" if rejected else "accepted"})
    rows.append({"path": "broken.png", "status": "error", "error": "not an image"})
    path.write_text(CsvFormat.header + CsvFormat.encode(rows))


def test_monitor_command_replays_csv_and_parquet_rows(stamped_bundle, tmp_path):
    meta = read_meta(stamped_bundle / "model.onnx")
    ref = Reference.from_meta(meta.monitor)
    rng = np.random.default_rng(5)
    # films like the reference's own (resampled), then films whose guard scores all lie past its top decile
    edges = np.r_[0.0, ref.prob_edges, 1.0]
    idx = rng.choice(len(ref.prob_freq), 600, p=ref.prob_freq)
    p = rng.uniform(edges[idx], edges[idx + 1])
    gedges = np.r_[0.0, ref.guard_edges, ref.guard_edges[-1] * 1.01]
    gi = rng.choice(len(ref.guard_freq), 600, p=ref.guard_freq)
    g = rng.uniform(gedges[gi], gedges[gi + 1])
    g[300:] = ref.guard_edges[-1] * rng.uniform(1.1, 1.5, 300)
    write_rows(tmp_path / "rows.csv", p, g, meta.threshold)
    r = CliRunner().invoke(main, ["monitor", str(tmp_path / "rows.csv"), "--model", str(stamped_bundle),
                                  "--out", str(tmp_path / "m.png")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "m.json").read_text())
    assert s["images"] == 600 and s["alarm"] and 300 < s["first_alarm_at"] < 500
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, ["monitor", str(tmp_path / "rows.csv"), "--model", str(stamped_bundle),
                                      "--out", str(tmp_path / "m.png")])
    assert again.exit_code == 2 and "--force" in again.output

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    pr = CliRunner().invoke(main, ["monitor", str(tmp_path / "rows.parquet"), "--model", str(stamped_bundle),
                                   "--out", str(tmp_path / "p.png")])
    assert pr.exit_code == 0, pr.output
    assert json.loads((tmp_path / "p.json").read_text())["first_alarm_at"] == s["first_alarm_at"]
