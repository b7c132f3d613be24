"""The intended population: stated in the bundle, a DICOM's patient age judged against it in every way in (infer,
the API, serve, the node), and the guard's image-based check for films without an age, fitted and stamped."""

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import pneumo_edge
from conftest import xray_like
from pneumo_edge.cli import main
from pneumo_edge.edge.errors import ModelError
from pneumo_edge.edge.guard import CHECK_WORDS, Guard, PopulationHead
from pneumo_edge.edge.meta import BundleMeta, read_meta
from pneumo_edge.edge.population import AGE_SCORE, Population, age_from_header, format_age, without_age
from pneumo_edge.edge.stamp import graph_bytes
from test_imaging import write_dicom

ADULT_REASON = "patient age 62 Y is outside this model's population (paediatric, 1-5 years)"


def statement(**change) -> dict:
    return {"description": "paediatric, AP films", "age_years": [1, 5], "views": ["AP"],
            "sources": [{"name": "train", "films": 10, "patients": 4}, {"name": "other", "films": 3, "patients": None}],
            **change}


def test_age_from_the_header_age_or_the_dates():
    assert age_from_header("062Y", "19000101", "20240101", None) == 62.0  # PatientAge first
    assert age_from_header("018M", None, None, None) == 1.5 and format_age(1.5) == "18 M"
    assert age_from_header("003W", None, None, None) == pytest.approx(21 / 365.25) and format_age(21 / 365.25) == "21 D"
    assert age_from_header(None, "20200301", "20230301", None) == 3.0  # birthday: completed years exactly
    assert age_from_header(None, "20200302", "20230301", None) < 3.0
    assert age_from_header("", "20200229", None, "20250228") < 5.0 <= age_from_header("", "20200229", None, "20250301")
    assert age_from_header("1961Y", "", "20240101", None) is None  # not an Age String; no birth date
    assert age_from_header("QUIMBY", "QUIMBY", "20240101", None) is None
    assert age_from_header(None, "20250101", "20240101", None) is None  # born after the study
    assert age_from_header(None, "17000101", "20240101", None) is None  # past MAX_AGE: a broken header


def test_the_range_counts_completed_years_and_the_reason_names_it():
    pop = Population.from_meta(statement())
    assert [pop.covers_age(a) for a in (0.99, 1.0, 5.99, 6.0)] == [False, True, True, False]
    assert pop.age_score(62.0) == AGE_SCORE > 1 and pop.age_score(3.0) == 0.0 and pop.age_score(None) is None
    assert pop.age_reason(62.0) == ADULT_REASON and pop.age_reason(4.5) is None
    assert without_age(ADULT_REASON) == "patient age is outside this model's population (paediatric, 1-5 years)"


@pytest.mark.parametrize("field, value, words", [
    ("age_years", [5, 1], "population.age_years"), ("age_years", [1], "population.age_years"),
    ("views", "AP", "population.views"), ("description", "", "population.description"),
    ("sources", [{"name": "x", "films": -1, "patients": 1}], "population.sources[0].films"),
    ("sources", [{"name": "x", "films": 1, "patients": 1.5}], "population.sources[0].patients")])
def test_a_bad_statement_fails_at_load_by_field_name(tiny_bundle, field, value, words):
    meta = read_meta(tiny_bundle / "model.onnx")
    with pytest.raises(ModelError, match=words.replace("[", r"\[").replace("]", r"\]")):
        BundleMeta.from_json(replace(meta, population=statement(**{field: value})).to_json())
    assert BundleMeta.from_json(replace(meta, population=statement()).to_json()).population == statement()


def test_export_states_the_population_and_info_prints_it(tiny_bundle):
    meta = read_meta(tiny_bundle / "model.int8.onnx")
    pop = Population.from_meta(meta.population)
    assert pop.age_years == (1.0, 5.0) and pop.views == ("AP",) and pop.short == "paediatric"
    assert pop.sources[0]["films"] > 0 and pop.sources[0]["patients"] > 0  # the training films, counted
    r = CliRunner().invoke(main, ["info", str(tiny_bundle / "model.int8.onnx")])
    assert r.exit_code == 0 and "population" in r.output and "1 to 5 years" in r.output
    assert "Guangzhou" in r.output and "training films" in r.output


def dicoms(folder, pixels):
    folder.mkdir(parents=True, exist_ok=True)
    chest = {"Modality": "DX", "BodyPartExamined": "CHEST", "PatientName": "QUIMBY^ZEBEDEE"}
    return {"adult": write_dicom(folder / "adult.dcm", pixels, bits=8, stored=8, PatientAge="062Y", **chest),
            "adult_by_dates": write_dicom(folder / "dated.dcm", pixels, bits=8, stored=8, PatientBirthDate="19591231",
                                          StudyDate="20240101", **chest),
            "child": write_dicom(folder / "child.dcm", pixels, bits=8, stored=8, PatientAge="003Y", **chest)}


def test_a_dicom_with_an_adult_age_is_not_assessed_in_infer_the_api_and_serve(tiny_bundle, tmp_path):
    files = dicoms(tmp_path / "in", xray_like(np.random.default_rng(0), False))
    out = tmp_path / "rows.csv"
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "in"), "--model", str(tiny_bundle / "model.onnx"),
                                  "--out", str(out), "-q"])
    assert r.exit_code in (0, 1), r.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}
    for name, age in (("adult.dcm", "62 Y"), ("dated.dcm", "64 Y")):
        row = rows[name]
        assert row["status"] == "rejected" and row["label"] == "REJECTED_OOD" and row["guard_verdict"] == "rejected"
        assert row["guard_reason"].startswith(f"patient age {age} is outside this model's population (paediatric, 1-5")
        assert float(row["guard_score"]) >= AGE_SCORE
    assert "patient age" not in (rows["child.dcm"]["guard_reason"] or "")

    api = pneumo_edge.load(tiny_bundle / "model.int8.onnx")
    got = api.predict([str(files["adult"]), files["adult"].read_bytes(), str(files["child"])])
    assert got[0]["guard_reason"].startswith(ADULT_REASON) and got[1]["guard_reason"].startswith(ADULT_REASON)
    assert "patient age" not in (got[2]["guard_reason"] or "")
    assert pneumo_edge.load(tiny_bundle, guard=False).predict(files["adult"])["guard_verdict"] == "off"

    pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the [test] extra)")
    from fastapi.testclient import TestClient

    from pneumo_edge.edge.serve import ServeConfig, create_app

    app = create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), threads=1))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/predict", files={"file": ("a.dcm", files["adult"].read_bytes(),
                                                            "application/dicom")}).json()
    assert answer["label"] == "REJECTED_OOD" and answer["guard_reason"].startswith(ADULT_REASON)
    assert "QUIMBY" not in json.dumps(answer)


def test_a_file_without_a_statement_judges_no_age(tiny_bundle, tmp_path):
    from pneumo_edge.edge.stamp import stamp_file

    plain = tmp_path / "plain.onnx"
    stamp_file(tiny_bundle / "model.onnx", plain, replace(read_meta(tiny_bundle / "model.onnx"), population=None))
    files = dicoms(tmp_path / "in", xray_like(np.random.default_rng(0), False))
    assert "patient age" not in (pneumo_edge.load(plain).predict(files["adult"])["guard_reason"] or "")


# ---------------------------------------------------------------- the image-based check

def _guard(dim: int = 4) -> Guard:
    rng = np.random.default_rng(0)
    return Guard(means=np.zeros((2, dim)), components=np.eye(dim)[:2], eigvals=np.ones(2), residual_var=1.0,
                 threshold=1e9, stat_lo=np.array([0.0, 0.0, 0.0]), stat_hi=np.array([1.0, 1.0, 8.0]),
                 population=PopulationHead(weights=rng.normal(size=dim), bias=0.0, threshold=0.5, fitted_on="x"))


def test_population_head_fits_scores_round_trips_and_yields_to_a_header_age():
    from pneumo_edge.bundle.guardfit import fit_population

    rng = np.random.default_rng(0)
    inside, outside = rng.normal(0, 1, (400, 6)), rng.normal(0, 1, (40, 6)) + [5, 0, 0, 0, 0, 0]
    head = fit_population(inside, outside, rng.normal(0, 1, (400, 6)), "synthetic", percentile=99.0)
    fresh_in, fresh_out = rng.normal(0, 1, (400, 6)), rng.normal(0, 1, (200, 6)) + [5, 0, 0, 0, 0, 0]
    assert (head.scores(fresh_in) > 1).mean() <= 0.03 and (head.scores(fresh_out) > 1).mean() >= 0.8

    g = _guard()
    again = Guard.from_meta(g.to_meta())
    assert "+population" in g.to_meta()["method"] and again.population.fitted_on == "x"
    imgs = np.full((3, 16, 16), 128, np.uint8)
    emb = np.array([g.population.weights * 5, -g.population.weights * 5, g.population.weights * 5])
    checks = again.check_scores(imgs, emb)
    assert checks["population"][0] > 1 > checks["population"][1]
    aged = again.check_scores(imgs, emb, aged=np.array([False, False, True]))["population"]
    assert aged[0] == checks["population"][0] and aged[2] == 0.0  # judged by its header age instead
    score, why = again.assess(imgs, emb)
    assert CHECK_WORDS["population"] in why[0] and why[1] == ""
    old = {k: v for k, v in g.to_meta().items() if k != "population"}
    assert "population" not in Guard.from_meta(old).check_scores(imgs, emb)



def test_population_threshold_splits_the_margin_with_the_other_population_scored_out_of_fold():
    from pneumo_edge.bundle.guardfit import _logit, fit_population, out_of_fold

    rng = np.random.default_rng(0)
    inside, val = rng.normal(0, 1, (400, 6)), rng.normal(0, 1, (400, 6))
    outside = rng.normal(0, 1, (60, 6)) + [6, 0, 0, 0, 0, 0]
    groups = np.repeat(np.arange(30), 2)  # two films per patient
    plain = fit_population(inside, outside, val, "synthetic")
    split = fit_population(inside, outside, val, "synthetic", outside_groups=groups)
    far = np.percentile(out_of_fold(inside, outside, groups), 5)
    assert _logit(split.threshold) == pytest.approx((_logit(plain.threshold) + far) / 2)
    assert plain.threshold < split.threshold and "out of fold" in split.rule and "out of fold" not in plain.rule
    fresh_in, fresh_out = rng.normal(0, 1, (2000, 6)), rng.normal(0, 1, (500, 6)) + [6, 0, 0, 0, 0, 0]
    assert (split.scores(fresh_in) > 1).mean() < (plain.scores(fresh_in) > 1).mean()
    assert (split.scores(fresh_out) > 1).mean() >= 0.95
    # the rule travels with the check, and a check without it (an older bundle) still loads
    again = PopulationHead.from_meta(split.to_meta(), 6)
    assert again.rule == split.rule and PopulationHead.from_meta(
        {k: v for k, v in split.to_meta().items() if k != "rule"}, 6).rule == ""
    # outside films that do not lie above the validation cut: the validation percentile alone
    near = fit_population(inside, rng.normal(0, 1, (60, 6)), val, "synthetic", outside_groups=groups)
    assert "out of fold" not in near.rule

def adults(folder, patients: int = 12, films: int = 2):
    """Another population, named as site_nih names its films: wide bright chests with ribs."""
    rng = np.random.default_rng(1)
    for p in range(patients):
        for f in range(films):
            label = "PNEUMONIA" if p % 2 else "NORMAL"
            (folder / label).mkdir(parents=True, exist_ok=True)
            h, w = 120, 120
            yy, xx = np.mgrid[0:h, 0:w]
            img = 150 + 60 * np.sin(yy / 3.0) * (np.abs(xx - w / 2) > 15) + rng.normal(0, 8, (h, w))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                folder / label / f"nih_patient{p + 1:08d}_fu{f:03d}.png")
    return folder


def test_guard_population_stamps_the_check_and_measures_it_on_held_out_patients(tiny_bundle, tiny_data, tmp_path):
    from pneumo_edge.edge.model import EdgeModel
    from pneumo_edge.bundle.population_fit import SPLIT_SEED, others_split

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    others = adults(tmp_path / "adults")
    refused = CliRunner().invoke(main, ["bundle", "guard-population", str(bundle), "--data", str(tiny_data),
                                        "--others", str(others)])
    assert refused.exit_code == 2 and "--force" in refused.output
    r = CliRunner().invoke(main, ["bundle", "guard-population", str(bundle), "--data", str(tiny_data), "--others", str(others),
                                  "--force", "-q"])
    assert r.exit_code == 0, r.output
    split = others_split(others, SPLIT_SEED)
    fit_ids = {s.name.split("_fu")[0] for s in split.fit}
    assert fit_ids and not fit_ids & {s.name.split("_fu")[0] for s in split.heldout}  # by patient
    report = json.loads((bundle / "population.json").read_text())
    assert report["others"]["fit"] == {"films": 12, "patients": 6} and report["others"]["heldout"]["patients"] == 6
    for name in ("model.onnx", "model.int8.onnx"):
        assert graph_bytes(bundle / name) == graph_bytes(tiny_bundle / name)
        m = EdgeModel(bundle / name)
        assert m.guard.population is not None and m.meta.population["age_years"] == [1, 5] and m.meta.monitor is None
        f = report["files"][name]
        assert f["threshold"] == pytest.approx(m.guard.population.threshold)
        assert f["heldout"]["films"] == 12 and f["heldout"]["refused_by_population_check"] >= 0.8
        assert f["heldout"]["refused"] >= f["heldout"]["refused_by_population_check"]
        assert f["validation_rejected"]["clean"] <= 0.25
    assert "held-out 12 films of 6 patients" in r.output and "monitor-reference" in r.output


def test_export_fits_the_population_check_with_the_guard(tiny_checkpoint, tiny_data, tmp_path):
    from pneumo_edge.edge.model import EdgeModel
    from pneumo_edge.bundle.export import GateConfig, export

    out = tmp_path / "bundle"
    export(tiny_checkpoint, out, str(tiny_data), GateConfig(int8_min_agreement=0.0, int8_max_auroc_delta=1.0,
                                                            heatmap_int8_min_corr=0.0),
           calib_images=16, progress=False, population_others=str(adults(tmp_path / "adults")))
    report = json.loads((out / "population.json").read_text())
    assert report["others"]["fit"]["patients"] == report["others"]["heldout"]["patients"] == 6
    for name in ("model.onnx", "model.int8.onnx"):
        m = EdgeModel(out / name)
        assert m.guard.population is not None and "6 patients of adults" in m.guard.population.fitted_on
        assert report["files"][name]["threshold"] == pytest.approx(m.guard.population.threshold)
        assert report["files"][name]["heldout"]["refused_by_population_check"] >= 0.8
    assert m.meta.population == report["statement"]


def test_a_population_without_stated_ages_refuses_no_age():
    """A site whose table names no ages: its adapted bundle states none, and no header age is refused."""
    m = {"description": "site x: 10 films of 8 patients, ages not stated", "age_years": None, "views": [],
         "sources": [{"name": "site x", "films": 10, "patients": 8}]}
    pop = Population.from_meta(m)
    assert pop.age_years is None and pop.age_score(62.0) == 0.0 and pop.age_reason(0.5) is None
    assert Population.from_meta(pop.to_meta()) == pop and dict(pop.describe())["  ages"].startswith("not stated")
    with pytest.raises(ModelError, match="age_years"):
        Population.from_meta({**m, "age_years": [5, 1]})
