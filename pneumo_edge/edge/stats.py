"""Binary classification metrics and their bootstrap intervals, in numpy alone (the light install).

    m = binary_metrics(y, p, threshold=0.42)      # accuracy, sensitivity (recall), specificity, ROC-AUC, PR-AUC
    ci = bootstrap_ci(y, p, 0.42, groups=patients)

`roc_auc` and `average_precision` equal scikit-learn's `roc_auc_score` and `average_precision_score`
(ties counted as half, precision taken at each distinct score); a test holds them to it.
"""

from __future__ import annotations

import numpy as np

from .decision import positive

METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def _mean_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half."""
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    ranks = _mean_ranks(p)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Sum over distinct scores, high to low, of (recall gained) x (precision there)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # the last image at each distinct score
    tp = np.cumsum(ys)[last]
    precision, recall = tp / (last + 1), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]] with rows = truth (0 NORMAL, 1 PNEUMONIA)."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    return np.array([[np.sum((y == 0) & (pred == 0)), np.sum((y == 0) & (pred == 1))],
                     [np.sum((y == 1) & (pred == 0)), np.sum((y == 1) & (pred == 1))]])


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    (tn, fp), (fn, tp) = confusion(y, positive(p, threshold))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    both = len(np.unique(y)) == 2
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,  # = sensitivity
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc(y, p) if both else float("nan"),
        "pr_auc": average_precision(y, p) if both else float("nan"),
        "threshold": float(threshold),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n": int(len(y)),
    }


def group_members(groups) -> list[np.ndarray]:
    """The indices of each group's members (groups in sorted order)."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two heat maps; two constant maps (both all-zero) count as identical."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_indices(y: np.ndarray, n: int, seed: int = 0, groups: np.ndarray | None = None):
    """n bootstrap resamples (index arrays) of images, or of whole groups when `groups` is given.

    Resamples holding one class only are skipped: no AUROC, no sensitivity/specificity pair.
    """
    y = np.asarray(y).astype(int)
    rng = np.random.default_rng(seed)
    members = None if groups is None else group_members(groups)
    for _ in range(n):
        if members is None:
            i = rng.integers(0, len(y), len(y))
        else:
            i = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if len(np.unique(y[i])) == 2:
            yield i


def bootstrap_ci(y: np.ndarray, p: np.ndarray, threshold: float, n: int = 1000, seed: int = 0,
                 level: float = 0.95, groups: np.ndarray | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for every metric in METRIC_NAMES.

    Resamples images, or whole groups when `groups` names each image's group (its patient): images of
    one patient are not independent, and resampling them one by one makes the intervals too narrow.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    draws = {k: [] for k in METRIC_NAMES}
    for i in bootstrap_indices(y, n, seed, groups):
        m = binary_metrics(y[i], p[i], threshold)
        for k in METRIC_NAMES:
            draws[k].append(m[k])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in draws.items()}
