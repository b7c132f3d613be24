"""Binary classification metrics, calibration and the validation-chosen operating point.

Shared by evaluate, export parity and bench; the metrics themselves live in `edge.stats` (numpy alone).

    p = prob_from_logits(logits, temperature=1.3)
    m = binary_metrics(y, p, threshold=0.42)
"""

from __future__ import annotations

import numpy as np

from pneumo_edge.edge import sitecal
from pneumo_edge.edge.model import prob_from_logits  # noqa: F401 - one definition, shared with the edge
from pneumo_edge.edge.stats import (  # noqa: F401 - re-exported
    METRIC_NAMES,
    binary_metrics,
    bootstrap_ci,
    bootstrap_indices,
    confusion,
)


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity on (y, p) is still >= target.

    Highest, because among thresholds that meet the sensitivity target it gives
    the best specificity.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    pos = np.sort(p[y == 1])
    if len(pos) == 0:
        from pneumo_edge.edge.errors import DataError

        raise DataError("no PNEUMONIA images in this set: cannot set a sensitivity target")
    # At threshold t = pos[k], the positives >= t are len(pos) - k; keep the largest such k.
    k = int(np.floor(len(pos) * (1.0 - target) + 1e-9))
    k = min(max(k, 0), len(pos) - 1)
    return float(pos[k])


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T > 0 that minimises the validation negative log-likelihood (edge.sitecal's search, one owner)."""
    logits = np.asarray(logits, np.float64)
    return sitecal.fit_temperature(logits[:, 1] - logits[:, 0], np.asarray(y).astype(np.float64))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = np.clip(prob_from_logits(logits, temperature), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def temperature_holds_up(val_logits: np.ndarray, y_val: np.ndarray, seed: int = 0) -> dict:
    """Fit T on one half of validation and check it on the other: does scaling lower held-out NLL?"""
    y = np.asarray(y_val).astype(int)
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(y), bool)
    for k in (0, 1):  # stratified halves
        idx = rng.permutation(np.flatnonzero(y == k))
        fit[idx[: len(idx) // 2]] = True
    t = fit_temperature(val_logits[fit], y[fit])
    held = ~fit
    before, after = _nll(val_logits[held], y[held], 1.0), _nll(val_logits[held], y[held], t)
    return {"half_temperature": t, "heldout_nll_t1": before, "heldout_nll_scaled": after, "applied": after < before}


def calibrate(val_logits: np.ndarray, y_val: np.ndarray, target_sensitivity: float = 0.95) -> dict:
    """Temperature, then the operating point on the calibrated probabilities; validation data only.

    Temperature scaling is applied only when a temperature fitted on half of validation lowers the
    NLL of the other half; otherwise T = 1 and `probability` is the network's own softmax.
    """
    check = temperature_holds_up(val_logits, y_val)
    t = fit_temperature(val_logits, y_val) if check["applied"] else 1.0
    p = prob_from_logits(val_logits, t)
    return {"temperature": t, "threshold": threshold_for_sensitivity(y_val, p, target_sensitivity),
            "target_sensitivity": target_sensitivity, "temperature_check": check}


def outcome(truth: int, predicted: int) -> str:
    """'true positive', 'false negative', ... for one image (1 = PNEUMONIA, the positive class)."""
    return f"{'true' if truth == predicted else 'false'} {'positive' if predicted == 1 else 'negative'}"


ECE_BINS = 15  # equal-width bins of top-label confidence over [0.5, 1]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins."""
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    pred = (p >= 0.5).astype(int)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Per-bin mean predicted P(positive) and observed positive rate, for the diagram."""
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    out = {"mean_predicted": [], "observed": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["count"].append(int(m.sum()))
        out["mean_predicted"].append(float(p[m].mean()) if m.any() else None)
        out["observed"].append(float(y[m].mean()) if m.any() else None)
    return out


