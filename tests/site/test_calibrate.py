"""Site calibration: the guarantee's maths, restamping without touching the graph, calibrate -> validate."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import pneumo_edge
from conftest import REAL, needs_real
from pneumo_edge.cli import main
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.edge.sitecal import (fit_temperature, grouped_interval, guaranteed_threshold, lower_bound, nll,
                                      positives_needed)
from pneumo_edge.edge.runtime import file_sha256
from pneumo_edge.edge.stamp import graph_bytes, stamp_file


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def test_clopper_pearson_lower_bound_matches_the_beta_quantile():
    # values of scipy.stats.beta.ppf(1 - confidence, k, n - k + 1)
    assert lower_bound(50, 60, 0.9) == pytest.approx(0.7548886617327341, abs=1e-9)
    assert lower_bound(99, 100, 0.9) == pytest.approx(0.961660502504613, abs=1e-9)
    assert lower_bound(45, 45, 0.9) == pytest.approx(0.1 ** (1 / 45))
    assert lower_bound(0, 10, 0.9) == 0.0
    assert positives_needed(0.95, 0.90) == 45 and positives_needed(0.9, 0.95) == 29


def test_the_threshold_guarantees_sensitivity_at_the_stated_confidence():
    """Positives' scores uniform: the population sensitivity at t is 1 - t, known exactly."""
    rng = np.random.default_rng(0)
    target, confidence, trials = 0.9, 0.8, 2000
    below = 0
    for _ in range(trials):
        t = guaranteed_threshold(rng.random(60), target, confidence)
        assert t.ok and t.lower_bound >= target and t.detected <= 60
        below += (1 - t.threshold) < target
    rate, se = below / trials, np.sqrt(0.2 * 0.8 / trials)
    assert rate <= 1 - confidence + 3 * se  # the guarantee holds
    assert rate > 1 - confidence - 0.1  # and is not vacuous (an exact bound is nearly tight)


def test_too_few_positives_refuses_and_the_threshold_is_the_kth_largest():
    t = guaranteed_threshold(np.linspace(0.5, 1, 44), 0.95, 0.9)
    assert not t.ok and t.needed == 45
    p = np.linspace(0.01, 1.0, 100)
    t = guaranteed_threshold(p, 0.95, 0.9)
    assert t.threshold == p[::-1][t.detected - 1] and (p >= t.threshold).sum() == t.detected == 99


def test_patients_count_once_by_their_lowest_film():
    p = np.r_[np.linspace(0.6, 1.0, 45), np.linspace(0.6, 1.0, 45) - 0.05]  # two films per patient
    groups = np.r_[np.arange(45), np.arange(45)].astype(str)
    t = guaranteed_threshold(p, 0.95, 0.9, groups)
    assert t.unit == "patients" and t.n_positive == 45 and t.n_positive_films == 90 and t.detected == 45
    assert t.threshold == pytest.approx(0.55)  # every film of every patient caught: the lowest film sets it
    assert guaranteed_threshold(p, 0.95, 0.9).unit == "films"
    assert guaranteed_threshold(p, 0.95, 0.9, np.arange(90).astype(str)).unit == "films"  # one film each
    keep = groups != "44"
    assert not guaranteed_threshold(p[keep], 0.95, 0.9, groups[keep]).ok  # 44 patients: 45 are needed


def test_the_patient_rule_keeps_the_guarantee_where_films_of_a_patient_move_together():
    """Each patient's three films score alike (population: P(film >= t) = 1 - t). Counting films as
    independent trials overstates the evidence and breaks the guarantee; counting patients keeps it."""
    rng = np.random.default_rng(0)
    target, confidence, trials = 0.9, 0.8, 400
    below = {"films": 0, "patients": 0}
    for _ in range(trials):
        u = rng.random(20)
        p = np.clip(u[:, None] + rng.normal(0, 0.01, (20, 3)), 0, 1).ravel()
        groups = np.repeat(np.arange(20), 3)
        for unit, g in (("films", None), ("patients", groups)):
            t = guaranteed_threshold(p, target, confidence, g)
            assert t.ok and t.unit == unit
            below[unit] += (1 - t.threshold) < target
    se = np.sqrt(0.2 * 0.8 / trials)
    assert below["patients"] / trials <= 1 - confidence + 3 * se
    assert below["films"] / trials > 1 - confidence + 3 * se


def test_grouped_interval_and_temperature_fit():
    hits = np.r_[np.ones(40), np.zeros(10)]
    lo, hi = grouped_interval(hits)
    assert lo < 0.8 < hi
    groups = np.repeat(np.arange(10), 5)  # every patient all-hit or all-miss: wider interval
    glo, ghi = grouped_interval(hits, groups)
    assert ghi - glo > hi - lo
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z / 2.0))).astype(float)  # true temperature 2
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.15) and nll(z, y, t) <= nll(z, y, 1.0)


def test_stamp_rewrites_metadata_only(tiny_bundle, tmp_path):
    import onnx
    from dataclasses import replace

    from pneumo_edge.edge.model import EdgeModel

    src = tiny_bundle / "model.int8.onnx"
    meta = read_meta(src)
    stamp_file(src, tmp_path / "m.onnx", replace(meta, threshold=0.123, site_calibration=[{"site": "x"}]))
    assert graph_bytes(src) == graph_bytes(tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    again = read_meta(tmp_path / "m.onnx")
    assert again.threshold == 0.123 and again.site_calibration == [{"site": "x"}] and again.ood == meta.ood
    x = np.random.default_rng(0).normal(size=(2, 1, 64, 64)).astype(np.float32)
    a, b = EdgeModel(src).run(x), EdgeModel(tmp_path / "m.onnx").run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_calibrate_then_validate_round_trip(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "site"
    r = cli("calibrate", tiny_data, "--split", "train", "--model", tiny_bundle, "--out", out, "--site", "ward 3",
            "--target-sensitivity", 0.8, "--confidence", 0.8, "--refit-temperature",
            "--min-specificity", 0)  # the tiny model separates little: no floor here (test_site_fitness has it)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "calibration.json").read_text())
    assert sorted(f["file"] for f in report["files"]) == ["model.int8.onnx", "model.onnx"]
    for f in report["files"]:
        link, op = f["link"], f["operating_point"]
        meta = read_meta(out / f["file"])
        assert meta.threshold == link["threshold"] == op["threshold"] and meta.target_sensitivity == 0.8
        assert meta.site_calibration[-1] == link and link["site"] == "ward 3"
        assert link["parent_sha256"] == file_sha256(tiny_bundle / f["file"])
        assert graph_bytes(out / f["file"]) == graph_bytes(tiny_bundle / f["file"]) and meta.ood is not None
        assert op["sensitivity_lower_bound"] >= 0.8 and op["detected"] <= op["n_positive_units"]
        if op["guarantee_unit"] == "films":
            assert op["site"]["sensitivity"] >= op["detected"] / op["n_positive"]
        assert op["positives_needed"] == positives_needed(0.8, 0.8) and "current" in op
    assert "site threshold" in r.output and "specificity" in r.output and "patients" in r.output

    v = cli("validate", tiny_data, "--split", "test", "--model", out / "model.onnx", "--out", tmp_path / "v",
            "--bootstrap", 0)
    assert v.exit_code == 0, v.output
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["decision_rule"]["threshold"] == read_meta(out / "model.onnx").threshold
    assert pneumo_edge.load(out).predict(next((tiny_data / "test" / "NORMAL").iterdir()))["threshold"] == \
        m["decision_rule"]["threshold"]

    info = cli("info", out / "model.int8.onnx")
    assert info.exit_code == 0 and "site calibration 1" in info.output and "ward 3" in info.output
    assert file_sha256(tiny_bundle / "model.int8.onnx") in info.output

    chained = cli("calibrate", tiny_data, "--split", "train", "--model", out / "model.onnx", "--out", tmp_path / "s2",
                  "--target-sensitivity", 0.8, "--confidence", 0.8, "--count", "films", "--min-specificity", 0, "-q")
    assert chained.exit_code == 0, chained.output
    chain = read_meta(tmp_path / "s2" / "model.onnx").site_calibration
    assert len(chain) == 2 and chain[1]["parent_sha256"] == file_sha256(out / "model.onnx")
    assert chain[1]["count"] == "films" and "positive films" in chain[1]["rule"]


def test_calibrate_refuses_with_the_number_of_positives_needed(tiny_bundle, tiny_data, tmp_path):
    r = cli("calibrate", tiny_data, "--split", "test", "--model", tiny_bundle, "--out", tmp_path / "s")
    assert r.exit_code == 2 and "needs at least 45" in r.output and len(r.output.strip().splitlines()) == 1
    assert not list((tmp_path / "s").glob("*.onnx"))
    again = cli("calibrate", tiny_data, "--split", "test", "--model", tiny_bundle, "--out", tiny_bundle)
    assert again.exit_code == 2 and "--force" in again.output
    before = {n: file_sha256(tiny_bundle / n) for n in ("model.onnx", "model.int8.onnx")}
    forced = cli("calibrate", tiny_data, "--split", "train", "--model", tiny_bundle, "--out", tiny_bundle, "--force")
    assert forced.exit_code == 2 and "folder of its own" in forced.output
    assert {n: file_sha256(tiny_bundle / n) for n in before} == before  # the bundle is untouched


@needs_real
def test_calibrate_on_real_validation_films(tmp_path):
    """A slice of the shipped model's validation films as a site, checked by validate on another slice."""
    from pneumo_edge.train.data import patient_id
    from pneumo_edge.site.monitoring import validation_paths

    from pathlib import Path

    paths = validation_paths(Path("export"), str(REAL))
    by_patient = {}
    for p in paths:
        by_patient.setdefault(patient_id(Path(p).name), []).append(p)
    room = {"cal": 170, "held": 60}  # films: a slice, enough for the 45 positives the guarantee needs
    patients = sorted(by_patient.items())
    for i in np.random.default_rng(0).permutation(len(patients)):  # both classes in both halves
        files = patients[i][1]
        half = "cal" if i % 2 == 0 else "held"
        if room[half] <= 0:
            continue
        room[half] -= len(files)
        for f in files:
            label = Path(f).parent.name
            (tmp_path / half / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / half / label / Path(f).name).symlink_to(Path(f).resolve())
    r = cli("calibrate", tmp_path / "cal", "--model", "export/model.int8.onnx", "--out", tmp_path / "site", "-q")
    if r.exit_code == 2:  # the specificity floor: with ~45 positive patients the guarantee must catch every one
        assert "add positive patients" in r.output and "adapt" not in r.output, r.output
        r = cli("calibrate", tmp_path / "cal", "--model", "export/model.int8.onnx", "--out", tmp_path / "site", "-q",
                "--accept-low-specificity", "--force")
    assert r.exit_code == 0, r.output
    op = json.loads((tmp_path / "site" / "calibration.json").read_text())["files"][0]["operating_point"]
    assert op["n_positive"] >= 45 and op["sensitivity_lower_bound"] >= 0.95
    v = cli("validate", tmp_path / "held", "--model", tmp_path / "site" / "model.int8.onnx", "--out", tmp_path / "v",
            "--bootstrap", 0, "-q")
    assert v.exit_code == 0, v.output
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["decision_rule"]["threshold"] == op["threshold"] and m["metrics"]["sensitivity"] >= 0.9


def test_calibrate_runs_on_the_edge_install(tiny_bundle, tiny_data, tmp_path):
    """No torch, scikit-learn, scipy or onnx: a site box can recalibrate with what it runs."""
    from conftest import run_cli_without_torch

    r = run_cli_without_torch(["calibrate", tiny_data, "--split", "train", "--model", tiny_bundle / "model.int8.onnx",
                               "--out", tmp_path / "s", "--target-sensitivity", 0.8, "--confidence", 0.8,
                               "--min-specificity", 0, "-q"],
                              cwd=tmp_path, also_block=("sklearn", "scipy", "onnx"))
    assert r.returncode == 0, r.stderr
    assert graph_bytes(tmp_path / "s" / "model.int8.onnx") == graph_bytes(tiny_bundle / "model.int8.onnx")
