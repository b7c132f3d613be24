"""Guard scoring on the edge: refuse what is not a frontal chest X-ray. Numpy only.

Three checks, each scaled so that 1.0 is its threshold; the guard score is their
maximum and `Guard.rejects` is the one rule that turns a score into a refusal:

* embedding: class-conditional Gaussian with a shared covariance (Mahalanobis,
  Lee et al. 2018) on the penultimate features, modelled as the top-k principal
  directions plus isotropic residual variance so that it fits in metadata;
  threshold = a high percentile of held-out validation scores.
* colour: X-rays are grey; a colourful image is not one, whatever its content.
* intensity: mean / spread / histogram entropy outside the range seen in training.

Fitting (torch, training data) lives in `pneumo_edge.ood`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

N_COMPONENTS = 32
PERCENTILE = 99.5
MAX_CHROMA = 0.04  # grey X-rays stored as RGB measure < 0.01 (JPEG chroma noise); photos 0.1-0.3


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def _unpack(s: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32).reshape(shape).astype(np.float64)


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


@dataclass
class Guard:
    means: np.ndarray  # (C, D) class means of the embedding
    components: np.ndarray  # (k, D) principal directions of class-centred embeddings
    eigvals: np.ndarray  # (k,)
    residual_var: float  # mean variance outside the top-k directions
    threshold: float  # embedding distance at PERCENTILE of validation
    stat_lo: np.ndarray  # (3,) allowed range of image_stats
    stat_hi: np.ndarray
    max_chroma: float = MAX_CHROMA

    def embedding_distance(self, emb: np.ndarray) -> np.ndarray:
        emb = np.asarray(emb, np.float64)
        best = np.full(len(emb), np.inf)
        for mu in self.means:
            d = emb - mu
            proj = d @ self.components.T
            resid = (d * d).sum(1) - (proj * proj).sum(1)
            dist = (proj * proj / self.eigvals).sum(1) + np.maximum(resid, 0) / self.residual_var
            best = np.minimum(best, dist)
        return best

    @staticmethod
    def rejects(score: float | np.ndarray) -> bool | np.ndarray:
        """A score above 1 means at least one check is past its threshold."""
        return score > 1.0

    def scores(self, resized: np.ndarray, emb: np.ndarray, chroma: np.ndarray | None = None) -> np.ndarray:
        """Guard score per image; > 1 means out of distribution."""
        s_emb = self.embedding_distance(emb) / self.threshold
        st = image_stats(resized)
        width = self.stat_hi - self.stat_lo
        outside = np.maximum(self.stat_lo - st, st - self.stat_hi) / width  # < 0 inside the range
        s_img = np.where(outside.max(1) > 0, 1.0 + outside.max(1), 0.0)
        s_col = (np.zeros(len(emb)) if chroma is None else np.asarray(chroma, np.float64)) / self.max_chroma
        return np.maximum.reduce([s_emb, s_img, s_col])

    def to_meta(self) -> dict:
        c, d = self.means.shape
        return {"method": "mahalanobis-ppca+colour+intensity", "dim": d, "classes": c,
                "k": len(self.eigvals), "means": _pack(self.means), "components": _pack(self.components),
                "eigvals": self.eigvals.tolist(), "residual_var": self.residual_var,
                "threshold": self.threshold, "percentile": PERCENTILE,
                "stat_lo": self.stat_lo.tolist(), "stat_hi": self.stat_hi.tolist(),
                "max_chroma": self.max_chroma}

    @classmethod
    def from_meta(cls, m: dict, source: str = "model") -> "Guard":
        missing = [k for k in ("means", "classes", "dim", "components", "k", "eigvals", "residual_var", "threshold",
                               "stat_lo", "stat_hi", "max_chroma") if k not in m]
        if missing:
            from .errors import ModelError

            raise ModelError(f"{source}: metadata field 'ood.{missing[0]}' is missing")
        return cls(means=_unpack(m["means"], (m["classes"], m["dim"])),
                   components=_unpack(m["components"], (m["k"], m["dim"])),
                   eigvals=np.asarray(m["eigvals"], np.float64), residual_var=float(m["residual_var"]),
                   threshold=float(m["threshold"]), stat_lo=np.asarray(m["stat_lo"]),
                   stat_hi=np.asarray(m["stat_hi"]), max_chroma=float(m["max_chroma"]))
