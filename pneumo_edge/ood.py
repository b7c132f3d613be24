"""Out-of-distribution guard: refuse what is not a frontal chest X-ray.

Three checks, each scaled so that 1.0 is its threshold; the guard score is their
maximum and a file scoring above 1 is REJECTED_OOD:

* embedding: class-conditional Gaussian with a shared covariance (Mahalanobis,
  Lee et al. 2018) on the penultimate features, modelled as the top-k principal
  directions plus isotropic residual variance so that it fits in metadata;
  threshold = a high percentile of held-out validation scores.
* colour: X-rays are grey; a colourful image is not one, whatever its content.
* intensity: mean / spread / histogram entropy outside the range seen in training.

Everything is fitted on training data; only the embedding threshold looks at
validation. `fit_guard` needs torch (export time); `Guard` needs numpy only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

N_COMPONENTS = 32
PERCENTILE = 99.5
MAX_CHROMA = 0.04  # grey X-rays stored as RGB measure < 0.01 (JPEG chroma noise); photos 0.1-0.3
FIT_IMAGES = 1500


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
    def from_meta(cls, m: dict) -> "Guard":
        return cls(means=_unpack(m["means"], (m["classes"], m["dim"])),
                   components=_unpack(m["components"], (m["k"], m["dim"])),
                   eigvals=np.asarray(m["eigvals"], np.float64), residual_var=float(m["residual_var"]),
                   threshold=float(m["threshold"]), stat_lo=np.asarray(m["stat_lo"]),
                   stat_hi=np.asarray(m["stat_hi"]), max_chroma=float(m["max_chroma"]))


def fit_from_arrays(emb: np.ndarray, y: np.ndarray, stats: np.ndarray, val_emb: np.ndarray,
                    k: int = N_COMPONENTS, percentile: float = PERCENTILE) -> Guard:
    emb = np.asarray(emb, np.float64)
    classes = np.unique(y)
    means = np.stack([emb[y == c].mean(0) for c in classes])
    centred = emb - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / max(1, len(emb) - len(classes))
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    k = min(k, len(vals) - 1)
    residual_var = float(max(vals[k:].mean(), 1e-8))
    # Quantiles widened by 10% of the range: the test site differs a little from the training site.
    lo, hi = np.percentile(stats, 0.1, axis=0), np.percentile(stats, 99.9, axis=0)
    pad = 0.1 * (hi - lo)
    guard = Guard(means=means, components=vecs[:, :k].T.copy(), eigvals=np.maximum(vals[:k], 1e-8),
                  residual_var=residual_var, threshold=1.0, stat_lo=lo - pad, stat_hi=hi + pad)
    guard.threshold = float(np.percentile(guard.embedding_distance(val_emb), percentile))
    return guard


def fit_guard(model, spec, train_samples, val_samples, n_fit: int = FIT_IMAGES, progress: bool = True) -> dict:
    """Guard statistics from training images and threshold from validation; returns metadata."""
    import torch

    from .data import decode_all
    from .imaging import normalize

    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(train_samples), min(n_fit, len(train_samples)), replace=False))
    x_tr, y_tr, _ = decode_all([train_samples[i] for i in pick], spec.size, progress=progress)
    x_va, _, _ = decode_all(val_samples, spec.size, progress=progress)

    @torch.no_grad()
    def embed(images):
        model.eval()
        out = []
        for i in range(0, len(images), 64):
            x = torch.from_numpy(normalize(images[i:i + 64], spec))
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
        return np.concatenate(out)

    guard = fit_from_arrays(embed(x_tr), y_tr, image_stats(x_tr), embed(x_va))
    return guard.to_meta()
