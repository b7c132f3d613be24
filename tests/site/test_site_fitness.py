"""validate's verdict (fit or not fit for a site's films) and calibrate's specificity floor."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from pneumo_edge.cli import main
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.site.validate import specificity_at_sensitivity


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def swapped(tiny_data, tmp_path, split: str):
    """A site whose labels are the other way round: the model ranks it worse than chance."""
    site = tmp_path / f"swapped-{split}"
    for label, other in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL")):
        shutil.copytree(tiny_data / split / label, site / other)
    return site


def test_specificity_at_the_sensitivity_target():
    y = np.r_[np.ones(20), np.zeros(10)].astype(int)
    p = np.r_[np.linspace(0.5, 1.0, 20), np.linspace(0.0, 0.6, 10)]
    c = specificity_at_sensitivity(y, p, 0.95)
    assert c["threshold"] == pytest.approx(p[1]) and c["sensitivity"] == 0.95  # the 19th of 20 positives
    assert c["specificity"] == pytest.approx(np.mean(p[20:] < p[1]))
    assert specificity_at_sensitivity(y[:20], p[:20], 0.95) is None  # one class only


def test_validate_ends_with_a_verdict(tiny_bundle, tiny_data, tmp_path):
    good = cli("validate", tiny_data, "--split", "test", "--model", tiny_bundle / "model.onnx", "--out",
               tmp_path / "good", "--bootstrap", 200, "--auc-floor", 0.6, "--max-refused", 0.5)
    assert good.exit_code == 0, good.output
    v = json.loads((tmp_path / "good" / "metrics.json").read_text())["verdict"]
    m = json.loads((tmp_path / "good" / "metrics.json").read_text())
    assert v["auc_floor"] == 0.6 and v["roc_auc_lower"] == pytest.approx(m["ci95"]["roc_auc"][0])
    assert v["fit"] == (v["roc_auc_lower"] >= 0.6 and v["refused"] <= 0.5)
    assert good.output.strip().splitlines()[-2].startswith("verdict: " + ("FIT" if v["fit"] else "NOT FIT"))
    assert v["at_target_sensitivity"]["target_sensitivity"] == read_meta(tiny_bundle / "model.onnx").target_sensitivity

    bad = cli("validate", swapped(tiny_data, tmp_path, "test"), "--model", tiny_bundle / "model.onnx", "--out",
              tmp_path / "bad", "--bootstrap", 200, "--max-refused", 1.0)
    assert bad.exit_code == 0, bad.output
    v = json.loads((tmp_path / "bad" / "metrics.json").read_text())["verdict"]
    assert not v["fit"] and v["roc_auc_lower"] < 0.8
    line = next(s for s in bad.output.splitlines() if s.startswith("verdict: "))
    assert "NOT FIT" in line and "below the floor 0.80" in line and "leaves specificity" in line

    refused = cli("validate", tiny_data, "--split", "test", "--model", tiny_bundle / "model.onnx", "--out",
                  tmp_path / "refused", "--bootstrap", 0, "--max-refused", 0.0)
    v = json.loads((tmp_path / "refused" / "metrics.json").read_text())["verdict"]
    assert not v["fit"] and "no ROC-AUC interval" in v["words"]


def test_calibrate_refuses_a_bundle_bought_with_specificity(tiny_bundle, tiny_data, tmp_path):
    site = swapped(tiny_data, tmp_path, "train")
    args = ("calibrate", site, "--model", tiny_bundle, "--target-sensitivity", 0.8, "--confidence", 0.8,
            "--count", "films")
    r = cli(*args, "--out", tmp_path / "s", "--min-specificity", 0.9)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "below the floor 0.9" in r.output
    assert f"pneumo-edge adapt {site} --model {tiny_bundle} --out SITE_BUNDLE --site {site.name}" in r.output
    assert not list((tmp_path / "s").glob("*.onnx"))

    forced = cli(*args, "--out", tmp_path / "s2", "--min-specificity", 0.9, "--accept-low-specificity")
    assert forced.exit_code == 0, forced.output
    assert "WARNING" in forced.output and "--accept-low-specificity" in forced.output
    link = read_meta(tmp_path / "s2" / "model.onnx").site_calibration[-1]
    assert link["low_specificity_accepted"] is True and link["min_specificity"] == 0.9 and link["specificity"] < 0.9
    info = cli("info", tmp_path / "s2" / "model.onnx")
    assert "WARNING" in info.output and "below the floor" in info.output

    fine = cli(*args, "--out", tmp_path / "s3", "--min-specificity", 0.0)
    assert fine.exit_code == 0, fine.output
    assert read_meta(tmp_path / "s3" / "model.onnx").site_calibration[-1]["low_specificity_accepted"] is False
