"""The simulated sites behind README's calibration table: patient splits, the guarantee's rate, the command."""

import json

import numpy as np
from click.testing import CliRunner

from pneumo_edge.cli import main
from pneumo_edge.train.perturb import PERTURBATIONS
from pneumo_edge.studies.sites import simulate, site_split


def synthetic_site(rng, n_patients=300):
    groups = np.repeat([f"P{i}" for i in range(n_patients)], 2)  # two films per patient
    y = np.repeat(rng.random(n_patients) < 0.75, 2).astype(int)
    p = np.where(y == 1, rng.random(len(y)), rng.random(len(y)) * 0.3)  # positives uniform: sensitivity at t = 1 - t
    return y, p, groups


def test_site_split_draws_whole_patients_and_halves_them():
    rng = np.random.default_rng(0)
    _, _, groups = synthetic_site(rng)
    cal, held = site_split(groups, 101, rng)
    assert not (cal & held).any() and (cal | held).sum() >= 101
    assert not set(groups[cal]) & set(groups[held])
    assert abs(len(set(groups[cal])) - len(set(groups[held]))) <= 1
    assert site_split(groups, 10_000, rng) is None


def test_simulated_sites_refuse_when_small_and_hold_the_guarantee_when_large():
    rng = np.random.default_rng(1)
    y, p, groups = synthetic_site(rng)
    small = simulate(y, p, groups, 100, current=0.5, splits=50)
    assert small["refused"] == 50 and small["calibrated"] == 0  # ~37 positives per half: 45 are needed
    large = simulate(y, p, groups, 400, current=0.5, splits=200)
    assert large["calibrated"] == 200 and large["threshold_median"] < 0.05
    # the films outside the calibration half estimate the site's sensitivity; the bound holds at 90%
    assert large["below_target_outside_calibration"] <= 0.1 + 3 * large["sampling_error"] + 0.05
    assert large["current_below_target_heldout"] == 1.0  # threshold 0.5: sensitivity about 0.5


def test_site_sim_command_scores_every_perturbation(tiny_bundle, tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["site-sim", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--out",
                                  str(tmp_path), "--size", "6", "--size", "1000", "--splits", "3", "--cache",
                                  str(tmp_path / "cache"), "-q"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "cache").glob("model.onnx-*.npz"))) == 1
    again = CliRunner().invoke(main, ["site-sim", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--out",
                                      str(tmp_path / "again"), "--size", "6", "--size", "1000", "--splits", "3",
                                      "--cache", str(tmp_path / "cache")])
    assert again.exit_code == 0 and "scoring" not in again.output  # resampled from the cached scores
    assert json.loads((tmp_path / "again" / "site-calibration.json").read_text())["sites"] == \
        json.loads((tmp_path / "site-calibration.json").read_text())["sites"]
    res = json.loads((tmp_path / "site-calibration.json").read_text())
    assert list(res["sites"]) == list(PERTURBATIONS) and res["sizes"] == [6, 1000]
    for s in res["sites"].values():
        small, big = s["runs"]
        assert small["refused"] == 3 and not big["feasible"]
    md = (tmp_path / "site-calibration.md").read_text()
    assert "| 6 | 36 | 100.0% |" in md and "zoom-in-0.8" in md and "population sensitivity" in md


def test_the_test_read_is_one_ledger_line_and_streams_every_shift(stamped_bundle, tiny_data, tmp_path):
    from pneumo_edge.train.evaluate import count_ledger

    ledger = tmp_path / "ledger.jsonl"
    r = CliRunner().invoke(main, ["site-sim", "--test-read", "--bundle", str(stamped_bundle), "--data", str(tiny_data),
                                  "--out", str(tmp_path), "--ledger", str(ledger), "-q"])
    assert r.exit_code == 0, r.output
    assert count_ledger(ledger) == 1
    line = json.loads(ledger.read_text())
    assert "changes nothing that ships" in line["note"] and len(line["site_runs"]) == 3
    res = json.loads((tmp_path / "test-read-simulation.json").read_text())
    streams = res["monitoring"]["streams"]
    assert list(streams) == ["contrast-0.6", "gamma-1.6", "zoom-in-0.8", "non-X-ray images"]
    assert streams["contrast-0.6"]["unperturbed_images"] == 20 and streams["non-X-ray images"]["shifted_images"] > 50
    assert (tmp_path / "monitoring-test.png").stat().st_size > 0 and "| 100 |" in (tmp_path / "test-read-simulation.md").read_text()
