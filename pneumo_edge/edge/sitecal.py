"""Site calibration maths: an operating point with a stated sensitivity guarantee. Numpy only.

    t = guaranteed_threshold(p_positives, target=0.95, confidence=0.90)   # SiteThreshold
    lo, hi = grouped_interval(pred_negative, groups)                      # specificity, by patient

The guarantee. With n positive films scored, the threshold set at the k-th largest positive score has a
population sensitivity S with P(S < q) = P(Binomial(n, q) >= k) (an order statistic of the positives'
scores; ties only make S larger). So taking the smallest k whose exact one-sided Clopper-Pearson lower
bound on k/n is at least the target, at the requested confidence, gives P(S >= target) >= confidence.
That is "the largest threshold whose lower confidence bound on sensitivity reaches the target".
It needs at least `positives_needed(target, confidence)` positives: with fewer, even catching every one
of them does not bound the sensitivity above the target.

Patients. The binomial needs independent trials, and two films of one patient are not: on simulated
sites of 100 films drawn by patient, the film-level rule let the population sensitivity fall below the
target in 16.9% of calibrations, not the 10% that 90% confidence allows. So when the films name their
patients, the trials are the positive *patients*, each scored by its lowest positive film: the threshold
at the k-th largest of those catches every film of a patient with probability >= target (at `confidence`),
so the patient-averaged sensitivity is at least the target too. Films without a patient name count as
patients of one film; with no names at all this is the film-level rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .stats import group_members

BOOTSTRAP = 2000  # resamples for the specificity interval
LEVEL = 0.95  # two-sided level of the specificity interval


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space (n up to a few thousand)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def lower_bound(k: int, n: int, confidence: float) -> float:
    """Exact one-sided Clopper-Pearson lower confidence bound on a proportion k/n: the p at which
    P(Binomial(n, p) >= k) = 1 - confidence (0 when k = 0)."""
    if not 0 <= k <= n or n == 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if k == 0:
        return 0.0
    alpha = 1.0 - confidence
    if k == n:
        return alpha ** (1.0 / n)  # closed form
    lo, hi = 0.0, k / n
    for _ in range(60):  # bisection: the tail grows with p
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_sf(k, n, mid) < alpha else (lo, mid)
    return lo


def positives_needed(target: float, confidence: float) -> int:
    """The fewest positives for which catching all of them bounds sensitivity at `target`: target^n <= alpha."""
    return int(math.ceil(math.log(1.0 - confidence) / math.log(target) - 1e-12))


@lru_cache(maxsize=4096)
def min_detected(n: int, target: float, confidence: float) -> int | None:
    """The smallest k whose lower bound on k/n reaches the target; None when even k = n does not."""
    if n < positives_needed(target, confidence):
        return None
    lo, hi = 1, n  # lower_bound grows with k
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if lower_bound(mid, n, confidence) >= target else (mid + 1, hi)
    return lo


@dataclass(frozen=True)
class SiteThreshold:
    threshold: float | None  # None: too few positives for the guarantee
    n_positive: int  # positive trials: patients where films name them, else films
    detected: int | None  # trials at or above the threshold that the guarantee counts on
    lower_bound: float | None  # its Clopper-Pearson lower bound on sensitivity
    needed: int  # positive trials the guarantee needs at all
    unit: str = "films"  # what a trial is: "patients" or "films"
    n_positive_films: int | None = None

    @property
    def ok(self) -> bool:
        return self.threshold is not None


def guaranteed_threshold(p_positive: np.ndarray, target: float, confidence: float,
                         groups=None) -> SiteThreshold:
    """The largest threshold on the positives' probabilities whose lower confidence bound on sensitivity
    (exact binomial over the positive patients, or films when `groups` is None) is at least `target` at
    `confidence`. `groups` names each positive film's patient; a patient counts by its lowest film."""
    if not 0.0 < target < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"target and confidence must be in (0, 1), got {target}, {confidence}")
    p = np.asarray(p_positive, np.float64)
    films = len(p)
    unit = "films"
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != films:
            raise ValueError(f"{len(groups)} patient names for {films} films")
        if len(np.unique(groups)) < films:
            unit = "patients"
            p = np.array([p[m].min() for m in group_members(groups)]) if films else p
    p = np.sort(p)[::-1]
    n, needed = len(p), positives_needed(target, confidence)
    k = min_detected(n, target, confidence)
    if k is None:
        return SiteThreshold(None, n, None, None, needed, unit, films)
    return SiteThreshold(float(p[k - 1]), n, k, lower_bound(k, n, confidence), needed, unit, films)


def grouped_interval(hits: np.ndarray, groups=None, level: float = LEVEL, n: int = BOOTSTRAP,
                     seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a proportion (mean of 0/1 `hits`), resampling whole groups (patients)
    when `groups` is given, single images otherwise. None for an empty set."""
    hits = np.asarray(hits, np.float64)
    if len(hits) == 0:
        return None
    members = group_members(np.arange(len(hits)) if groups is None else groups)
    sums = np.array([hits[m].sum() for m in members])
    sizes = np.array([len(m) for m in members], np.float64)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(members), (n, len(members)))
    rates = sums[draw].sum(1) / sizes[draw].sum(1)
    a = (1 - level) / 2 * 100
    return float(np.percentile(rates, a)), float(np.percentile(rates, 100 - a))


def nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels y under sigmoid(z / T)."""
    s = np.asarray(z, np.float64) / temperature
    return float(np.mean(np.logaddexp(0.0, s) - np.asarray(y, np.float64) * s))


def fit_temperature(z: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T minimising nll(z, y, T): golden-section search on log T (the NLL is unimodal in it)."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(80):
        if nll(z, y, math.exp(c)) < nll(z, y, math.exp(d)):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return math.exp((a + b) / 2)


def split_groups(groups, seed: int = 0) -> np.ndarray:
    """A boolean mask putting a random half of the groups (patients) on the True side."""
    groups = np.asarray(groups)
    names = np.unique(groups)
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(names)[: len(names) // 2].tolist())
    return np.array([g in chosen for g in groups.tolist()])
