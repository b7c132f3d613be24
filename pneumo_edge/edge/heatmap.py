"""Heat maps that explain one film: forward passes only, on any EdgeModel (fp32 or INT8), no torch.

    model = EdgeModel("export/model.int8.onnx")
    heat = explain_film(model, resized)          # (S, S) float32 in [0, 1]: evidence for PNEUMONIA
    caption(SHIPPED)                             # what the map means, for the picture's caption

Every method here maps the evidence for the positive class (PNEUMONIA), whatever the decision: how much
hiding a region lowers the logit margin (l_PNEUMONIA - l_NORMAL) / T. On a NORMAL decision a map that is low
everywhere says "nothing found". The margin, unlike the probability, does not saturate on confident films.
Maps are ReLU(drop) / max(largest drop on the film, FLOOR): a film without FLOOR logits of evidence anywhere
stays dim instead of having noise stretched to full brightness.

Which method ships, and why, is decided by `pneumo-edge study heatmaps` against the rule committed in
bench/heatmaps/protocol.json (results in bench/heatmaps/results.json).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from .atomic import prepare_out_dir
from .cam import (
    OUTPUT,
    CamHead,
    caption_for,
    contact_sheet,
    overlay_image,
    overlay_names,
    png_bytes,
    rejected_record,
    target_index,
    unit_scale,
    upsample_bilinear,
    write_png,
)
from .decision import positive, score_images
from .errors import ImageError
from .imaging import normalize, read_film, resize_gray
from .progress import track

GREY = 128  # uint8 mid-grey: 0 after the (0.5, 0.5) normalisation
BLUR_SIGMA = 8.0  # px, the blur perturbation
FLOOR = 1.0  # logits: the evidence that maps to full brightness at least
BATCH = 72  # perturbed copies per onnxruntime call

Score = Callable[[np.ndarray], np.ndarray]  # uint8 films (N, S, S) -> evidence (N,) float64


def margin_score(model, target: int = 1, batch: int = BATCH) -> Score:
    """The evidence the maps explain: (l_target - l_other) / T of the model, per film (target 1: PNEUMONIA)."""
    def score(films: np.ndarray) -> np.ndarray:
        lg = model.logits(films, batch_size=batch).astype(np.float64)
        return (lg[:, target] - lg[:, 1 - target]) / model.temperature
    return score


def blurred(film: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(film, np.uint8)).filter(ImageFilter.GaussianBlur(sigma)))


def filler(film: np.ndarray, how: str) -> np.ndarray:
    """What replaces a hidden region: mid-grey, or the same film blurred."""
    if how == "grey":
        return np.full_like(film, GREY)
    if how == "blur":
        return blurred(film)
    raise ValueError(f"unknown perturbation {how!r}: grey or blur")


def cell_edges(size: int, grid: int) -> np.ndarray:
    return np.round(np.linspace(0, size, grid + 1)).astype(int)


def cell_masks(size: int, grid: int) -> np.ndarray:
    """(grid*grid, S, S) bool: one mask per cell of a grid x grid tiling, row-major."""
    e = cell_edges(size, grid)
    m = np.zeros((grid * grid, size, size), bool)
    for r in range(grid):
        for c in range(grid):
            m[r * grid + c, e[r]:e[r + 1], e[c]:e[c + 1]] = True
    return m


def scale_evidence(drop: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """ReLU(drop) / max(max drop, floor): [0, 1], 1 only where the film's evidence reaches `floor`."""
    pos = np.maximum(np.asarray(drop, np.float32), 0)
    return (pos / max(float(pos.max()), floor)).astype(np.float32)


def occlusion_drops(score: Score, film: np.ndarray, grid: int, how: str = "grey") -> np.ndarray:
    """(grid, grid): the drop in evidence when each cell is hidden, one forward pass per cell."""
    masks = cell_masks(film.shape[-1], grid)
    fill = filler(film, how)
    copies = np.where(masks, fill[None], film[None])
    base = score(film[None])[0]
    return (base - score(copies)).reshape(grid, grid)


def occlusion(score: Score, film: np.ndarray, grids: tuple[int, ...] = (7,), how: str = "grey") -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2014), averaged over grid scales, upsampled to the film."""
    s = film.shape[-1]
    maps = [upsample_bilinear(np.maximum(occlusion_drops(score, film, g, how), 0)[None], s, s)[0] for g in grids]
    return scale_evidence(np.mean(maps, axis=0))


@lru_cache(maxsize=4)
def rise_masks(size: int, n: int, grid: int = 7, p: float = 0.5, seed: int = 0) -> np.ndarray:
    """(n, S, S) float32 soft masks of RISE (Petsiuk et al. 2018): random grid x grid keep/hide, upsampled
    bilinearly to (grid + 1) cells and cropped at a random shift. Seeded: the same masks for every film."""
    rng = np.random.default_rng(seed)
    cell = -(-size // grid)
    coarse = (rng.random((n, grid, grid)) < p).astype(np.float32)
    big = upsample_bilinear(coarse, (grid + 1) * cell, (grid + 1) * cell)
    dy, dx = rng.integers(0, cell, n), rng.integers(0, cell, n)
    return np.stack([big[i, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(n)]).astype(np.float32)


def rise(score: Score, film: np.ndarray, n: int = 64, how: str = "grey", p: float = 0.5) -> np.ndarray:
    """RISE with the evidence centred: sum_i (s_i - mean s) M_i / (n p) ~ how much keeping a pixel adds."""
    masks = rise_masks(film.shape[-1], n, p=p)
    fill = filler(film, how).astype(np.float32)
    copies = np.clip(masks * film[None] + (1 - masks) * fill[None] + 0.5, 0, 255).astype(np.uint8)
    s = score(copies)
    sal = np.tensordot((s - s.mean()).astype(np.float32), masks, axes=1) / (n * p)
    return scale_evidence(sal)


def cam_contrast(model, films: np.ndarray, target: int = 1) -> np.ndarray:
    """CAM of the margin, ReLU(sum_k (W_t - W_other)[k] A_k): the feature-map evidence for `target`, min-max scaled."""

    head = model.require_cam()
    diff = CamHead(head.weights[target:target + 1] - head.weights[1 - target:2 - target], head.bias[:1])
    feats = model.run(normalize(films, model.spec), [OUTPUT])[OUTPUT]
    s = model.spec.size
    return unit_scale(upsample_bilinear(diff.raw(feats, np.zeros(len(films), int)), s, s))


def cam_decided(model, films: np.ndarray, target: int | None = None) -> np.ndarray:
    """Today's CAM: the decided class's map (or `target`'s) at the pooled feature map (`edge.cam`)."""

    out = model.run(normalize(films, model.spec), ["logits", OUTPUT])
    classes = positive(model.probability(out["logits"]), model.threshold).astype(int)
    if target is not None:
        classes[:] = target
    return model.require_cam().maps(out[OUTPUT], classes, model.spec.size)


@dataclass(frozen=True)
class Method:
    """One way to draw a map. A perturbation method draws from any evidence function (`draw(score, film)`), so
    the ONNX files and the PyTorch twin run the same code; a CAM-type one needs the ONNX 'features' output."""

    name: str
    title: str  # what the caption names
    passes: int  # forward passes per film
    perturbation: str | None  # what the method hides regions with, if anything
    evidence: str  # what the map shows
    draw: Callable[[Score, np.ndarray], np.ndarray] | None = None
    on_model: Callable | None = None  # (model, films, target) -> maps

    @property
    def needs_features(self) -> bool:
        return self.draw is None

    def film_map(self, model, film: np.ndarray, target: int = 1) -> np.ndarray:
        """(S, S) float32 in [0, 1] for one resized uint8 film, on an EdgeModel."""
        film = np.asarray(film, np.uint8)
        if self.draw is not None:
            return self.draw(margin_score(model, target), film)
        return self.on_model(model, film[None], target)[0]


PNEUMONIA_EVIDENCE = "evidence for PNEUMONIA"
METHODS = {m.name: m for m in (
    Method("cam", "CAM (decided class)", 1, None, "evidence for the decided class",
           on_model=lambda model, f, t: cam_decided(model, f)),
    Method("cam-contrast", "CAM of PNEUMONIA - NORMAL", 1, None, PNEUMONIA_EVIDENCE,
           on_model=cam_contrast),
    Method("occlusion", "occlusion 7x7, grey", 50, "grey", PNEUMONIA_EVIDENCE,
           draw=lambda score, f: occlusion(score, f, (7,), "grey")),
    Method("occlusion-ms", "occlusion 4x4 + 7x7, grey", 67, "grey", PNEUMONIA_EVIDENCE,
           draw=lambda score, f: occlusion(score, f, (4, 7), "grey")),
    Method("occlusion-blur", "occlusion 7x7, blur", 50, "blur", PNEUMONIA_EVIDENCE,
           draw=lambda score, f: occlusion(score, f, (7,), "blur")),
    Method("rise-64", "RISE, 64 masks, grey", 64, "grey", PNEUMONIA_EVIDENCE,
           draw=lambda score, f: rise(score, f, 64, "grey")),
)}


def caption(method: str | Method = None, target: str = "PNEUMONIA") -> str:
    """What a map means, for every picture that shows one."""
    m = METHODS[method or SHIPPED] if not isinstance(method, Method) else method
    if m.evidence == PNEUMONIA_EVIDENCE:
        return f"map: evidence for {target} ({m.title}); low = none found"
    return f"map: {m.evidence} ({m.title})"


# The method every output ships: the one `pneumo-edge study heatmaps` picked by the committed rule
# (bench/heatmaps/results.json, "pick"; tests/edge/test_heatmap.py checks that the two agree).
SHIPPED = "occlusion"
# `infer --heatmaps` over folders: the study's "folder_method"; where its rule 5 finds none (no cheaper method
# meets the specificity and deletion targets), the pick
FOLDER = SHIPPED


def method_for(model, name: str | None = None) -> Method:
    """The method, once it is known this model can draw it (a CAM-type one needs the 'features' output)."""
    m = METHODS[name or SHIPPED]
    if m.needs_features:
        model.require_cam()
    return m


def can_draw(model, name: str | None = None) -> bool:
    return not METHODS[name or SHIPPED].needs_features or model.cam is not None


def explain_film(model, resized: np.ndarray, target: int = 1, method: str | None = None) -> np.ndarray:
    """The shipped heat map of one resized uint8 film (S, S) on an EdgeModel: (S, S) float32 in [0, 1]."""
    return method_for(model, method).film_map(model, resized, target)


# ---------------------------------------------------------------- explain with onnxruntime

def explain(images: list[str], model, out: str | os.PathLike, target: str | None = None,
            force: bool = False, guard: bool = True) -> list[dict]:
    """`pneumo-edge explain --model X.onnx`: one overlay PNG per image plus a contact sheet, no torch.

    `model` is an EdgeModel. Records match `pneumo_edge.bundle.gradcam.explain`: the scored-image fields
    (`decision.Scored.fields`), and for an image the guard refuses status "rejected" and no PNG.
    The map is `SHIPPED`: the evidence for PNEUMONIA (or for `target`), forward passes only.
    """

    method = method_for(model)
    meta, spec, labels = model.meta, model.spec, list(model.labels)
    target_idx = target_index(labels, target)
    cls = 1 if target_idx is None else target_idx  # default: the evidence for PNEUMONIA, whatever the decision
    out = prepare_out_dir(out, force)
    records, panels = [], []
    for src, name in track(zip(images, overlay_names(images, ".cam.png")), len(images), "explain"):
        try:
            film = read_film(src, size=spec.size)
            resized = resize_gray(film.gray, spec.size, spec.resize)
            scored = score_images(model, [(resized, film.chroma, film.age_years)], guard)[0]
            if not scored.heatmap_allowed:
                records.append(rejected_record(src, scored))
                continue
            heat = method.film_map(model, resized, cls)
            img = overlay_image(resized, heat, [Path(src).name[:40], *caption_for(
                scored.label, scored.probability, meta.threshold, caption(method, labels[cls]))])
            png = write_png(out / name, png_bytes(img))
            records.append({"path": str(src), **scored.fields(), "error": None, "explained_class": labels[cls],
                            "png": str(png)})
            panels.append(img)
        except ImageError as e:
            records.append({"path": str(src), "status": "error", "error": str(e)})
        except Exception as e:  # one odd file must never end the run  # noqa: BLE001
            records.append({"path": str(src), "status": "error", "error": f"unexpected {e.__class__.__name__}: {e}"})
    if len(panels) > 1:
        write_png(out / "contact_sheet.png", png_bytes(contact_sheet(panels)))
    return records
