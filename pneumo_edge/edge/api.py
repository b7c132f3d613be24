"""The Python API: load a model once, classify paths, bytes, PIL images or arrays.

    import pneumo_edge
    m = pneumo_edge.load("export/model.int8.onnx")     # or a bundle folder, or a hub id "user/repo"
    m.predict("xray.jpeg")                              # {"status": "ok", "label": "PNEUMONIA", "probability": 0.97, ...}
    m.predict([img1, img2], as_frame=True)              # pandas DataFrame, one row per image
    m.predict("xray.jpeg", heatmap=True)["heatmap"]      # float32 (224, 224) in [0, 1]; "heatmap_png": its overlay

Every input goes through the same decoding, preprocessing and decision as `pneumo-edge infer`, and a
result carries the same fields under the same names as its rows (`decision.FIELDS`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .cam import overlay_png
from .decision import FIELDS, score_images
from .errors import ImageError, ModelError
from .heatmap import method_for
from .hub import download_model, is_repo_id, path_reason
from .imaging import pil_to_gray, read_film, resize_gray
from .model import EdgeModel, default_model_path
from .targets import MODEL_FILES

HEATMAP_FIELDS = ["explained_class", "heatmap", "heatmap_method", "heatmap_meaning", "heatmap_png"]


def resolve_model(source: str | os.PathLike | None, filename: str = MODEL_FILES[0]) -> Path:
    """An .onnx path for a local file, a bundle folder, or a hub repo id (downloaded and cached).

    A hub id is only what cannot be a path (edge.hub.is_repo_id): 'export/model.int8.onnx' that does not exist
    here is a missing file, never a download.

    None (no --model given): the shipped model, `default_model_path()`.
    """
    if source is None:
        return default_model_path()
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        if not (path / filename).is_file():
            raise ModelError(f"bundle folder '{text}' has no {filename}")
        return path / filename
    if path.is_file():
        return path
    if path.exists():
        raise ModelError(f"model '{text}' is neither a file nor a folder")
    if is_repo_id(text):
        return download_model(text, filename)
    why = path_reason(text)
    raise ModelError(f"model '{text}' not found: no such file or folder"
                     + (f" (read as a path, not a hub id, because {why})" if why else
                        " and not a hub id (the hub form is 'user/repo')"))


class Classifier:
    """An EdgeModel with a friendly predict(); the guard applies unless turned off."""

    def __init__(self, model: EdgeModel, guard: bool = True):
        self.model = model
        self.meta = model.meta
        self.guard = guard and model.guard is not None

    def _gray(self, x) -> tuple[np.ndarray, float, float | None]:
        """(grey, chroma, the patient's age from a DICOM header or None)."""
        if isinstance(x, (str, os.PathLike, bytes, bytearray)):
            return read_film(x, size=self.meta.preprocess.size)
        if isinstance(x, Image.Image):
            return (*pil_to_gray(x), None)
        if isinstance(x, np.ndarray):
            if x.ndim == 3 and x.shape[-1] in (3, 4):
                x = x[..., :3]
            elif x.ndim != 2:
                raise ImageError(f"array of shape {x.shape}: expected (H, W) grey or (H, W, 3) colour")
            if x.dtype == np.float64:
                x = x.astype(np.float32)
            return (*pil_to_gray(Image.fromarray(np.ascontiguousarray(x))), None)
        raise ImageError(f"cannot classify a {type(x).__name__}: give a path, bytes, a PIL image or a numpy array")

    def predict(self, x, as_frame: bool = False, heatmap: bool = False):
        """One dict for one input, a list for a list; each holds the scored-image fields (`decision.FIELDS`:
        status, label, model_label, probability, threshold, guard_score, guard_verdict, guard_reason,
        model_sha256).

        heatmap: also, for every image whose record allows a map, "heatmap" (float32 (S, S) in [0, 1]: the
        evidence for PNEUMONIA over the model's input, `edge.heatmap`), "heatmap_png" (that map over the input,
        PNG bytes), "heatmap_method", "heatmap_meaning" and "explained_class".
        """
        method = method_for(self.model) if heatmap else None
        many = isinstance(x, (list, tuple))
        items = list(x) if many else [x]
        spec = self.meta.preprocess
        pairs = [(resize_gray(g, spec.size, spec.resize), c, age) for g, c, age in (self._gray(i) for i in items)]
        scored = score_images(self.model, pairs, self.guard)
        rows = [s.fields() for s in scored]
        if method is not None:  # no map where the record forbids one: it would look like evidence
            from .heatmap import caption

            for i, s in enumerate(scored):
                if s.heatmap_allowed:
                    heat = method.film_map(self.model, pairs[i][0])
                    rows[i].update(explained_class=self.meta.labels[1], heatmap=heat, heatmap_method=method.name,
                                   heatmap_meaning=caption(method), heatmap_png=overlay_png(pairs[i][0], heat))
        if as_frame:
            import pandas as pd  # optional: only this form of the answer needs it

            return pd.DataFrame(rows, columns=[*FIELDS, *(HEATMAP_FIELDS if heatmap else [])])
        return rows if many else rows[0]


def load(source: str | os.PathLike | None = None, guard: bool = True, threads: int | None = None,
         filename: str = MODEL_FILES[0]) -> Classifier:
    """Open a model for prediction: an .onnx file, a bundle folder (its `filename`) or a hub id; None: the
    shipped model (`model.default_model_path`)."""
    return Classifier(EdgeModel(resolve_model(source, filename), threads=threads), guard=guard)
