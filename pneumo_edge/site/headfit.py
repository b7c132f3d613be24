"""A logistic head in numpy: L2-regularised, weighted films, its strength chosen on an inner split by patient.

    head = fit_logistic(x, y, l2=1e-3, sample_weight=w)      # Logistic: margin(x) = x @ weights + bias
    l2, scores = choose_l2(x, y, patients, grid=L2_GRID)     # best pooled out-of-fold ROC-AUC

No scikit-learn: an edge box refits a head with numpy alone. The features are standardised, the objective
is the weighted mean log-loss plus l2/2 |w|^2 on the standardised weights (the intercept is not
penalised), minimised by Newton's method with a backtracking line search. With a starting head the fit is that
head plus a penalised correction (a head kept near its parent). The optimum's weights lie in the
span of the (centred, standardised) films, so the fit runs in that span (thin SVD): with fewer films than
features, the Hessian is films x films, not features x features, and the answer is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo_edge.edge.stats import roc_auc

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # per-film mean log-loss + l2/2 |w_std|^2
FOLDS = 5
MAX_NEWTON = 100


@dataclass(frozen=True)
class Logistic:
    weights: np.ndarray  # (D,) on raw features
    bias: float
    l2: float

    def margin(self, x: np.ndarray) -> np.ndarray:
        """The log-odds of the positive class, per row of x."""
        return np.einsum("nd,d->n", np.asarray(x, np.float64), self.weights) + self.bias


def _objective(theta: np.ndarray, f: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, offset) -> float:
    z = f @ theta[:-1] + theta[-1] + offset
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * theta[:-1] @ theta[:-1])


def _newton(f: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, offset: np.ndarray) -> np.ndarray:
    """argmin of _objective over (beta, intercept); w sums to 1."""
    n, r = f.shape
    a = np.c_[f, np.ones(n)]
    ridge = np.r_[np.full(r, l2), 1e-10]
    theta = np.zeros(r + 1)
    value = _objective(theta, f, y, w, l2, offset)
    for _ in range(MAX_NEWTON):
        z = a @ theta + offset
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = a.T @ (w * (p - y)) + ridge * np.r_[theta[:-1], 0.0]
        hess = (a * (w * p * (1 - p))[:, None]).T @ a + np.diag(ridge)
        step = np.linalg.solve(hess, grad)
        t, decrease = 1.0, float(grad @ step)
        while t > 1e-8:
            new = _objective(theta - t * step, f, y, w, l2, offset)
            if new <= value - 1e-4 * t * decrease:
                break
            t /= 2
        theta, done = theta - t * step, value - new < 1e-12 * max(1.0, abs(value))
        value = new
        if done or decrease < 1e-14:
            break
    return theta


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, sample_weight: np.ndarray | None = None,
                 start: Logistic | None = None) -> Logistic:
    """L2-regularised logistic regression of y (0/1) on x, films weighted by `sample_weight`. With `start`,
    the fit is `start` plus a correction and the penalty is on the correction: a head kept near `start`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(np.unique(y)) != 2:
        raise ValueError("a logistic head needs films of both classes")
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w / w.sum()
    mu = w @ x
    sd = np.sqrt(w @ (x - mu) ** 2) + 1e-6
    z = (x - mu) / sd
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > s[0] * 1e-10
    basis = vt[keep].T  # (D, r): the standardised weights lie in the span of the films
    offset = np.zeros(len(y)) if start is None else start.margin(x)
    theta = _newton(z @ basis, y, w, l2, offset)
    coef = basis @ theta[:-1] / sd
    bias = float(theta[-1] - coef @ mu)
    if start is not None:
        coef, bias = coef + start.weights, bias + start.bias
    return Logistic(weights=coef, bias=bias, l2=l2)


def patient_folds(groups: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold index per film: the patients dealt at random into `folds` folds (every film of one in one fold)."""
    names = np.unique(np.asarray(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = dict(zip(names[order].tolist(), (np.arange(len(names)) % folds).tolist()))
    return np.array([fold_of[g] for g in np.asarray(groups).tolist()])


def choose_l2(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid=L2_GRID, folds: int = FOLDS, seed: int = 0,
              extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
              weight: np.ndarray | None = None) -> tuple[float, dict[float, float]]:
    """The l2 of `grid` whose heads, fitted on all folds but one (plus `extra` films (x, y, weight) each time,
    e.g. replayed home films), rank the held-out fold's films best: pooled out-of-fold ROC-AUC."""
    fold = patient_folds(groups, folds, seed)
    weight = np.ones(len(y)) if weight is None else weight
    scores = {}
    for l2 in grid:
        out = np.zeros(len(y))
        for k in range(folds):
            tr = fold != k
            xs, ys, ws = x[tr], y[tr], weight[tr]
            if extra is not None:
                xs, ys, ws = np.r_[xs, extra[0]], np.r_[ys, extra[1]], np.r_[ws, extra[2]]
            out[~tr] = fit_logistic(xs, ys, l2, ws).margin(x[~tr])
        scores[l2] = roc_auc(y, out)
    best = max(grid, key=lambda v: (scores[v], v))  # ties: the stronger penalty
    return best, scores
