import csv

import numpy as np
from click.testing import CliRunner
from conftest import xray_like
from PIL import Image

from pneumo_edge.bundle.guardfit import fit_from_arrays
from pneumo_edge.cli import main
from pneumo_edge.edge.guard import PERCENTILE, Guard, image_stats
from pneumo_edge.edge.model import EdgeModel


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
        assert guarded[name]["label"] == "REJECTED_OOD" and float(guarded[name]["guard_score"]) > 1, guarded[name]
    kept = [guarded[f"xray{i}.png"]["label"] in ("NORMAL", "PNEUMONIA") for i in range(6)]
    assert sum(kept) >= 5, guarded
    plain = run("--no-guard")
    assert all(row["label"] in ("NORMAL", "PNEUMONIA") and row["guard_score"] == "" and row["guard_verdict"] == "off" for row in plain.values())


def test_image_stats_separate_blank_from_xray():
    rng = np.random.default_rng(0)
    s = image_stats(np.stack([xray_like(rng, False, (64, 64)), np.zeros((64, 64), np.uint8)]))
    assert s[0, 1] > 0.02 and s[1, 1] == 0 and s[1, 2] == 0


# ---------------------------------------------------------------- per-file guards and the orientation head

def test_int8_guard_is_fitted_on_int8_embeddings(tiny_bundle, tiny_checkpoint, tiny_data):
    import json

    from pneumo_edge.bundle.guardfit import guard_images, onnx_embedder
    from pneumo_edge.train.data import rebuild_split

    fp32, int8 = EdgeModel(tiny_bundle / "model.onnx"), EdgeModel(tiny_bundle / "model.int8.onnx")
    assert int8.guard.orientation is not None and int8.meta.ood["validation_rejected"]
    assert int8.guard.threshold != fp32.guard.threshold
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    _, train, val, _ = rebuild_split(config, str(tiny_data))
    images = guard_images(int8.spec, train, val, progress=False)
    e8 = onnx_embedder(int8)(images.train)
    means8 = np.stack([e8[images.train_labels == c].mean(0) for c in (0, 1)])
    np.testing.assert_allclose(int8.guard.means, means8, atol=1e-5)  # the INT8 file's own embeddings ...
    assert np.abs(fp32.guard.means - means8).max() > 1e-4  # ... which fp32's guard was not fitted on


def _asymmetric_films(rng: np.random.Generator, n: int, size: int = 64) -> np.ndarray:
    """Synthetic films with a top and a bottom (bright abdomen below the lungs), like real chest X-rays."""
    films = np.stack([xray_like(rng, i % 2 == 1, (size, size)) for i in range(n)]).astype(np.int16)
    films[:, int(0.8 * size):] += 70
    return np.clip(films, 0, 255).astype(np.uint8)


def _band_embed(x: np.ndarray) -> np.ndarray:
    """A stand-in for a network: mean grey level of 8 horizontal and 8 vertical bands."""
    x = np.asarray(x, np.float64) / 255.0
    n, s = len(x), x.shape[-1]
    return np.concatenate([x.reshape(n, 8, -1).mean(2), x.mean(1).reshape(n, 8, s // 8).mean(2)], 1)


def _synthetic_guard() -> tuple[dict, np.ndarray]:
    """A guard fitted on synthetic films with a top and a bottom, and 100 fresh films of the same kind."""
    from pneumo_edge.bundle.guardfit import GuardImages, fit_guard
    from pneumo_edge.train.perturb import perturbed_views

    rng = np.random.default_rng(0)
    train, val, fresh = (_asymmetric_films(rng, n) for n in (300, 120, 100))
    images = GuardImages(train=train, train_labels=np.arange(300) % 2, train_stats=image_stats(train),
                         train_companion=np.ascontiguousarray(train[:, :, ::-1]), val=val,
                         val_shifted=perturbed_views(list(val), 64, names=["contrast-0.6", "gamma-1.6"]))
    return fit_guard(_band_embed, images), fresh


def test_orientation_head_rejects_flipped_and_inverted_synthetic_films():
    from pneumo_edge.site.probes import alterations

    meta, fresh = _synthetic_guard()
    guard = Guard.from_meta(meta)
    assert guard.orientation is not None and meta["threshold_views"] == ["clean", "contrast-0.6", "gamma-1.6"]
    assert guard.rejects(guard.scores(fresh, _band_embed(fresh))).mean() <= 0.05
    for name, altered in alterations(fresh).items():
        altered = np.ascontiguousarray(altered)
        s = guard.orientation.scores(_band_embed(altered))
        assert guard.rejects(s).mean() >= 0.95, name
    assert meta["validation_rejected"]["upside down"] >= 0.95


def _guard_with_orientation(d: int = 6) -> Guard:
    from pneumo_edge.edge.guard import OrientationHead

    rng = np.random.default_rng(0)
    return Guard(means=rng.normal(size=(2, d)), components=np.eye(d)[:2], eigvals=np.array([2.0, 1.0]),
                 residual_var=0.5, threshold=7.0, stat_lo=np.zeros(3), stat_hi=np.array([1.0, 1.0, 6.0]),
                 orientation=OrientationHead(weights=rng.normal(size=d), bias=-0.5, threshold=0.3),
                 margin=1.2, threshold_views=("clean", "gamma-0.6"))


def test_guard_round_trips_with_and_without_the_orientation_fields():
    g = _guard_with_orientation()
    rng = np.random.default_rng(1)
    emb, imgs = rng.normal(size=(20, 6)), rng.integers(0, 256, (20, 16, 16), dtype=np.uint8)
    again = Guard.from_meta(g.to_meta())
    np.testing.assert_allclose(again.scores(imgs, emb), g.scores(imgs, emb), rtol=1e-5)
    assert again.margin == 1.2 and again.threshold_views == ("clean", "gamma-0.6")

    old = {k: v for k, v in g.to_meta().items() if k not in ("orientation", "margin", "threshold_views")}
    legacy = Guard.from_meta(old)
    assert legacy.orientation is None and legacy.margin == 1.0
    assert set(legacy.check_scores(imgs, emb)) == {"embedding", "intensity", "colour"}
    without = Guard.from_meta(g.to_meta())
    without.orientation = None
    np.testing.assert_allclose(legacy.scores(imgs, emb), without.scores(imgs, emb), rtol=1e-5)


def test_a_bundle_written_before_the_orientation_head_still_loads(tiny_bundle, tmp_path):
    from dataclasses import replace

    import onnx

    from pneumo_edge.bundle.export import set_metadata
    from pneumo_edge.edge.meta import read_meta

    meta = read_meta(tiny_bundle / "model.onnx")
    old_ood = {k: v for k, v in meta.ood.items()
               if k not in ("orientation", "margin", "threshold_views", "validation_rejected")}
    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    set_metadata(proto, replace(meta, ood=old_ood))
    onnx.save(proto, str(tmp_path / "old.onnx"))
    m = EdgeModel(tmp_path / "old.onnx")
    assert m.guard is not None and m.guard.orientation is None
    x = np.full((2, 64, 64), 90, np.uint8)
    assert m.guard.scores(x, m.run(np.zeros((2, 1, 64, 64), np.float32))["embedding"]).shape == (2,)


# ---------------------------------------------------------------- the polarity (inverted grey levels) check

def test_thumbnail_of_an_inverted_film_is_the_negated_thumbnail():
    from pneumo_edge.edge.guard import thumbnail

    x = _asymmetric_films(np.random.default_rng(3), 4)
    t = thumbnail(x)
    assert t.shape == (4, 64)
    np.testing.assert_allclose(thumbnail(255 - x), -t, atol=1e-6)
    np.testing.assert_allclose(thumbnail(np.clip(x.astype(int) * 0.7 + 20, 0, 255).astype(np.uint8)), t, atol=0.05)


def test_polarity_check_refuses_inverted_synthetic_films_and_keeps_the_rest():
    meta, fresh = _synthetic_guard()
    guard = Guard.from_meta(meta)
    assert guard.polarity is not None and "+polarity" in meta["method"]
    assert guard.rejects(guard.polarity.scores(fresh)).mean() <= 0.05
    assert guard.rejects(guard.polarity.scores(255 - fresh)).all()
    emb = _band_embed(255 - fresh)
    _, reasons = guard.assess(255 - fresh, emb)
    assert all("grey levels inverted" in r for r in reasons)
    assert meta["validation_rejected"]["inverted grey levels"] == 1.0


def test_guard_round_trips_with_and_without_the_polarity_head():
    from pneumo_edge.edge.guard import PolarityHead

    g = _guard_with_orientation()
    rng = np.random.default_rng(2)
    g.polarity = PolarityHead(weights=rng.normal(size=4), bias=0.1, threshold=0.05, grid=2)
    emb, imgs = rng.normal(size=(10, 6)), rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
    again = Guard.from_meta(g.to_meta())
    assert again.polarity.grid == 2 and "+polarity" in g.to_meta()["method"]
    np.testing.assert_allclose(again.check_scores(imgs, emb)["polarity"], g.check_scores(imgs, emb)["polarity"],
                               rtol=1e-5)
    old = {k: v for k, v in g.to_meta().items() if k != "polarity"}
    assert "polarity" not in Guard.from_meta(old).check_scores(imgs, emb)
    bad = g.to_meta()
    bad["polarity"]["grid"] = 3  # 9 weights expected, 4 stored
    import pytest

    from pneumo_edge.edge.errors import ModelError
    with pytest.raises(ModelError):
        Guard.from_meta(bad)


def test_guard_polarity_adds_the_check_to_a_bundle_without_it(tiny_bundle, tiny_data, tmp_path):
    import shutil
    from dataclasses import replace

    from pneumo_edge.edge.meta import read_meta
    from pneumo_edge.edge.stamp import graph_bytes, stamp_file

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    for name in ("model.onnx", "model.int8.onnx"):  # as bundles exported before the check was
        meta = read_meta(bundle / name)
        stamp_file(bundle / name, bundle / name, replace(meta, ood={k: v for k, v in meta.ood.items() if k != "polarity"}))
        assert EdgeModel(bundle / name).guard.polarity is None
    before = {n: graph_bytes(bundle / n) for n in ("model.onnx", "model.int8.onnx")}
    r = CliRunner().invoke(main, ["guard-polarity", str(bundle), "--data", str(tiny_data)])
    assert r.exit_code != 0 and "--force" in r.output
    r = CliRunner().invoke(main, ["guard-polarity", str(bundle), "--data", str(tiny_data), "--force", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "monitor-reference" in r.output  # the drift reference predates the check: the user is told
    for name, graph in before.items():
        assert graph_bytes(bundle / name) == graph
        m = EdgeModel(bundle / name)
        assert m.guard.polarity is not None
        rates = m.meta.ood["validation_rejected"]
        assert rates["inverted grey levels"] >= 0.9 and rates["clean"] <= 0.1, rates  # the synthetic films' validation
        assert f"inverted grey levels {rates['inverted grey levels']:.2%}" in r.output
