"""Plots people would rather look at than read: confusion matrix, ROC + precision-recall, reliability,
latency.

Each function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumo_edge.edge.atomic import write_with
from pneumo_edge.edge.decision import positive
from pneumo_edge.site.metrics import (
    ECE_BINS,
    bootstrap_indices,
    expected_calibration_error,
    reliability_bins,
)


def _fig():
    import matplotlib  # matplotlib: the [plots] extra, only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: the [plots] extra, only when drawing

    return plt


def _save(fig, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    _fig().close(fig)
    return path


def confusion_matrix_plot(cm: list[list[int]], labels: list[str], path: Path, title: str) -> Path:
    plt = _fig()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]}\n{cm[i, j] / max(1, cm[i].sum()):.1%}", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=11)
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float, float]:
    """(sensitivity, specificity, precision) at threshold t."""
    y, pred = np.asarray(y) == 1, positive(np.asarray(p), t)
    return ((pred & y).sum() / max(1, y.sum()), (~pred & ~y).sum() / max(1, (~y).sum()),
            (pred & y).sum() / max(1, pred.sum()))


def roc_band(y: np.ndarray, p: np.ndarray, n: int = 1000, seed: int = 0, groups: np.ndarray | None = None,
             unit: str = "patients", level: float = 0.95, points: int = 401) -> dict:
    """The ROC as sensitivity at each 1 - specificity on a grid, and its pointwise bootstrap band.

    Sensitivity at x is the best one reachable with a false-positive rate <= x (the ROC's step form), so the
    curve and every resample live on one grid. Resamples the groups when `groups` names them (`unit` says
    what they are: one patient's films are not independent), else images.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    grid = np.linspace(0.0, 1.0, points)
    draws = np.array([_tpr_at(y[i], p[i], grid) for i in bootstrap_indices(y, n, seed, groups)])
    lo, hi = ((np.percentile(draws, q, axis=0) for q in ((1 - level) / 2 * 100, (1 + level) / 2 * 100))
              if len(draws) else (None, None))
    return {"fpr": grid, "tpr": _tpr_at(y, p, grid), "lower": lo, "upper": hi, "level": level,
            "resamples": len(draws),
            "unit": "images" if groups is None else unit,
            "n_units": len(y) if groups is None else len(np.unique(np.asarray(groups)))}


def _tpr_at(y: np.ndarray, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    from sklearn.metrics import roc_curve  # scikit-learn: an extra, only when this runs

    fpr, tpr, _ = roc_curve(y, p)  # fpr is non-decreasing, so the best tpr at fpr <= x is the last one
    return tpr[np.searchsorted(fpr, grid, side="right") - 1]


def _mark(ax, marks: list[tuple[float, float, str]]) -> None:
    """The operating points, one marker shape each."""
    for (x, y, text), marker, colour in zip(marks, ("o", "s", "^"), ("C1", "C2", "C3")):
        ax.plot([x], [y], marker=marker, ms=8, ls="", c=colour, label=text)


def _roc_with_band(ax, band: dict, labels: tuple[str, str] | None = None) -> None:
    labels = labels or (None, None)
    if band["resamples"]:
        ax.fill_between(band["fpr"], band["lower"], band["upper"], step="post", alpha=0.25, color="C0",
                        label=labels[0])
    ax.step(band["fpr"], band["tpr"], where="post", lw=2, c="C0", label=labels[1])


def roc_pr_plot(y: np.ndarray, p: np.ndarray, path: Path, points: dict[str, float], title: str,
                groups: np.ndarray | None = None, unit: str = "patients", n_bootstrap: int = 1000,
                seed: int = 0) -> Path:
    """ROC with its bootstrap band (left) and precision-recall (right), each threshold marked on both."""
    from sklearn.metrics import (  # scikit-learn: an extra, only when this runs
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
    )

    band = roc_band(y, p, n_bootstrap, seed, groups, unit)
    plt = _fig()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9.6, 4.4))
    _roc_with_band(roc, band, (f"{band['level']:.0%} band: {band['resamples']} resamples of {band['n_units']} "
                               f"{band['unit']}", f"ROC (AUC {roc_auc_score(y, p):.4f})"))
    roc.plot([0, 1], [0, 1], ls=":", c="grey")
    zoom = roc.inset_axes([0.32, 0.36, 0.6, 0.4])  # where a good model's curve and its band actually are
    _roc_with_band(zoom, band)
    near = band["fpr"] >= 0.02
    floor = (band["lower"] if band["resamples"] else band["tpr"])[near].min()
    zoom.set(xlim=(0, 0.3), ylim=(max(0.0, floor - 0.05), 1.005))
    zoom.tick_params(labelsize=6)
    precision, recall, _ = precision_recall_curve(y, p)
    pr.plot(recall, precision, lw=2, label=f"PR (average precision {average_precision_score(y, p):.4f})")
    base = float(np.mean(np.asarray(y) == 1))
    pr.plot([0, 1], [base, base], ls=":", c="grey", label=f"chance (positive fraction {base:.2f})")
    rates = {name: (t, *_rates(y, p, t)) for name, t in points.items()}
    for ax in (roc, zoom):
        _mark(ax, [(1 - spec, sens, f"{n} (t={t:.3f}): sens {sens:.3f}, spec {spec:.3f}")
                   for n, (t, sens, spec, _) in rates.items()])
    _mark(pr, [(sens, prec, f"{n} (t={t:.3f}): sens {sens:.3f}, precision {prec:.3f}")
               for n, (t, sens, _, prec) in rates.items()])
    for ax, axes, where in ((roc, ("1 - specificity", "sensitivity"), "lower right"),
                            (pr, ("sensitivity (recall)", "precision"), "lower left")):
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.legend(loc=where, fontsize=7)
    roc.set_title(f"{title}\n" + (f"band: bootstrap over {band['unit']}" if band["resamples"] else "no band"),
                  fontsize=10)
    pr.set_title("precision-recall", fontsize=10)
    return _save(fig, path)


def reliability_curves(y: np.ndarray, probs: dict[str, np.ndarray]) -> dict[str, dict]:
    """name -> metrics.reliability_bins of those probabilities, with their ECE (metrics' definition)."""
    return {name: {**reliability_bins(y, p), "ece": expected_calibration_error(y, p)} for name, p in probs.items()}


def reliability_plot(curves: dict[str, dict], path: Path, title: str) -> Path:
    """curves: reliability_curves output. Above: the diagram; below: how many images each bin holds."""
    plt = _fig()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect calibration")
    for name, c in curves.items():
        xs = [x for x, n in zip(c["mean_predicted"], c["count"]) if n]
        ys = [y for y, n in zip(c["observed"], c["count"]) if n]
        line, = ax.plot(xs, ys, marker="o", label=f"{name}: ECE {c['ece']:.4f}")
        edges = np.linspace(0, 1, len(c["count"]) + 1)
        hist.stairs(c["count"], edges, color=line.get_color(), lw=1.5)
    ax.set_ylabel("observed fraction pneumonia")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, title=f"ECE: top-label, {ECE_BINS} bins", title_fontsize=7)
    hist.set_yscale("symlog", linthresh=1)  # most images sit in the end bins; a few in the middle still show
    hist.set_ylabel("images per bin", fontsize=8)
    hist.set_xlabel("mean predicted P(pneumonia)")
    return _save(fig, path)


def latency_plot(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per batch size: p50 bars with p95 whiskers, each row's images/s written beside its bar."""
    plt = _fig()
    batches = sorted({r["batch"] for r in rows})
    n = max(sum(r["batch"] == b for r in rows) for b in batches)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches) + 1.6, 0.45 * n + 1.4), squeeze=False,
                             sharey=True)
    axes[0, 0].invert_yaxis()  # once: the axes share y, first row on top
    for ax, b in zip(axes[0], batches):
        sel = [r for r in rows if r["batch"] == b]
        p50, p95 = np.array([r["p50_ms"] for r in sel]), np.array([r["p95_ms"] for r in sel])
        ax.barh([f"{r['variant']} t={r['threads']}" for r in sel], p50, color="tab:blue", label="p50",
                xerr=[np.zeros_like(p50), p95 - p50], error_kw={"capsize": 3, "label": "p95"})
        for i, r in enumerate(sel):
            ax.text(r["p95_ms"], i, f"  {r['images_per_s']:.1f} img/s", va="center", fontsize=8)
        ax.set_xlim(0, p95.max() * 1.45)  # room for the throughput labels
        ax.set_xlabel(f"batch-{b} latency per call (ms): bar p50, whisker p95\nimages/s = {b} / p50")
        ax.set_title(f"batch {b}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
