"""An exported model: a runtime (`edge.runtime`) plus the metadata that says how to feed it.

    model = EdgeModel("export/model.int8.onnx")
    out = model.run(normalize(resized, model.spec))      # {"logits": ..., "embedding": ..., "features": ...}
    p = model.probability(out["logits"])                  # calibrated P(PNEUMONIA)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .cam import OUTPUT as FEATURES
from .cam import CamHead
from .errors import ModelError
from .guard import Guard
from .imaging import normalize
from .meta import from_props
from .runtime import file_sha256, open_runtime
from .targets import FP32, INT8


def prob_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(class 1) from 2-class logits: softmax over (l / T), written stably as a sigmoid."""
    logits = np.asarray(logits, np.float64)
    z = (logits[:, 1] - logits[:, 0]) / temperature
    return 1.0 / (1.0 + np.exp(-z))


SHIPPED_INT8 = Path(__file__).resolve().parent / "shipped" / INT8.file  # package data of the wheel


def default_model_path() -> Path:
    """$PNEUMO_EDGE_MODEL; else, in a source checkout, the bundle's fp32 file export/model.onnx; else the
    INT8 file the installed package carries (a wheel install classifies offline with no --model)."""
    env = os.environ.get("PNEUMO_EDGE_MODEL")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "export" / FP32.file
    for shipped in (checkout, SHIPPED_INT8):
        if shipped.is_file():
            return shipped
    raise ModelError("no model given and no shipped bundle found: pass --model (an .onnx file, a bundle "
                     "folder or a hub id user/repo) or set PNEUMO_EDGE_MODEL")


class EdgeModel:
    """An onnxruntime session plus its validated metadata; fails at load, never per file."""

    def __init__(self, path: str | Path, threads: int | None = None, backend: str = "onnxruntime"):
        self.path = Path(path)
        self.runtime = open_runtime(self.path, threads, backend)
        self.meta = from_props(self.runtime.metadata(), str(self.path))
        self.sha256 = file_sha256(self.path)  # recorded in every row this model scores
        self.input_name = self.runtime.input_name
        self.output_names = self.runtime.output_names
        self.spec = self.meta.preprocess
        self.labels = list(self.meta.labels)
        self.threshold = self.meta.threshold
        self.temperature = self.meta.temperature
        shape = self.runtime.input_shape
        expected = [self.spec.channels, self.spec.size, self.spec.size]
        if len(shape) != 4 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expected)):
            raise ModelError(f"'{self.path}': input shape {shape} does not match the metadata's preprocessing "
                             f"(N, {', '.join(map(str, expected))})")
        if "logits" not in self.output_names:
            raise ModelError(f"'{self.path}' has no 'logits' output (outputs: {', '.join(self.output_names)})")
        self.guard = None
        if self.meta.ood is not None:
            if "embedding" not in self.output_names:
                raise ModelError(f"'{self.path}': metadata has a guard ('ood') but the graph has no 'embedding' output")
            self.guard = Guard.from_meta(self.meta.ood, str(self.path))
            width, dim = self.runtime.output_shape("embedding")[-1], self.guard.means.shape[1]
            if isinstance(width, int) and width != dim:
                raise ModelError(f"{self.path}: metadata field 'ood.dim' ({dim}) does not match the graph's "
                                 f"'embedding' output ({width} features)")
        self.cam = None  # heat maps: the classifier head from the metadata, on the 'features' output
        if self.meta.cam is not None:
            if FEATURES not in self.output_names:
                raise ModelError(f"'{self.path}': metadata has a heat-map head ('cam') but the graph has no "
                                 f"'{FEATURES}' output")
            self.cam = CamHead.from_meta(self.meta.cam, str(self.path), len(self.labels))
            self.cam.check_features(self.runtime.output_shape(FEATURES), str(self.path))
        # what plain classification fetches: everything but the feature map (a copy it does not need)
        self.predict_outputs = [n for n in self.output_names if n != FEATURES]

    def require_cam(self):
        """The heat-map head, or a ModelError saying why this file cannot make heat maps."""
        if self.cam is None:
            raise ModelError(f"'{self.path}' cannot make heat maps: it has no 'cam' metadata and 'features' output "
                             "(exported by an older pneumo-edge); re-export it with `pneumo-edge export`, or use "
                             "`pneumo-edge explain --bundle` on the PyTorch twin")
        return self.cam

    def run(self, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Raw outputs for normalised float32 input (N, C, S, S): all of them, or the named ones."""
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (self.spec.channels, self.spec.size, self.spec.size):
            raise ValueError(f"expected float32 (N, {self.spec.channels}, {self.spec.size}, {self.spec.size}), "
                             f"got {x.dtype} {x.shape}")
        names = self.output_names if outputs is None else list(outputs)
        return dict(zip(names, self.runtime.run(names, x)))

    def logits(self, resized: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits for pre-resized uint8 images (N, S, S), through imaging.normalize."""
        out = [self.run(normalize(resized[i:i + batch_size], self.spec), ["logits"])["logits"]
               for i in range(0, len(resized), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        return prob_from_logits(logits, self.temperature)
