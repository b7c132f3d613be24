"""Drift monitoring over a rolling window of scored images. Numpy only (prometheus-client for /metrics).

    mon = Monitor.for_model(model)               # the reference stored in the bundle, if any
    mon.observe(probability, guard_score, label, rejected)   # one call per scored image
    mon.alarm, mon.snapshot()

The window holds the last `window` images: their rate of positive labels and of guard refusals, and how
their probabilities and guard scores fall into the reference's bins (deciles of the validation films,
stored in the bundle at export). The drift statistic is the larger of two population stability indices
(PSI, window against reference: one for the probability, one for the guard score). Its alarm band was set
by simulation from validation alone (`fit_reference`): a stream of `stream_images` films drawn from the
validation films, against a reference itself resampled (the stored one is an estimate too), crosses it
anywhere along the stream with probability `false_alarm_rate`. One warning line is logged each time the
alarm trips. Once on, the alarm stays on until the statistic has stayed at or below its band for a whole
window of images (every image that raised it has left the window): a statistic hovering at the band is one
episode and one warning, not many. The hold changes nothing before the first trip, so the false-alarm rate
stands. Without a reference, rates are still reported and the statistic says it is unavailable.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from .errors import ModelError
from .metafields import Fields

WINDOW = 200  # images in the rolling window
BINS = 10  # reference deciles
FALSE_ALARM = 0.05  # probability that an in-distribution stream of STREAM images trips the alarm at all
STREAM = 1000
SIMULATIONS = 2000
SMOOTH = 0.5  # added to every bin count: an empty bin must not make the PSI infinite
MAX_WINDOW = 100_000  # images a window may hold: its memory is bounded by it
MAX_BINS = 1000
log = logging.getLogger("pneumo_edge.monitor")


def _edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Inner bin edges: the reference's quantiles, repeated ones dropped."""
    return np.unique(np.quantile(np.asarray(values, np.float64), np.linspace(0, 1, bins + 1)[1:-1]))


def _freq(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.float64) + SMOOTH
    return counts / counts.sum(-1, keepdims=True)


def psi(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Population stability index of bin counts (..., B) against reference frequencies (..., B)."""
    q = _freq(counts)
    return ((q - reference) * np.log(q / reference)).sum(-1)


def _rolling_counts(bins: np.ndarray, n_bins: int, window: int) -> np.ndarray:
    """(len - window + 1, n_bins) bin counts of every full window along a stream of bin indices."""
    onehot = np.zeros((len(bins) + 1, n_bins))
    onehot[np.arange(1, len(bins) + 1), bins] = 1
    c = onehot.cumsum(0)
    return c[window:] - c[:-window]


def _bins(f: Fields, edges_key: str, freq_key: str, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Inner bin edges (sorted, within [0, top]) and one frequency more than edges, positive, summing to 1."""
    edges = f.numbers(edges_key, lo=0.0, hi=top, longest=MAX_BINS)
    if np.any(np.diff(edges) < 0):
        raise f.bad(edges_key, "must be in increasing order")
    freq = f.numbers(freq_key, count=len(edges) + 1, lo=0.0, hi=1.0, lo_open=True)
    if abs(freq.sum() - 1.0) > 1e-6:
        raise f.bad(freq_key, f"must sum to 1, sums to {freq.sum():.6g}")
    return edges, freq


@dataclass
class Reference:
    prob_edges: np.ndarray
    prob_freq: np.ndarray
    guard_edges: np.ndarray | None
    guard_freq: np.ndarray | None
    positive_rate: float
    refusal_rate: float
    window: int
    alarm_threshold: float  # on max(PSI probability, PSI guard score)
    alarm_threshold_probability_only: float  # when the guard is off
    false_alarm_rate: float
    stream_images: int
    n_reference: int
    fitted_on: str

    def to_meta(self) -> dict:
        def floats(a):
            return None if a is None else [float(v) for v in a]

        return {"statistic": "max(PSI probability, PSI guard score) over reference deciles",
                "prob_edges": floats(self.prob_edges), "prob_freq": floats(self.prob_freq),
                "guard_edges": floats(self.guard_edges), "guard_freq": floats(self.guard_freq),
                "positive_rate": self.positive_rate, "refusal_rate": self.refusal_rate, "window": self.window,
                "alarm_threshold": self.alarm_threshold,
                "alarm_threshold_probability_only": self.alarm_threshold_probability_only,
                "false_alarm_rate": self.false_alarm_rate, "stream_images": self.stream_images,
                "n_reference": self.n_reference, "fitted_on": self.fitted_on}

    @classmethod
    def from_meta(cls, m: dict, source: str = "model") -> "Reference":
        """The reference from its metadata, every field checked (a NaN band would never sound the alarm)."""
        f = Fields(m, "monitor", source)
        prob_edges, prob_freq = _bins(f, "prob_edges", "prob_freq", 1.0)
        guard_edges = guard_freq = None
        if f.has("guard_edges") or f.has("guard_freq"):
            guard_edges, guard_freq = _bins(f, "guard_edges", "guard_freq", math.inf)
        return cls(prob_edges=prob_edges, prob_freq=prob_freq, guard_edges=guard_edges, guard_freq=guard_freq,
                   positive_rate=f.number("positive_rate", 0, 1), refusal_rate=f.number("refusal_rate", 0, 1),
                   window=f.integer("window", 1, MAX_WINDOW),
                   alarm_threshold=f.number("alarm_threshold", 0, lo_open=True),
                   alarm_threshold_probability_only=f.number("alarm_threshold_probability_only", 0, lo_open=True),
                   false_alarm_rate=f.number("false_alarm_rate", 0, 1, lo_open=True, hi_open=True),
                   stream_images=f.integer("stream_images", 1, 10**9), n_reference=f.integer("n_reference", 1, 10**9),
                   fitted_on=f.text("fitted_on", default=""))

    def retempered(self, old: float, new: float) -> "Reference":
        """The same reference for probabilities recomputed with temperature `new` instead of `old`: the map is
        monotone, so each film stays in its bin and only the edges move."""
        e = np.clip(self.prob_edges, 1e-15, 1 - 1e-15)
        z = old * (np.log(e) - np.log1p(-e))
        return replace(self, prob_edges=1.0 / (1.0 + np.exp(-z / new)))


def fit_reference(p: np.ndarray, guard: np.ndarray | None, positive: np.ndarray, rejected: np.ndarray,
                  fitted_on: str, window: int = WINDOW, false_alarm: float = FALSE_ALARM, stream: int = STREAM,
                  simulations: int = SIMULATIONS, seed: int = 0) -> Reference:
    """Bins, rates and the alarm band from one model's scores of the validation films (nothing else).

    Each simulated stream draws `stream` films from the reference films with replacement and compares every
    full window with a bootstrap copy of the reference; the band is the (1 - false_alarm) quantile of each
    stream's largest statistic.
    """
    p = np.asarray(p, np.float64)
    rng = np.random.default_rng(seed)
    comps = [(_edges(p), p)] + ([] if guard is None else [(_edges(guard), np.asarray(guard, np.float64))])
    binned = [np.searchsorted(e, v, side="right") for e, v in comps]
    freqs = [_freq(np.bincount(b, minlength=len(e) + 1)) for (e, _), b in zip(comps, binned)]
    n = len(p)
    worst = np.zeros((simulations, len(comps)))
    for s in range(simulations):
        boot, draw = rng.integers(0, n, n), rng.integers(0, n, stream)
        for c, ((e, _), b) in enumerate(zip(comps, binned)):
            ref = _freq(np.bincount(b[boot], minlength=len(e) + 1))
            worst[s, c] = psi(_rolling_counts(b[draw], len(e) + 1, window), ref).max()
    both = np.quantile(worst.max(1), 1 - false_alarm)
    prob_only = np.quantile(worst[:, 0], 1 - false_alarm)
    return Reference(prob_edges=comps[0][0], prob_freq=freqs[0],
                     guard_edges=None if guard is None else comps[1][0],
                     guard_freq=None if guard is None else freqs[1],
                     positive_rate=float(np.mean(positive)), refusal_rate=float(np.mean(rejected)), window=window,
                     alarm_threshold=float(both), alarm_threshold_probability_only=float(prob_only),
                     false_alarm_rate=false_alarm, stream_images=stream, n_reference=n, fitted_on=fitted_on)


class Monitor:
    """Rolling-window rates and drift against a reference; thread-safe, O(1) per observation."""

    def __init__(self, reference: Reference | None, positive_label: str = "PNEUMONIA", window: int | None = None,
                 logger: logging.Logger = log):
        self.reference, self.positive_label, self.log = reference, positive_label, logger
        self.window = window if window is not None else (reference.window if reference else WINDOW)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 1 <= self.window <= MAX_WINDOW:
            raise ModelError(f"the monitor's window must be a whole number of images in [1, {MAX_WINDOW}], "
                             f"got {self.window!r}")
        self._lock = threading.Lock()
        self._items: deque = deque()
        self.totals = {"images": 0, "positive": 0, "negative": 0, "rejected": 0}
        self.trips = 0
        self.alarm = False
        self._quiet_for = 0  # images in a row at or below the band while the alarm is on
        self.statistic: float | None = None
        self._prob_counts = np.zeros(len(reference.prob_freq)) if reference else None
        self._guard_counts = (np.zeros(len(reference.guard_freq))
                              if reference is not None and reference.guard_freq is not None else None)
        self._guard_seen = 0  # window images that carried a guard score

    @classmethod
    def for_model(cls, model, logger: logging.Logger = log) -> "Monitor":
        meta = model.meta
        ref = Reference.from_meta(meta.monitor, str(model.path)) if meta.monitor else None
        return cls(ref, meta.labels[1], logger=logger)

    def _bins(self, probability: float, guard_score: float | None) -> tuple[int | None, int | None]:
        r = self.reference
        if r is None:
            return None, None
        pb = int(np.searchsorted(r.prob_edges, probability, side="right"))
        gb = (None if guard_score is None or r.guard_edges is None
              else int(np.searchsorted(r.guard_edges, guard_score, side="right")))
        return pb, gb

    def observe(self, probability: float, guard_score: float | None, label: str, rejected: bool) -> None:
        """One scored image: its calibrated probability, guard score (None: guard off), the label it was
        given (REJECTED_OOD included) and whether the guard refused it."""
        positive = label == self.positive_label
        pb, gb = self._bins(float(probability), None if guard_score is None else float(guard_score))
        with self._lock:
            self.totals["images"] += 1
            self.totals["rejected" if rejected else "positive" if positive else "negative"] += 1
            self._items.append((positive, bool(rejected), pb, gb))
            self._count(pb, gb, +1)
            if len(self._items) > self.window:
                _, _, old_pb, old_gb = self._items.popleft()
                self._count(old_pb, old_gb, -1)
            self._update_alarm()

    def _count(self, pb: int | None, gb: int | None, sign: int) -> None:
        if pb is not None:
            self._prob_counts[pb] += sign
        if gb is not None and self._guard_counts is not None:
            self._guard_counts[gb] += sign
            self._guard_seen += sign

    def _components(self) -> dict[str, float]:
        r = self.reference
        out = {"probability": float(psi(self._prob_counts, r.prob_freq))}
        if self._guard_counts is not None and self._guard_seen == len(self._items):
            out["guard_score"] = float(psi(self._guard_counts, r.guard_freq))
        return out

    def band(self) -> float | None:
        """The alarm band for the components in the window (the guard's drops out when the guard is off)."""
        r = self.reference
        if r is None:
            return None
        return r.alarm_threshold if "guard_score" in self._components() else r.alarm_threshold_probability_only

    def _update_alarm(self) -> None:
        if self.reference is None or len(self._items) < self.window:
            self.statistic = None
            return
        self.statistic = max(self._components().values())
        above = self.statistic > self.band()
        if self.alarm:  # the hold: off only after a whole window at or below the band
            self._quiet_for = 0 if above else self._quiet_for + 1
            if self._quiet_for >= self.window:
                self.alarm = False
            return
        if above:
            self.alarm, self._quiet_for = True, 0
            self.trips += 1
            s = self.rates()
            self.log.warning(
                "drift alarm: statistic %.4f above its band %.4f over the last %d images (positive rate %.3f, "
                "reference %.3f; guard refusals %.3f, reference %.3f)", self.statistic, self.band(),
                len(self._items), s["positive_rate"], self.reference.positive_rate, s["refusal_rate"],
                self.reference.refusal_rate)

    def rates(self) -> dict:
        n = len(self._items)
        return {"positive_rate": sum(i[0] for i in self._items) / n if n else None,
                "refusal_rate": sum(i[1] for i in self._items) / n if n else None}

    def snapshot(self) -> dict:
        """Everything /metrics and the offline report show, as plain numbers."""
        with self._lock:
            r = self.reference
            out = {"window_images": len(self._items), "window": self.window, **self.rates(),
                   "totals": dict(self.totals), "alarm": self.alarm, "alarm_trips": self.trips,
                   "reference": r is not None}
            if r is None:
                out["drift"] = "unavailable: this model file carries no monitoring reference"
                return out
            out.update(reference_positive_rate=r.positive_rate, reference_refusal_rate=r.refusal_rate,
                       false_alarm_rate=r.false_alarm_rate, stream_images=r.stream_images,
                       alarm_threshold=self.band(), statistic=self.statistic,
                       components=self._components() if self._items else {},
                       bins={"probability": {"window": self._prob_counts.tolist(), "reference": r.prob_freq.tolist()},
                             **({"guard_score": {"window": self._guard_counts.tolist(),
                                                 "reference": r.guard_freq.tolist()}}
                                if self._guard_counts is not None else {})})
            if self.statistic is None:
                out["drift"] = f"warming up: {len(self._items)} of {self.window} images"
            return out


def replay(monitor: Monitor, rows) -> list[dict]:
    """Feed (probability, guard_score, label, rejected) rows in order; the trace after each one."""
    trace = []
    for probability, guard_score, label, rejected in rows:
        monitor.observe(probability, guard_score, label, rejected)
        rates = monitor.rates()
        trace.append({"statistic": monitor.statistic, "alarm": monitor.alarm, **rates})
    return trace


def prometheus_collector(monitor: Monitor):
    """A prometheus-client collector that reads the monitor at scrape time."""
    # lazy: prometheus-client comes with the [serve] extra, and the monitor works without it
    from prometheus_client.core import (  # an extra ([serve]/[node]), only when run
        CounterMetricFamily,
        GaugeMetricFamily,
    )

    class Collector:
        def collect(self):
            s = monitor.snapshot()
            images = CounterMetricFamily("pneumo_edge_images", "Images scored, by outcome", labels=["outcome"])
            for k in ("positive", "negative", "rejected"):
                images.add_metric([k], s["totals"][k])
            yield images
            yield CounterMetricFamily("pneumo_edge_drift_alarms", "Times the drift alarm tripped",
                                      value=s["alarm_trips"])
            gauges = {"pneumo_edge_window_images": ("Images in the rolling window", s["window_images"]),
                      "pneumo_edge_window_positive_rate": ("Share of positive labels in the window",
                                                           s["positive_rate"]),
                      "pneumo_edge_window_refusal_rate": ("Share of guard refusals in the window", s["refusal_rate"]),
                      "pneumo_edge_drift_reference_available": ("1 when the model file carries a monitoring "
                                                                "reference", int(s["reference"])),
                      "pneumo_edge_drift_alarm": ("1 from a trip until the drift statistic has stayed at or below "
                                                  "its band for a whole window", int(s["alarm"]))}
            if s["reference"]:
                gauges.update({
                    "pneumo_edge_reference_positive_rate": ("Positive share on validation", s["reference_positive_rate"]),
                    "pneumo_edge_reference_refusal_rate": ("Refusal share on validation", s["reference_refusal_rate"]),
                    "pneumo_edge_drift_statistic": ("max PSI of the window against the reference", s["statistic"]),
                    "pneumo_edge_drift_alarm_threshold": (f"Alarm band: false-alarm rate {s['false_alarm_rate']} "
                                                          f"per {s['stream_images']} in-distribution images",
                                                          s["alarm_threshold"])})
            for name, (doc, value) in gauges.items():
                if value is not None:
                    yield GaugeMetricFamily(name, doc, value=float(value), labels=None)
            if s["reference"]:
                share = GaugeMetricFamily("pneumo_edge_bin_share", "Share of images per reference bin",
                                          labels=["score", "bin", "set"])
                for score, b in s["bins"].items():
                    n = max(1.0, sum(b["window"]))
                    for i, (w, r) in enumerate(zip(b["window"], b["reference"])):
                        share.add_metric([score, str(i), "window"], w / n)
                        share.add_metric([score, str(i), "reference"], r)
                yield share

    return Collector()
