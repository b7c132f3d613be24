"""Plots people would rather look at than read: confusion matrix, ROC, precision-recall, reliability.

Each function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .edge.atomic import write_with


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    y, pred = np.asarray(y) == 1, np.asarray(p) >= t
    return ((pred & y).sum() / max(1, y.sum()), (~pred & ~y).sum() / max(1, (~y).sum()),
            (pred & y).sum() / max(1, pred.sum()))


def _curve(path: Path, title: str, curve: tuple, label: str, chance: tuple, marks: list[tuple[float, float, str]],
           axes: tuple[str, str], legend: str) -> Path:
    """One curve, its chance line (dotted) and the marked operating points."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(*curve, lw=2, label=label)
    ax.plot(*chance, ls=":", c="grey")
    for (x, y, text), marker in zip(marks, ("o", "s", "^")):
        ax.plot([x], [y], marker=marker, ms=8, ls="", label=text)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    ax.legend(loc=legend, fontsize=7)
    return _save(fig, path)


def roc_plot(y: np.ndarray, p: np.ndarray, path: Path, points: dict[str, float], title: str) -> Path:
    """ROC curve with each named threshold marked at its (1 - specificity, sensitivity)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    marks = []
    for name, t in points.items():
        sens, spec, _ = _rates(y, p, t)
        marks.append((1 - spec, sens, f"{name} (t={t:.3f}): sens {sens:.3f}, spec {spec:.3f}"))
    return _curve(path, title, (fpr, tpr), f"ROC (AUC {roc_auc_score(y, p):.4f})", ([0, 1], [0, 1]), marks,
                  ("1 - specificity", "sensitivity"), "lower right")


def pr_plot(y: np.ndarray, p: np.ndarray, path: Path, points: dict[str, float], title: str) -> Path:
    """Precision-recall curve with each named threshold marked; chance is the positive fraction."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, p)
    marks = []
    for name, t in points.items():
        sens, _, prec = _rates(y, p, t)
        marks.append((sens, prec, f"{name} (t={t:.3f}): sens {sens:.3f}, precision {prec:.3f}"))
    base = float(np.mean(np.asarray(y) == 1))
    return _curve(path, title, (recall, precision), f"PR (average precision {average_precision_score(y, p):.4f})",
                  ([0, 1], [base, base]), marks, ("sensitivity (recall)", "precision"), "lower left")


def reliability_plot(curves: dict[str, dict], path: Path, title: str) -> Path:
    """curves: name -> metrics.reliability_bins output."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect calibration")
    for name, c in curves.items():
        xs = [x for x, n in zip(c["mean_predicted"], c["count"]) if n]
        ys = [y for y, n in zip(c["observed"], c["count"]) if n]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("mean predicted P(pneumonia)")
    ax.set_ylabel("observed fraction pneumonia")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def bar_plot(names: list[str], values: list[float], path: Path, xlabel: str, title: str) -> Path:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    ax.barh(names, values, color="tab:blue")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
