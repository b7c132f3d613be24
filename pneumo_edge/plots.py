"""Plots people would rather look at than read: confusion matrix, ROC, reliability.

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


def roc_plot(y: np.ndarray, p: np.ndarray, path: Path, points: dict[str, float], title: str) -> Path:
    """ROC curve with each named threshold marked at its (1 - specificity, sensitivity)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _fig()
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {roc_auc_score(y, p):.4f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    for (name, t), marker in zip(points.items(), ("o", "s", "^")):
        pred = p >= t
        sens = (pred & (y == 1)).sum() / max(1, (y == 1).sum())
        fp = (pred & (y == 0)).sum() / max(1, (y == 0).sum())
        ax.plot([fp], [sens], marker=marker, ms=8, ls="", label=f"{name} (t={t:.3f}): sens {sens:.3f}, spec {1 - fp:.3f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


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
