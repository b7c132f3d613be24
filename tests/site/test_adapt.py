"""`pneumo-edge adapt`: a site's patients split, a head refitted in numpy and written into both ONNX files."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import run_cli_without_torch, xray_like
from pneumo_edge.site.adapt import PARTS, split_patients
from pneumo_edge.cli import main
from pneumo_edge.edge.head import body_without_head, read_head
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.edge.runtime import file_sha256

LOW = ["--target-sensitivity", "0.8", "--confidence", "0.8", "--bootstrap", "50"]  # 8 positive patients suffice


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def make_site(root, patients: int = 30, films: int = 2, seed: int = 1):
    """A labelled site whose file names carry no patient: metadata.csv names them, with a view and an age."""
    rng = np.random.default_rng(seed)
    rows = ["file,patient_id,view_position,patient_age"]
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for p in range(patients):
            for k in range(films):
                name = f"{label}/scan{rng.integers(1e9):09d}.png"
                Image.fromarray(xray_like(rng, label == "PNEUMONIA")).save(root / name)
                rows.append(f"{name},{label[0]}{p},{'AP' if p % 2 else 'PA'},{30 + p}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_split_is_by_patient_stratified_and_fixed_by_the_seed():
    groups = np.repeat([f"p{i}" for i in range(100)], 3)
    y = np.repeat((np.arange(100) < 40).astype(int), 3)
    part = split_patients(groups, y, (0.5, 0.3), seed=0)
    assert all(len(set(part[groups == g])) == 1 for g in set(groups))  # every film of a patient in one part
    for cls, n in ((1, 40), (0, 60)):
        per_part = [len(set(groups[(part == k) & (y == cls)])) for k in range(3)]
        assert per_part == [round(0.5 * n), round(0.3 * n), n - round(0.5 * n) - round(0.3 * n)]
    assert np.array_equal(part, split_patients(groups, y, (0.5, 0.3), seed=0))
    assert not np.array_equal(part, split_patients(groups, y, (0.5, 0.3), seed=1))


def test_adapt_head_refit_end_to_end(tiny_bundle, tmp_path):
    site = make_site(tmp_path / "site")
    out = tmp_path / "adapted"
    r = cli("adapt", site, "--model", tiny_bundle, "--out", out, "--site", "ward 9", *LOW, "-q")
    assert r.exit_code == 0, r.output
    assert "view AP" in r.output and "ROC-AUC before" in r.output and "held-out" in r.output
    report = json.loads((out / "adaptation.json").read_text())
    assert report["split"]["unit"] == "patients" and report["split"]["patient_ids_from"].startswith("metadata.csv")
    parts = report["split"]["parts"]
    assert sum(parts[k]["patients"] for k in PARTS) == 60 and sum(parts[k]["films"] for k in PARTS) == 120
    for name in ("model.onnx", "model.int8.onnx"):
        parent, child = tiny_bundle / name, out / name
        assert body_without_head(child) == body_without_head(parent)  # the rest of the graph: the parent's bytes
        assert not np.array_equal(read_head(child).weight, read_head(parent).weight)
        meta, f = read_meta(child), report["files"][name]
        assert meta.threshold == f["threshold"] and meta.temperature == 1.0
        link = meta.site_calibration[-1]
        assert link["kind"] == "adaptation" and link["site"] == "ward 9" and link["split"]["seed"] == 0
        assert link["parent_sha256"] == file_sha256(parent) and link["sensitivity_lower_bound"] >= 0.8
        assert meta.population["sources"][-1] == {"name": "ward 9", "films": 120, "patients": 60}
        assert meta.population["views"] == ["AP", "PA"] and meta.monitor["fitted_on"].startswith("site")
        held = f["held_out"]
        assert set(held) == {"overall", "view AP", "view PA"} and held["overall"]["films"] == parts["held-out"]["films"]
        assert f["checks"]["head_parity"]["max_abs_logit_difference"] < 1e-3
        assert f["guard"]["refused"] == f["guard"]["non_xrays"] > 0
    twin = json.loads((out / "config.json").read_text())
    assert twin["weights_sha256"] == read_meta(out / "model.onnx").weights_sha256 != read_meta(
        tiny_bundle / "model.onnx").weights_sha256
    assert (out / "adaptation.md").read_text().startswith("## Adapted to site 'ward 9'")
    assert "## Adapted to site 'ward 9'" in (out / "README.md").read_text()  # the model card's section
    info = cli("info", out / "model.int8.onnx")
    assert info.exit_code == 0 and "site adaptation 1" in info.output and "ward 9" in info.output
    again = cli("adapt", site, "--model", tiny_bundle, "--out", out, *LOW, "-q")
    assert again.exit_code != 0 and "--force" in again.output  # nothing overwritten without --force
    v = cli("validate", site, "--model", out / "model.onnx", "--out", tmp_path / "v", "--bootstrap", "20", "-q")
    assert v.exit_code == 0 and "the 60 patients named in metadata.csv" in v.output
    b = cli("bench-adapt", site, "--bundle", tiny_bundle, "--out", tmp_path / "adapt.json", "--reuse", "head refit", out)
    assert b.exit_code == 0, b.output
    bench = json.loads((tmp_path / "adapt.json").read_text())["depths"]["head refit"]
    checks = bench["files"]["model.onnx"]
    assert checks["roc_auc_held_out"]["value"] == report["files"]["model.onnx"]["held_out"]["overall"]["roc_auc"]["after"]
    assert checks["home_validation_roc_auc"]["met"] is False  # no --data: home performance was not measured
    assert bench["all_met"] is False and bench["seconds"]["met"] is (report["seconds"]["total"] <= 60)
    from pneumo_edge.site.adaptreport import bench_markdown  # README's generated section

    md = bench_markdown(json.loads((tmp_path / "adapt.json").read_text()))
    overall = next(line for line in md.splitlines() if line.startswith("| overall |"))
    assert f"| {checks['roc_auc_held_out']['value']:.3f} [" in overall and "against 0.91: " in md


def test_adapt_refuses_a_site_too_small_for_the_guarantee(tiny_bundle, tmp_path):
    site = make_site(tmp_path / "site", patients=10)
    r = cli("adapt", site, "--model", tiny_bundle, "--out", tmp_path / "out", "-q")
    assert r.exit_code == 2 and "needs at least 45" in r.output
    assert not list((tmp_path / "out").glob("*.onnx")) and not list((tmp_path / "out").glob(".*candidate"))


def test_adapt_runs_on_the_edge_install(tiny_bundle, tmp_path):
    """No torch, scikit-learn, onnx or timm: numpy, onnxruntime and protobuf-level editing."""
    site = make_site(tmp_path / "site")
    r = run_cli_without_torch(["adapt", str(site), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"), *LOW,
                               "-q"], tmp_path, also_block=("sklearn", "onnx", "timm", "scipy"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert (tmp_path / "o" / "model.int8.onnx").is_file() and not (tmp_path / "o" / "README.md").exists()


def test_fine_tune_needs_home_data(tiny_bundle, tmp_path):
    site = make_site(tmp_path / "site", patients=4)
    r = cli("adapt", site, "--model", tiny_bundle, "--out", tmp_path / "out", "--fine-tune", "-q")
    assert r.exit_code == 2 and "--fine-tune needs --data" in r.output


def test_fine_tune_end_to_end(tiny_bundle, tiny_data, tmp_path):
    """The twin fine-tuned with home films replayed, exported through export's gates, both files settled."""
    from pneumo_edge.site.adapt import AdaptConfig
    from pneumo_edge.train.adapt_tune import TuneConfig, fine_tune
    from pneumo_edge.bundle.export import GateConfig

    site, out = make_site(tmp_path / "site"), tmp_path / "tuned"
    cfg = AdaptConfig(folder=str(site), model=str(tiny_bundle), out=str(out), data=str(tiny_data), fine_tune=True,
                      target_sensitivity=0.8, confidence=0.8, n_bootstrap=20)
    r = fine_tune(cfg, TuneConfig(epochs=2, guard_fit_films=30, guard_val_films=8, calib_images=16),
                  GateConfig(int8_min_agreement=0.0, int8_max_auroc_delta=1.0, heatmap_int8_min_corr=0.0))
    assert r["method"] == "fine-tune" and r["fine_tune"]["epoch"] in (1, 2) and r["home_replayed"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["gate_films"]["home_validation"] > 0 and parity["fp32"]["n"] > 0
    for name in ("model.onnx", "model.int8.onnx"):
        meta, f = read_meta(out / name), r["files"][name]
        assert body_without_head(out / name) != body_without_head(tiny_bundle / name)  # every weight may move
        assert meta.threshold == f["threshold"] and meta.site_calibration[-1]["method"] == "fine-tune"
        assert f["home_validation"]["films"] > 0 and f["guard"]["refused"] == f["guard"]["non_xrays"]
        assert meta.weights_sha256 == json.loads((out / "config.json").read_text())["weights_sha256"]
    assert "fine-tune" in (out / "adaptation.md").read_text()


def test_site_guard_keeps_the_parent_threshold_or_widens_it_for_films_it_was_not_fitted_on():
    from pneumo_edge.edge.guard import Guard
    from pneumo_edge.site.siteguard import GuardFit, refit_guard

    rng = np.random.default_rng(0)
    dim = 6
    parent = Guard(means=np.zeros((2, dim)), components=np.eye(dim)[:2], eigvals=np.ones(2), residual_var=1.0,
                   threshold=5.0, stat_lo=np.zeros(3), stat_hi=np.array([1.0, 1.0, 8.0]), margin=1.2,
                   percentile=99.5)
    y = np.r_[np.zeros(40), np.ones(40)]
    site = rng.normal(0, 1, (80, dim)) + 3 * y[:, None]
    altered = rng.normal(0, 1, (80, dim)) - 6

    def refit(spread: float):
        held = rng.normal(0, spread, (200, dim)) + 3 * rng.integers(0, 2, 200)[:, None]
        return refit_guard(parent, GuardFit(site=site, site_y=y, altered=altered, threshold=held)), held

    near, _ = refit(0.5)  # the site's unseen films lie well inside: the parent's threshold stands
    assert near.threshold == parent.threshold and len(near.means) == 4 and near.population is None
    wide, held = refit(3.0)  # spread wider than the parent's threshold allows: widened by the parent's rule
    assert wide.threshold == pytest.approx(1.2 * np.percentile(wide.embedding_distance(held), 99.5))
    assert wide.threshold > parent.threshold and (wide.embedding_distance(held) / wide.threshold > 1).mean() < 0.01
