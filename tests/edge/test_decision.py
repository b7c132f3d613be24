"""One record for a scored image: the same names and values in every output, and resume that keeps only ours."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import pneumo_edge
from conftest import xray_like
from pneumo_edge.cli import main
from pneumo_edge.edge.decision import FIELDS, REJECTED, decide, positive
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.edge.outputs import COLUMNS, LEGACY_COLUMNS

BLANK = np.full((96, 96), 128, np.uint8)  # refused by the guard: no texture, one grey level


@pytest.fixture()
def films(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(xray_like(np.random.default_rng(1), True)).save(d / "a.png")
    Image.fromarray(BLANK).save(d / "blank.png")
    return d


def _typed(row: dict) -> dict:
    """A CSV row's cells as the JSON/API types: numbers as floats, empty as None."""
    out = {}
    for k in FIELDS:
        v = row[k]
        out[k] = None if v == "" else float(v) if k in ("probability", "threshold", "guard_score") else v
    return out


def test_decide_is_the_rule(tiny_bundle):
    meta = read_meta(tiny_bundle / "model.onnx")
    t = meta.threshold
    above, below = np.ceil(t * 1e6) / 1e6, np.floor(t * 1e6) / 1e6  # probabilities as recorded: 6 decimals
    assert decide(meta, above).model_label == meta.labels[1] and decide(meta, below).model_label == meta.labels[0]
    assert decide(meta, 0.123456789).probability == 0.123457 and decide(meta, 0.1, 1.00004).guard_verdict == "accepted"
    refused = decide(meta, 0.99, guard_score=1.5, guard_reason="grey levels")
    assert (refused.label, refused.model_label, refused.status, refused.heatmap_allowed) == (REJECTED, meta.labels[1],
                                                                                            "rejected", False)
    assert refused.guard_reason == "grey levels" and decide(meta, 0.99, 0.5, "ignored").guard_reason is None
    assert decide(meta, 0.2).guard_verdict == "off" and list(decide(meta, 0.2).fields()) == list(FIELDS)
    assert positive(np.array([t, t - 1e-9]), t).tolist() == [True, False]


def test_csv_jsonl_api_and_http_carry_the_same_fields_and_values(tiny_bundle, films, tmp_path):
    from fastapi.testclient import TestClient

    from pneumo_edge.edge.serve import ServeConfig, create_app

    model = tiny_bundle / "model.onnx"
    out, js = tmp_path / "p.csv", tmp_path / "p.jsonl"
    r = CliRunner().invoke(main, ["infer", str(films), "--model", str(model), "--out", str(out), "--json", str(js)])
    assert r.exit_code == 0, r.output
    by_csv = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(open(out))}
    by_json = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in js.read_text().splitlines()}
    api = pneumo_edge.load(model)
    with TestClient(create_app(ServeConfig(model=str(model), threads=1)), base_url="http://127.0.0.1") as client:
        for name in ("a.png", "blank.png"):
            data = (films / name).read_bytes()
            http = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"}).json()
            answers = {"csv": _typed(by_csv[name]), "jsonl": {k: by_json[name][k] for k in FIELDS},
                       "api": api.predict(films / name), "http": {k: http[k] for k in FIELDS}}
            for where, got in answers.items():
                assert list(got) == list(FIELDS), where
                assert got == answers["api"], (name, where)
    assert by_csv["blank.png"]["status"] == "rejected" and by_csv["a.png"]["status"] == "ok"
    assert list(by_csv["a.png"]) == list(COLUMNS)


def _infer(model, films, out, *extra):
    return CliRunner().invoke(main, ["infer", str(films), "--model", str(model), "--out", str(out), *extra])


def test_resume_reads_and_rewrites_a_csv_in_the_old_columns(tiny_bundle, films, tmp_path):
    out = tmp_path / "old.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LEGACY_COLUMNS)
        w.writerow([str(films / "a.png"), "0.91", "PNEUMONIA", "ok", "", "0.3", "0.55", "False"])
        w.writerow([str(films / "blank.png"), "0.4", "REJECTED_OOD", "rejected", "guard: grey levels", "2.0", "0.55",
                    "True"])
    r = _infer(tiny_bundle / "model.onnx", films, out, "--resume")
    assert r.exit_code == 0 and "2 already done" in r.output, r.output
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(open(out))}
    assert list(rows["a.png"]) == list(COLUMNS)
    assert rows["a.png"]["probability"] == "0.91" and rows["a.png"]["guard_verdict"] == "accepted"
    assert rows["blank.png"]["guard_reason"] == "grey levels" and rows["blank.png"]["guard_verdict"] == "rejected"


@pytest.mark.parametrize("cell,value", [("label", "=HYPERLINK(\"http://x\")"), ("probability", "1e309"),
                                        ("probability", "1.5"), ("status", "done"), ("guard_verdict", "maybe")])
def test_resume_redoes_a_row_that_is_not_ours(tiny_bundle, films, tmp_path, cell, value):
    out = tmp_path / "p.csv"
    assert _infer(tiny_bundle / "model.onnx", films, out).exit_code == 0
    rows = list(csv.DictReader(open(out)))
    rows[0][cell] = value
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    r = _infer(tiny_bundle / "model.onnx", films, out, "--resume")
    assert r.exit_code == 0 and "1 already done" in r.output and "1 incomplete row(s) re-done" in r.output, r.output
    again = list(csv.DictReader(open(out)))
    assert len(again) == 2 and value not in {v for row in again for v in row.values()}


def test_resume_refuses_rows_of_another_model(tiny_bundle, films, tmp_path):
    out = tmp_path / "p.csv"
    assert _infer(tiny_bundle / "model.onnx", films, out).exit_code == 0
    before = out.read_bytes()
    r = _infer(tiny_bundle / "model.int8.onnx", films, out, "--resume")
    assert r.exit_code == 2 and "another model" in r.output and out.read_bytes() == before
    assert _infer(tiny_bundle / "model.int8.onnx", films, out, "--force").exit_code == 0
