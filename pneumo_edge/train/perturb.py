"""A declared set of acquisition shifts, applied to validation films as a proxy for a new site.

Validation carved from train saturates (AUROC ~0.998), so recipes are compared on how their
validation metrics hold up when contrast, gamma, sharpness, noise, compression or framing change.

    views = perturbed_views(films, size=224)   # {"clean": (N,S,S) uint8, "gamma-0.6": ..., ...}
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from pneumo_edge.edge.imaging import resize_gray

# name -> (kind, strength). Framing perturbations act on the whole film, the others on the clean view.
PERTURBATIONS: dict[str, tuple[str, float]] = {
    "clean": ("none", 0.0),
    "contrast-0.6": ("contrast", 0.6),
    "contrast-1.4": ("contrast", 1.4),
    "gamma-0.6": ("gamma", 0.6),
    "gamma-1.6": ("gamma", 1.6),
    "blur-1.5": ("blur", 1.5),
    "noise-0.04": ("noise", 0.04),
    "jpeg-q20": ("jpeg", 20),
    "zoom-in-0.8": ("zoom", 0.8),
    "zoom-out-full": ("zoom", 0.0),
    "shift-up-left": ("shift", -0.1),
    "shift-down-right": ("shift", 0.1),
}
# Milder strengths than the study's stress tests, for the guard (pneumo_edge.bundle.guardfit): the same film from
# another site, not a degraded one (blur-1.5 and jpeg-q20 cut an earlier model's accuracy to 83-95%).
MILD_PERTURBATIONS: dict[str, tuple[str, float]] = {
    "blur-0.75": ("blur", 0.75),
    "jpeg-q75": ("jpeg", 75),
}


def _framed(film: np.ndarray, size: int, kind: str, s: float) -> np.ndarray:
    h, w = film.shape
    if kind == "zoom" and s == 0.0:  # the whole film, letterboxed on black as a detector border reads
        side = max(h, w)
        canvas = np.zeros((side, side), np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = film
        return resize_gray(canvas, size, "squash-bilinear")
    side = min(h, w) * (s if kind == "zoom" else 0.9)
    cx, cy = w / 2, h / 2
    if kind == "shift":  # move a 90% square by s of the side, clipped to the film
        cx = min(max(cx + s * side, side / 2), w - side / 2)
        cy = min(max(cy + s * side, side / 2), h - side / 2)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return np.asarray(Image.fromarray(film).resize((size, size), Image.BILINEAR, box=box))


def _grey(img: np.ndarray, kind: str, s: float, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    if kind == "contrast":
        m = x.mean()
        x = m + (x - m) * s
    elif kind == "gamma":
        x = x ** s
    elif kind == "noise":
        x = x + rng.normal(0.0, s, x.shape).astype(np.float32)
    elif kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(s)))
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=int(s))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def perturbed_views(films: list[np.ndarray], size: int, names: list[str] | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Each named perturbation (PERTURBATIONS or MILD_PERTURBATIONS; default: all of PERTURBATIONS) of every
    film, as uint8 (N, size, size) model views."""
    clean = np.stack([resize_gray(f, size, "center-crop-bilinear") for f in films])
    out = {}
    for name in names or list(PERTURBATIONS):
        kind, s = {**PERTURBATIONS, **MILD_PERTURBATIONS}[name]
        rng = np.random.default_rng(seed)
        if kind == "none":
            out[name] = clean
        elif kind in ("zoom", "shift"):
            out[name] = np.stack([_framed(f, size, kind, s) for f in films])
        else:
            out[name] = np.stack([_grey(c, kind, s, rng) for c in clean])
    return out
