"""`validate`: the ONNX file itself on a labelled folder, with its stored threshold, temperature and guard."""

import csv
import json
import shutil

import numpy as np
import pytest

from click.testing import CliRunner
from PIL import Image

import pneumo_edge
from pneumo_edge.cli import main
from pneumo_edge.edge.decision import FIELDS
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.site.validate import resampling_groups

PLOTS = ["confusion_matrix.png", "reliability.png", "roc.png"]  # roc.png: ROC with its band beside PR


def validate(*args):
    return CliRunner().invoke(main, ["validate", *map(str, args)])


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_validate_scores_the_onnx_file_with_its_stored_rule(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "v"
    r = validate(tiny_data, "--split", "test", "--model", tiny_bundle / "model.onnx", "--out", out, "--bootstrap", 50)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    meta = read_meta(tiny_bundle / "model.onnx")
    assert m["decision_rule"]["threshold"] == meta.threshold and m["decision_rule"]["temperature"] == meta.temperature
    assert m["data"]["class_counts"] == {"NORMAL": 10, "PNEUMONIA": 10} and m["model"]["quantization"] is None
    assert m["guard"]["applied"] and m["metrics"]["n"] == 20 - m["guard"]["rejected"]
    for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"):
        lo, hi = m["ci95"][k]
        assert lo <= m["metrics"][k] <= hi, k
    assert m["ci_resampling"]["unit"] == "patient" and "patients named in the file names" in r.output
    assert m["plots"] == PLOTS and all((out / p).stat().st_size > 0 for p in PLOTS)

    rows = rows_of(out / "predictions.csv")
    assert list(rows[0]) == ["path", "true_label", *FIELDS] and len(rows) == 20
    api = pneumo_edge.load(tiny_bundle / "model.onnx")
    for row in rows[:3]:  # the numbers the edge gives for the same file
        p = api.predict(row["path"])
        assert float(row["probability"]) == pytest.approx(p["probability"], abs=1e-6) and row["label"] == p["label"]

    again = validate(tiny_data, "--split", "test", "--model", tiny_bundle, "--out", out)
    assert again.exit_code == 2 and "--force" in again.output and len(again.output.strip().splitlines()) == 1


def test_validate_counts_guard_rejections_apart_and_resamples_images_without_patient_ids(tiny_bundle, tiny_data,
                                                                                         tmp_path):
    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):  # names without patient ids, as a hospital export might have
        (site / label).mkdir(parents=True)
        for i, f in enumerate(sorted((tiny_data / "test" / label).iterdir())):
            shutil.copy(f, site / label / f"{label.lower()}{i}.jpeg")
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(site / "NORMAL" / "blank.png")
    (site / "NORMAL" / "notes.txt").write_text("not an image")
    (site / "PNEUMONIA" / "broken.png").write_bytes(b"not a png")

    out = tmp_path / "v"
    r = validate(site, "--model", tiny_bundle, "--out", out, "--bootstrap", 20)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["n_images"] == 21 and [u["path"].rsplit("/", 1)[-1] for u in m["data"]["unreadable"]] == ["broken.png"]
    assert [s["path"].rsplit("/", 1)[-1] for s in m["data"]["not_scored"]] == ["notes.txt"]
    assert m["guard"]["rejected_by_class"]["NORMAL"] >= 1 and m["metrics"]["n"] == 21 - m["guard"]["rejected"]
    assert m["metrics_ignoring_guard"]["n"] == 21
    assert m["ci_resampling"]["unit"] == "image" and "file names carry no patient id" in r.output
    blank = {row["path"].rsplit("/", 1)[-1]: row for row in rows_of(out / "predictions.csv")}["blank.png"]
    assert blank["guard_verdict"] == "rejected" and blank["label"] == "REJECTED_OOD" and blank["true_label"] == "NORMAL"

    plain = validate(site, "--model", tiny_bundle / "model.int8.onnx", "--out", out, "--no-guard", "--bootstrap", 0,
                     "--force")
    assert plain.exit_code == 0, plain.output
    m = json.loads((out / "metrics.json").read_text())
    assert not m["guard"]["applied"] and m["guard"]["rejected"] == 0 and m["metrics"]["n"] == 21 and m["ci95"] is None
    assert "int8" in m["model"]["quantization"].lower() and "int8" in plain.output.lower()


def test_validate_layout_errors_are_one_line_and_point_to_split(tiny_bundle, tiny_data, tmp_path):
    r = validate(tiny_data, "--model", tiny_bundle, "--out", tmp_path / "v")
    assert r.exit_code == 2 and "--split test" in r.output and len(r.output.strip().splitlines()) == 1
    (tmp_path / "one" / "NORMAL").mkdir(parents=True)
    (tmp_path / "one" / "PNEUMONIA").mkdir()
    r = validate(tmp_path / "one", "--model", tiny_bundle, "--out", tmp_path / "v")
    assert r.exit_code == 2 and "holds no image files" in r.output
    assert not (tmp_path / "v").exists()  # nothing written before the inputs were found usable


def test_resampling_groups_by_patient_where_named():
    groups, how = resampling_groups(["a/person3_virus_7.jpeg", "b/person3_bacteria_9.jpeg", "IM-0001-0001.jpeg",
                                     "scan.png"])
    assert groups[0] == groups[1] != groups[2] != groups[3]
    assert how == {"unit": "patient where named, else image", "n_groups": 3, "files_with_patient_id": 3,
                   "patient_ids_from": "the file names"}
