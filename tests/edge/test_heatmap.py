"""The shipped heat map (`edge.heatmap`): film-specific, the same on every route, and what the study picked."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import xray_like
from pneumo_edge.cli import main
from pneumo_edge.edge.cam import overlay_rgb
from pneumo_edge.edge.heatmap import (FLOOR, FOLDER, METHODS, SHIPPED, caption, explain_film, occlusion, rise,
                                      scale_evidence)
from pneumo_edge.edge.imaging import load_image, resize_gray
from pneumo_edge.edge.model import EdgeModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "xrays"
INT8 = ROOT / "export" / "model.int8.onnx"


def bright_box_score(films: np.ndarray) -> np.ndarray:
    """A stand-in model whose evidence is the mean brightness of rows 8-16, columns 40-48 (in logits)."""
    return films[:, 8:16, 40:48].mean(axis=(1, 2)) / 10.0


def test_perturbation_maps_peak_where_the_evidence_is():
    film = np.full((56, 56), 60, np.uint8)
    film[8:16, 40:48] = 250  # 25 logits of evidence, all in one place
    for heat in (occlusion(bright_box_score, film, (7,)), occlusion(bright_box_score, film, (4, 7), "blur"),
                 rise(bright_box_score, film, 64)):
        assert heat.dtype == np.float32 and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        peak = np.unravel_index(np.argmax(heat), heat.shape)
        assert 4 <= peak[0] <= 20 and 36 <= peak[1] <= 52, peak
        assert heat[40:, :20].max() < 0.2  # far from the evidence: dim


def test_a_film_without_evidence_stays_dim():
    assert scale_evidence(np.array([[0.0, 0.2], [-3.0, 0.1]])).max() == pytest.approx(0.2 / FLOOR)
    assert scale_evidence(np.full((2, 2), -1.0)).max() == 0.0  # no region raises P(pneumonia): nothing found
    assert "evidence for PNEUMONIA" in caption() and "low = none found" in caption()


def test_api_heatmap_array_matches_its_png(tiny_bundle):
    import pneumo_edge

    m = pneumo_edge.load(tiny_bundle, guard=False)
    arr = xray_like(np.random.default_rng(1), True)
    r = m.predict(arr, heatmap=True)
    heat = r["heatmap"]
    assert heat.dtype == np.float32 and heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1
    assert r["heatmap_method"] == SHIPPED and r["explained_class"] == "PNEUMONIA"
    assert r["heatmap_meaning"] == caption(SHIPPED)
    resized = resize_gray(m._gray(arr)[0], 64, m.meta.preprocess.resize)
    with Image.open(io.BytesIO(r["heatmap_png"])) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), overlay_rgb(resized, heat))
    assert np.allclose(heat, explain_film(m.model, resized))  # the same map as every other route


def test_heatmap_parity_regates_a_bundle_without_touching_its_models(tiny_bundle, tiny_data, tmp_path):
    import shutil

    from pneumo_edge.edge.runtime import file_sha256

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    parity = json.loads((bundle / "parity.json").read_text())
    parity["heatmap"] = {"method": "an older method"}
    parity["failures"] = ["heat maps (an older method): stale", "fp32: kept as it was"]
    (bundle / "parity.json").write_text(json.dumps(parity))
    digests = {n: file_sha256(bundle / n) for n in ("model.onnx", "model.int8.onnx")}
    r = CliRunner().invoke(main, ["heatmap-parity", str(bundle), "--data", str(tiny_data), "-q"])
    got = json.loads((bundle / "parity.json").read_text())
    assert got["heatmap"]["method"] == SHIPPED and got["heatmap"]["n"] >= 1
    assert "fp32: kept as it was" in got["failures"] and not any("older" in f for f in got["failures"])
    assert r.exit_code == 1 and "FAILED: fp32: kept as it was" in r.output  # the other failure still stands
    assert f"`{SHIPPED}`" in (bundle / "parity.md").read_text()
    assert {n: file_sha256(bundle / n) for n in digests} == digests


def test_onnx_twin_and_int8_maps_pass_the_parity_gates(tiny_bundle):
    from pneumo_edge.train.checkpoint import load_checkpoint
    from pneumo_edge.train.models import build_twin
    from pneumo_edge.bundle.export import check_heatmap

    twin, config = load_checkpoint(tiny_bundle)
    rng = np.random.default_rng(7)
    films = np.stack([resize_gray(xray_like(rng, i % 2 == 1), 64) for i in range(4)])
    fp32, int8 = EdgeModel(tiny_bundle / "model.onnx"), EdgeModel(tiny_bundle / "model.int8.onnx")
    report, failures = check_heatmap(twin, fp32, int8, films, min_int8=0.0)  # a two-epoch model: INT8 recorded
    assert not failures and report["onnx_vs_twin"]["min"] >= 0.99 and report["method"] == SHIPPED
    assert 0 < report["int8_vs_fp32"]["mean"] < 1
    _, failures = check_heatmap(twin, fp32, int8, films, min_int8=1.01)
    assert len(failures) == 1 and "INT8 vs fp32" in failures[0]
    _, failures = check_heatmap(build_twin(config["model"]).eval(), fp32, None, films)  # another model's maps
    assert failures and "ONNX vs twin" in failures[0]


@pytest.mark.skipif(not (INT8.is_file() and EXAMPLES.is_dir()), reason="needs the shipped bundle and examples/xrays")
def test_maps_differ_between_films_more_than_under_a_small_shift():
    model = EdgeModel(INT8, threads=2)
    size, rule = model.spec.size, model.spec.resize
    a, b = (resize_gray(load_image(p, size=size)[0], size, rule)
            for p in sorted((EXAMPLES / "PNEUMONIA").glob("*.jpeg"))[:2])
    shifted = np.roll(a, 3, axis=1)
    shifted[:, :3] = a[:, :1]  # edge pixels repeated, not wrapped
    ma, mb, ms = (explain_film(model, f) for f in (a, b, shifted))

    def corr(x, y):
        return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])
    assert corr(ma, ms) > corr(ma, mb) + 0.1, (corr(ma, ms), corr(ma, mb))


@pytest.mark.skipif(not ((ROOT / "export" / "model.safetensors").is_file() and EXAMPLES.is_dir()),
                    reason="needs the shipped twin and examples/xrays")
def test_shipped_onnx_and_twin_draw_the_same_map():
    from pneumo_edge.train.checkpoint import load_checkpoint
    from pneumo_edge.bundle.export import check_heatmap

    twin, _ = load_checkpoint(ROOT / "export")
    fp32 = EdgeModel(ROOT / "export" / "model.onnx", threads=2)
    film = resize_gray(load_image(sorted((EXAMPLES / "PNEUMONIA").glob("*.jpeg"))[0], size=224)[0], 224,
                       fp32.spec.resize)
    report, failures = check_heatmap(twin, fp32, EdgeModel(INT8, threads=2), film[None])
    assert not failures, failures
    assert report["onnx_vs_twin"]["min"] >= 0.99 and report["int8_vs_fp32"]["min"] >= 0.9


def test_shipped_method_is_the_one_the_study_picked():
    results = json.loads((ROOT / "bench" / "heatmaps" / "results.json").read_text())
    assert results["pick"]["method"] == SHIPPED and FOLDER == (results["pick"]["folder_method"] or SHIPPED)
    assert SHIPPED in METHODS and results["films"].startswith("validation")


def test_heatmap_study_end_to_end(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "study"
    args = ["heatmap-study", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--out", str(out),
            "--films", "4", "--random-films", "2", "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["n_films"] == 4 and set(res["candidates"]) >= set(METHODS)
    assert res["pick"]["method"] in METHODS and "pick:" in r.output
    for row in res["candidates"].values():
        assert len(row["evaluation"]["deletion_curve"]) == len(res["ks"]) and "full" in row["randomization"]
    assert (out / "results.md").read_text().startswith("# Heat-map study") and (out / "deletion.png").stat().st_size
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--force" in again.output  # never overwritten silently
