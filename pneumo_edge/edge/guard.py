"""Guard scoring on the edge: refuse what is not a frontal chest X-ray. Numpy only.

Up to six checks, each scaled so that 1.0 is its threshold; the guard score is their
maximum and `Guard.rejects` is the one rule that turns a score into a refusal:

* embedding: class-conditional Gaussian with a shared covariance (Mahalanobis,
  Lee et al. 2018) on the penultimate features, modelled as the top-k principal
  directions plus isotropic residual variance so that it fits in metadata;
  threshold = MARGIN x a high percentile of validation scores (clean and mildly shifted views).
* colour: X-rays are grey; a colourful image is not one, whatever its content.
* intensity: mean / spread / histogram entropy outside the range of training films and their mild shifts.
* orientation (absent from older bundles): a logistic-regression head on the embedding,
  trained on films as acquired vs altered copies (upside down, rotated 90/270, inverted
  grey levels), which sit close enough to real films for the embedding distance to miss.
* polarity (absent from older bundles): a logistic-regression head on the film's 8 x 8 thumbnail,
  standardised per film: an X-ray's bright mediastinum and dark lungs read as a negative when inverted.
  Standardising makes an inverted film's features exactly the negatives of the original's, so the head
  separates the two with a wide margin, whatever the embedding makes of a negative.
* population (absent from older bundles): a logistic-regression head on the embedding, P(the film is from
  outside the model's population, e.g. an adult's), fitted on training films against films of another
  population; for films whose header gives no age (a DICOM's age is judged by `edge.population` instead).

Each exported file carries statistics fitted on its own embeddings (fp32 and INT8 differ).
Fitting (training data) lives in `pneumo_edge.bundle.guardfit`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from .metafields import Fields

N_COMPONENTS = 32
# Embedding threshold = MARGIN x the PERCENTILE of validation distances, pooled over clean views and
# mild acquisition shifts (pneumo_edge.bundle.guardfit.SHIFT_VIEWS): films from another site look like those shifts.
PERCENTILE = 99.5
# MARGIN: on validation, a shift view left out of the pool was then refused 0.15% of the time on average
# (worst view 0.6%) at 1.2, against 0.5% (worst 2%) at 1.0: headroom for shifts not in the pool.
MARGIN = 1.2
# Orientation threshold: this percentile of validation P(altered) on films as acquired (clean + shifts);
# 99.8 rather than 99.5: clean validation refusals 0.4% -> 0%, altered copies still >= 97% refused.
ORIENT_PERCENTILE = 99.8
# Polarity threshold: the same percentile of validation P(inverted) on films as acquired (clean + shifts).
POLARITY_PERCENTILE = 99.8
# Population threshold: half way, in log-odds, from this percentile of validation P(outside) on films as
# acquired (clean + shifts) ...
POPULATION_PERCENTILE = 99.5
# ... to this percentile of the other population's fitting films, each scored by a head fitted without its
# patient (5 folds by patient): the margin is split between the two sides instead of all given to the adults.
# At the validation percentile alone (the first rule) 2.4% of the paediatric test films were refused (goal 1%)
# and every held-out adult film (goal 95%); the fitting adults' 5th percentile sat 6.9 log-odds above it (fp32).
POPULATION_OUTSIDE_PERCENTILE = 5.0
POLARITY_GRID = 8  # thumbnail cells per side: 224 / 8 = 28 px cells
MAX_CHROMA = 0.04  # grey X-rays stored as RGB measure < 0.01 (JPEG chroma noise); photos 0.1-0.3
# What image_stats can measure: mean and spread of grey levels in [0, 1], entropy of 64 bins in [0, 6] bits.
# A fitted range (padded) may reach one such width beyond; one wider than that refuses nothing.
STAT_RANGE = ((0.0, 1.0), (0.0, 1.0), (0.0, 6.0))
STAT_NAMES = ("mean", "spread", "entropy")
MAX_CLASSES, MAX_DIM = 16, 65536  # guard metadata beyond these is not a file this toolchain wrote


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def image_stats(resized: np.ndarray) -> np.ndarray:
    """(N, 3): mean and standard deviation of grey level (0..1) and histogram entropy (bits)."""
    x = resized.reshape(len(resized), -1)
    mean = x.mean(1) / 255.0
    std = x.std(1) / 255.0
    ent = np.empty(len(x))
    for i, row in enumerate(x):
        h = np.bincount(row >> 2, minlength=64).astype(np.float64)  # 64-bin histogram
        h = h[h > 0] / len(row)
        ent[i] = -(h * np.log2(h)).sum()
    return np.stack([mean, std, ent], 1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow warnings


@dataclass
class OrientationHead:
    """Logistic regression on the embedding: P(altered) for an upside-down, rotated or inverted film."""

    weights: np.ndarray  # (D,)
    bias: float
    threshold: float  # P(altered) above which a film is refused; chosen on validation
    percentile: float = ORIENT_PERCENTILE  # how `threshold` was chosen: recorded, not used

    def probability(self, emb: np.ndarray) -> np.ndarray:
        return _sigmoid(np.einsum("nd,d->n", np.asarray(emb, np.float64), self.weights) + self.bias)

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """1.0 at the threshold, like every other check."""
        return self.probability(emb) / self.threshold

    def to_meta(self) -> dict:
        return {"weights": _pack(self.weights), "bias": self.bias, "threshold": self.threshold,
                "percentile": self.percentile}

    FIELD = "orientation"  # its key under 'ood'

    @classmethod
    def from_meta(cls, m: dict, dim: int, source: str = "model"):
        f = Fields(m, f"ood.{cls.FIELD}", source)
        extra = {k: f.text(k, default="") for k in cls.RECORDED}
        return cls(weights=f.packed("weights", (dim,)), bias=f.number("bias"), threshold=_probability(f),
                   percentile=f.number("percentile", 0, 100, default=cls.percentile), **extra)

    RECORDED = ()  # further fields a subclass keeps from its metadata (a class constant, not a field)


@dataclass
class PopulationHead(OrientationHead):
    """Logistic regression on the embedding: P(the film is from outside the model's population), for films
    whose header gives no age. Fitted on the model's training films (inside) and films of another population
    (outside, e.g. adults); its threshold keeps a stated share of validation films (`pneumo_edge.bundle.guardfit`)."""

    percentile: float = POPULATION_PERCENTILE
    fitted_on: str = ""  # what the two sides were: recorded, not used
    rule: str = ""  # how the threshold was set, in words: recorded, not used

    FIELD = "population"
    RECORDED = ("fitted_on", "rule")

    def to_meta(self) -> dict:
        return super().to_meta() | {"fitted_on": self.fitted_on, "rule": self.rule}


def thumbnail(resized: np.ndarray, grid: int = POLARITY_GRID,
              spread: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N, grid*grid): cell means of each film, standardised by the film's own mean and spread (grey levels;
    `spread` = (mean, std) per film when the caller has them). 255 - x gives exactly the negated features
    of x (up to the spread's epsilon). Sums run on the uint8 pixels: no float copy of the films."""
    x = np.asarray(resized)
    n, s = len(x), x.shape[-1]
    b = s // grid
    cells = x[:, :b * grid, :b * grid].reshape(n, grid, b, grid, b).sum((2, 4), dtype=np.float64)
    cells = cells.reshape(n, -1) / (b * b)
    if spread is None:
        flat = x.reshape(n, -1)
        spread = flat.mean(1), flat.std(1)
    mean, std = (np.asarray(v, np.float64)[:, None] for v in spread)
    return (cells - mean) / (std + 1e-6)


@dataclass
class PolarityHead:
    """Logistic regression on the standardised thumbnail: P(inverted grey levels)."""

    weights: np.ndarray  # (grid*grid,)
    bias: float
    threshold: float  # P(inverted) above which a film is refused; chosen on validation
    grid: int = POLARITY_GRID
    percentile: float = POLARITY_PERCENTILE  # how `threshold` was chosen: recorded, not used

    def probability(self, resized: np.ndarray, spread: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        return _sigmoid(np.einsum("nd,d->n", thumbnail(resized, self.grid, spread), self.weights) + self.bias)

    def scores(self, resized: np.ndarray, spread: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        return self.probability(resized, spread) / self.threshold

    def to_meta(self) -> dict:
        return {"weights": _pack(self.weights), "bias": self.bias, "threshold": self.threshold, "grid": self.grid,
                "percentile": self.percentile}

    @classmethod
    def from_meta(cls, m: dict, source: str = "model") -> "PolarityHead":
        f = Fields(m, "ood.polarity", source)
        grid = f.integer("grid", 1, 64)
        return cls(weights=f.packed("weights", (grid * grid,)), bias=f.number("bias"), threshold=_probability(f),
                   grid=grid, percentile=f.number("percentile", 0, 100, default=POLARITY_PERCENTILE))


def _probability(f: Fields) -> float:
    """A head's threshold on its probability: in (0, 1), since a probability never exceeds 1."""
    return f.number("threshold", 0.0, 1.0, lo_open=True, hi_open=True)


# What each check means, for the reason a refused image is given.
CHECK_WORDS = {"embedding": "unlike the chest X-rays the model was fitted on",
               "intensity": "grey levels outside the range of X-rays",
               "colour": "a colour image", "orientation": "upside down or rotated",
              "polarity": "grey levels inverted (a negative)",
               "population": "film looks like an adult chest X-ray, outside this model's population"}


@dataclass
class Guard:
    means: np.ndarray  # (C, D) class means of the embedding
    components: np.ndarray  # (k, D) principal directions of class-centred embeddings
    eigvals: np.ndarray  # (k,)
    residual_var: float  # mean variance outside the top-k directions
    threshold: float  # embedding distance: margin x percentile of validation distances
    stat_lo: np.ndarray  # (3,) allowed range of image_stats
    stat_hi: np.ndarray
    max_chroma: float = MAX_CHROMA
    orientation: OrientationHead | None = None  # absent in bundles written before it existed
    polarity: PolarityHead | None = None  # likewise
    population: PopulationHead | None = None  # likewise
    # How `threshold` was chosen: recorded for the reader, not used in scoring.
    percentile: float = PERCENTILE
    margin: float = 1.0
    threshold_views: tuple[str, ...] = field(default_factory=tuple)

    def embedding_distance(self, emb: np.ndarray) -> np.ndarray:
        # einsum, not `@`: these products are small, and BLAS's own thread pool fighting onnxruntime's and the
        # decode pool for two cores made this a third of infer's time (profiled); einsum runs in this thread.
        emb = np.asarray(emb, np.float64)
        best = np.full(len(emb), np.inf)
        for mu in self.means:
            d = emb - mu
            proj = np.einsum("nd,kd->nk", d, self.components)
            resid = (d * d).sum(1) - (proj * proj).sum(1)
            dist = (proj * proj / self.eigvals).sum(1) + np.maximum(resid, 0) / self.residual_var
            best = np.minimum(best, dist)
        return best

    @staticmethod
    def rejects(score: float | np.ndarray) -> bool | np.ndarray:
        """A score above 1 means at least one check is past its threshold."""
        return score > 1.0

    def check_scores(self, resized: np.ndarray, emb: np.ndarray, chroma: np.ndarray | None = None,
                     aged: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each check's score per image, 1.0 at its threshold. `aged`: films whose header gave the patient's age,
        judged by it (`edge.population`) instead of by the image-based population check (scored 0 here)."""
        st = image_stats(resized)
        width = self.stat_hi - self.stat_lo
        outside = (np.maximum(self.stat_lo - st, st - self.stat_hi) / width).max(1)  # < 0 inside the range
        out = {"embedding": self.embedding_distance(emb) / self.threshold,
               "intensity": np.where(outside > 0, 1.0 + outside, 0.0),
               "colour": (np.zeros(len(emb)) if chroma is None else np.asarray(chroma, np.float64)) / self.max_chroma}
        if self.orientation is not None:
            out["orientation"] = self.orientation.scores(emb)
        if self.polarity is not None:  # image_stats has each film's mean and spread already (0..1)
            out["polarity"] = self.polarity.scores(resized, (st[:, 0] * 255.0, st[:, 1] * 255.0))
        if self.population is not None:
            score = self.population.scores(emb)
            out["population"] = score if aged is None else np.where(aged, 0.0, score)
        return out

    def scores(self, resized: np.ndarray, emb: np.ndarray, chroma: np.ndarray | None = None) -> np.ndarray:
        """Guard score per image: the maximum over checks; > 1 means out of distribution."""
        return np.maximum.reduce(list(self.check_scores(resized, emb, chroma).values()))

    def assess(self, resized: np.ndarray, emb: np.ndarray, chroma: np.ndarray | None = None,
               aged: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """(score per image, why per image): the reason names each check past its threshold, '' if none."""
        checks = self.check_scores(resized, emb, chroma, aged)
        scores = np.maximum.reduce(list(checks.values()))
        reasons = ["; ".join(f"{CHECK_WORDS[k]} ({k} {v[i]:.2f}x threshold)" for k, v in checks.items() if self.rejects(v[i]))
                   for i in range(len(scores))]
        return scores, reasons

    def to_meta(self) -> dict:
        c, d = self.means.shape
        m = {"method": "mahalanobis-ppca+colour+intensity" + ("+orientation" if self.orientation else "")
             + ("+polarity" if self.polarity else "") + ("+population" if self.population else ""),
             "dim": d, "classes": c, "k": len(self.eigvals), "means": _pack(self.means),
             "components": _pack(self.components), "eigvals": self.eigvals.tolist(),
             "residual_var": self.residual_var, "threshold": self.threshold, "percentile": self.percentile,
             "margin": self.margin, "threshold_views": list(self.threshold_views),
             "stat_lo": self.stat_lo.tolist(), "stat_hi": self.stat_hi.tolist(), "max_chroma": self.max_chroma}
        if self.orientation is not None:
            m["orientation"] = self.orientation.to_meta()
        if self.polarity is not None:
            m["polarity"] = self.polarity.to_meta()
        if self.population is not None:
            m["population"] = self.population.to_meta()
        return m

    @classmethod
    def from_meta(cls, m: dict, source: str = "model") -> "Guard":
        """The guard from its metadata, every field checked (a NaN threshold would accept every film)."""
        f = Fields(m, "ood", source)
        classes, dim = f.integer("classes", 1, MAX_CLASSES), f.integer("dim", 1, MAX_DIM)
        k = f.integer("k", 1, dim)
        orientation = OrientationHead.from_meta(f.get("orientation"), dim, source) if f.has("orientation") else None
        polarity = PolarityHead.from_meta(f.get("polarity"), source) if f.has("polarity") else None
        population = PopulationHead.from_meta(f.get("population"), dim, source) if f.has("population") else None
        stat_lo, stat_hi = _stat_range(f)
        return cls(means=f.packed("means", (classes, dim)), components=f.packed("components", (k, dim)),
                   eigvals=f.numbers("eigvals", count=k, lo=0.0, lo_open=True),
                   residual_var=f.number("residual_var", 0.0, lo_open=True),
                   threshold=f.number("threshold", 0.0, lo_open=True), stat_lo=stat_lo, stat_hi=stat_hi,
                   max_chroma=f.number("max_chroma", 0.0, 1.0, lo_open=True, hi_open=True),
                   orientation=orientation, polarity=polarity, population=population,
                   percentile=f.number("percentile", 0, 100, default=PERCENTILE),
                   margin=f.number("margin", 0.0, lo_open=True, default=1.0),
                   threshold_views=f.texts("threshold_views", default=()))


def _stat_range(f: Fields) -> tuple[np.ndarray, np.ndarray]:
    """stat_lo and stat_hi: three finite bounds each, lo < hi, none wider than STAT_RANGE allows."""
    lo, hi = f.numbers("stat_lo", count=3), f.numbers("stat_hi", count=3)
    for i, (name, (a, b)) in enumerate(zip(STAT_NAMES, STAT_RANGE)):
        reach = (a - (b - a), b + (b - a))
        if not reach[0] <= lo[i] < hi[i] <= reach[1]:
            raise f.bad("stat_lo/stat_hi", f"{name} range [{lo[i]:g}, {hi[i]:g}] must have lo < hi within "
                                           f"[{reach[0]:g}, {reach[1]:g}] (it measures {a:g} to {b:g})")
    return lo, hi
