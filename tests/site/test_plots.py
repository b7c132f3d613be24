"""The plots: what each one claims (ECE, bin counts, the bootstrap band, operating points) is what it draws."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from pneumo_edge.site import plots
from pneumo_edge.site.metrics import expected_calibration_error


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept open for inspection; the PNGs are still written."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def grouped_scores(seed: int = 0, patients: int = 40, films: int = 5):
    """Patients with several near-identical films each: resampling films alone understates the spread."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(patients) % 2, films)
    p = np.repeat(0.35 + 0.3 * (np.arange(patients) % 2) + rng.normal(0, 0.2, patients), films)
    return y, np.clip(p + rng.normal(0, 0.05, len(y)), 0, 1), np.repeat(np.arange(patients), films)


def test_reliability_carries_metrics_ece_and_per_bin_counts(drawn, tmp_path):
    y, p, _ = grouped_scores()
    curves = plots.reliability_curves(y, {"raw": p, "sharper": p ** 2})
    for name, q in (("raw", p), ("sharper", p ** 2)):
        assert curves[name]["ece"] == expected_calibration_error(y, q) and sum(curves[name]["count"]) == len(y)
    path = plots.reliability_plot(curves, tmp_path / "rel.png", "t")
    assert path.stat().st_size > 0
    diagram, hist = drawn[0].axes
    legend = [t.get_text() for t in diagram.get_legend().get_texts()]
    assert f"raw: ECE {curves['raw']['ece']:.4f}" in legend and f"sharper: ECE {curves['sharper']['ece']:.4f}" in legend
    heights = [list(s.get_data().values) for s in hist.patches]  # one step histogram per curve
    assert heights == [curves["raw"]["count"], curves["sharper"]["count"]]


def test_roc_band_holds_the_curve_and_is_wider_by_patient():
    y, p, groups = grouped_scores()
    by_image = plots.roc_band(y, p, n=200)
    by_patient = plots.roc_band(y, p, n=200, groups=groups)
    for band in (by_image, by_patient):
        assert (band["lower"] <= band["tpr"]).all() and (band["tpr"] <= band["upper"]).all()
        assert band["resamples"] == 200
    assert by_image["unit"] == "images" and by_image["n_units"] == len(y)
    assert by_patient["unit"] == "patients" and by_patient["n_units"] == 40
    assert np.mean(by_patient["upper"] - by_patient["lower"]) > 1.5 * np.mean(by_image["upper"] - by_image["lower"])
    fpr, tpr, _ = roc_curve(y, p)  # every ROC vertex is reached on the grid at its own false-positive rate
    on_grid = np.isin(fpr, by_image["fpr"])
    assert np.allclose(plots._tpr_at(y, p, fpr[on_grid]), [tpr[fpr == f].max() for f in fpr[on_grid]])


def test_roc_pr_figure_has_both_panels_the_band_and_the_operating_points(drawn, tmp_path):
    y, p, groups = grouped_scores()
    path = plots.roc_pr_plot(y, p, tmp_path / "roc.png", {"operating point": 0.45, "0.5": 0.5}, "t", groups,
                             n_bootstrap=50)
    assert path.stat().st_size > 0
    roc, pr = (ax for ax in drawn[0].axes if ax.get_legend())
    roc_legend = [t.get_text() for t in roc.get_legend().get_texts()]
    assert "95% band: 50 resamples of 40 patients" in roc_legend and "patients" in roc.get_title()
    for ax in (roc, pr):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert sum(t.startswith(("operating point (t=0.450)", "0.5 (t=0.500)")) for t in labels) == 2
    sens = ((p >= 0.45) & (y == 1)).sum() / (y == 1).sum()
    marked = [line.get_xydata()[0] for line in pr.lines if line.get_label().startswith("operating point")]
    assert marked[0][0] == pytest.approx(sens)


def test_roc_without_resamples_draws_no_band(drawn, tmp_path):
    y, p, _ = grouped_scores()
    plots.roc_pr_plot(y, p, tmp_path / "roc.png", {"t": 0.5}, "t", n_bootstrap=0)
    roc = drawn[0].axes[0]
    assert "no band" in roc.get_title() and not any("band" in t.get_text() for t in roc.get_legend().get_texts())


def test_plots_from_stored_predictions_leave_the_test_split_and_ledger_alone(tiny_eval, tiny_data, tmp_path,
                                                                           monkeypatch):
    import pneumo_edge.train.evaluate as ev

    results, y, logits, names = ev.stored_predictions(tiny_eval)
    test = sorted((tiny_data / "test").rglob("*.jpeg"), key=lambda f: (f.parent.name, f.name))
    assert names == [f.name for f in test] and len(y) == len(logits) == results["test"]["n"]
    # Predictions stored without names: listed again from the data, in evaluate's order, and checked.
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text((tiny_eval / "results.json").read_text())
    np.savez_compressed(old / "test_predictions.npz", logits=logits, labels=y)
    assert ev.stored_predictions(old)[3] is None and ev.stored_predictions(old, str(tiny_data))[3] == names
    np.savez_compressed(old / "test_predictions.npz", logits=logits, labels=1 - y)
    with pytest.raises(Exception, match="does not line up"):
        ev.stored_predictions(old, str(tiny_data))

    def refuse(*args, **kwargs):
        raise AssertionError("redrawing plots read images or wrote the ledger")

    monkeypatch.setattr(ev, "decode_all", refuse)
    monkeypatch.setattr(ev, "append_ledger", refuse)
    written = ev.plots_from_predictions(tiny_eval, tmp_path / "plots", n_bootstrap=20)
    assert sorted(f.name for f in written) == ["confusion_matrix.png", "reliability.png", "roc.png"]
    assert all(f.stat().st_size > 0 for f in written)
