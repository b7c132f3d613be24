import csv

import numpy as np
from click.testing import CliRunner
from PIL import Image

from conftest import xray_like
from pneumo_edge.cli import main
from pneumo_edge.edge.guard import PERCENTILE, Guard, image_stats
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.ood import fit_from_arrays


def test_guard_statistics_round_trip_through_the_bundle(tiny_bundle):
    m = EdgeModel(tiny_bundle / "model.onnx")
    assert m.guard is not None
    again = Guard.from_meta(m.guard.to_meta())
    np.testing.assert_allclose(again.components, m.guard.components, rtol=1e-6)
    np.testing.assert_allclose(again.means, m.guard.means, rtol=1e-6)
    assert again.threshold == m.guard.threshold > 0
    assert m.meta.ood["percentile"] == PERCENTILE


def test_guard_math_on_gaussian_clusters():
    rng = np.random.default_rng(0)

    def draw(n):
        return np.concatenate([rng.normal(0, 1, (n, 16)), rng.normal(3, 1, (n, 16))])

    stats = np.tile([0.5, 0.2, 5.0], (800, 1)) + rng.normal(0, 0.01, (800, 3))
    g = fit_from_arrays(draw(400), np.repeat([0, 1], 400), stats, draw(200), k=4)
    fresh_rejected = g.rejects(g.embedding_distance(draw(500)) / g.threshold).mean()
    assert fresh_rejected < 0.03  # about 0.5% by construction of the 99.5th-percentile threshold
    assert g.embedding_distance(np.full((1, 16), 20.0))[0] / g.threshold > 10
    assert g.embedding_distance(np.full((1, 16), 2.5))[0] / g.threshold < 1  # near class 1 (mean 3): fine


def test_infer_rejects_blank_noise_and_colour_but_keeps_xrays(tiny_bundle, tmp_path):
    d = tmp_path / "mix"
    d.mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):
        Image.fromarray(xray_like(rng, i % 2 == 0)).save(d / f"xray{i}.png")
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(d / "blank.png")
    Image.fromarray(rng.integers(0, 256, (96, 80), dtype=np.uint8)).save(d / "noise.png")
    photo = np.zeros((96, 80, 3), np.uint8)
    photo[..., 0], photo[..., 1] = 220, np.linspace(0, 255, 80, dtype=np.uint8)
    Image.fromarray(photo).save(d / "photo.png")

    def run(*extra):
        out = tmp_path / f"p{len(extra)}.csv"
        r = CliRunner().invoke(main, ["infer", str(d), "--model", str(tiny_bundle / "model.onnx"), "--out",
                                      str(out), *extra])
        assert r.exit_code == 0, r.output
        with open(out, newline="") as f:
            return {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}

    guarded = run()
    for name in ("blank.png", "noise.png", "photo.png"):
        assert guarded[name]["label"] == "REJECTED_OOD" and float(guarded[name]["ood_score"]) > 1, guarded[name]
    kept = [guarded[f"xray{i}.png"]["label"] in ("NORMAL", "PNEUMONIA") for i in range(6)]
    assert sum(kept) >= 5, guarded
    plain = run("--no-guard")
    assert all(row["label"] in ("NORMAL", "PNEUMONIA") and row["ood_score"] == "" for row in plain.values())


def test_image_stats_separate_blank_from_xray():
    rng = np.random.default_rng(0)
    s = image_stats(np.stack([xray_like(rng, False, (64, 64)), np.zeros((64, 64), np.uint8)]))
    assert s[0, 1] > 0.02 and s[1, 1] == 0 and s[1, 2] == 0
