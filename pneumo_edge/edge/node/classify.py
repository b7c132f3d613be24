"""Spooled instances -> Findings, through the same decoding and scoring as `pneumo-edge infer`.

The decision is the edge's scored-image record (edge.decision: the label, the guard's verdict and reason);
this module only carries it into a Finding, and turns a decoding error into "not assessed" with the
decoder's reason. Each instance also gets a digest of what its result was made from (the model's input, or
the reason it could not be assessed): the same SOP Instance UID arriving later with another digest is a
conflict (edge.node.service), not a new result under the same result UIDs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..cam import caption_for
from ..decision import NOT_RUN, Scored, score_images
from ..heatmap import FOLDER, caption, cell_edges, explain_film
from ..infer import decode_file
from ..model import EdgeModel
from .sc import overlay_pixels
from .sr import Finding


def decode(model: EdgeModel, path: Path):
    """((resized uint8, chroma, patient age or None), None), or (None, the one-line reason the image cannot be
    assessed): infer's own decoding, from the spooled file (read within the file's bounds, as `infer` reads one)."""
    decoded, err = decode_file(str(path), model.spec.size, model.spec.resize)
    if err is not None and err.startswith("unexpected "):  # not one of the decoder's reasons: its text may quote values
        err = err.split(":", 1)[0]
    return decoded, None if err is None else f"not decodable: {err}"


def digest(decoded, reason: str | None) -> str:
    """What a result is made from: the model's input pixels, or the reason there was none."""
    h = hashlib.sha256()
    if decoded is not None:
        resized = decoded[0]
        h.update(f"{resized.shape}".encode())
        h.update(resized.tobytes())
    else:
        h.update((reason or "").encode())
    return h.hexdigest()


def finding_of(scored: Scored) -> Finding:
    """The SR's view of a record: a refused image is 'not assessed', with the guard's reason."""
    if scored.rejected:
        return Finding(None, scored.probability, scored.guard_verdict, scored.guard_score,
                       f"refused by the guard: {scored.guard_reason}")
    return Finding(scored.label, scored.probability, scored.guard_verdict, scored.guard_score)


def classify(model: EdgeModel, paths: list[Path], use_guard: bool = True, heatmaps: bool = False
             ) -> tuple[list[Finding], list, list[str], float]:
    """One Finding per spooled instance, its heat-map overlay (uint8 RGB, or None: not asked for, not assessed,
    or refused by the guard: `Scored.heatmap_allowed`), its digest, and the seconds spent decoding and scoring. With a
    heat map, the Finding carries the map's strongest cell (the SR's evidence region)."""
    t0 = time.perf_counter()
    decoded = [decode(model, p) for p in paths]
    findings = [Finding(label=None, probability=None, guard_verdict=NOT_RUN, reason=why)
                for _, why in decoded]
    digests = [digest(dec, why) for dec, why in decoded]
    overlays: list = [None] * len(paths)
    ok = [i for i, (dec, _) in enumerate(decoded) if dec is not None]
    if ok:
        for i, s in zip(ok, score_images(model, [decoded[i][0] for i in ok], use_guard)):
            findings[i] = finding_of(s)
            if heatmaps and s.heatmap_allowed:
                overlays[i], box = _overlay(model, decoded[i][0][0], s)
                findings[i] = replace(findings[i], evidence=box)
    return findings, overlays, digests, time.perf_counter() - t0


def _overlay(model: EdgeModel, resized, s: Scored):
    """The map `infer --heatmaps` draws (edge.heatmap.FOLDER), over the model's input, captioned; and its
    strongest cell."""

    heat = explain_film(model, resized, method=FOLDER)
    pixels = overlay_pixels(resized, heat, caption_for(s.label, s.probability, s.threshold, caption(FOLDER)))
    return pixels, strongest_cell(heat)


GRID = 7  # cells a side: the shipped occlusion map's own grid


def strongest_cell(heat: np.ndarray, grid: int = GRID) -> tuple[float, float, float, float] | None:
    """(left, top, right, bottom) as fractions of the map of the grid cell with the highest mean evidence, or
    None for a map without any (a film with nothing found)."""
    if not np.any(heat > 0):
        return None
    h, w = heat.shape
    rows, cols = cell_edges(h, grid), cell_edges(w, grid)
    means = np.array([[heat[rows[r]:rows[r + 1], cols[c]:cols[c + 1]].mean() for c in range(grid)]
                      for r in range(grid)])
    r, c = np.unravel_index(int(np.argmax(means)), means.shape)
    return cols[c] / w, rows[r] / h, cols[c + 1] / w, rows[r + 1] / h
