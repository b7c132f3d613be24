"""An exported model on onnxruntime: the session plus the metadata that says how to feed it.

    model = EdgeModel("export/model.int8.onnx")
    out = model.run(normalize(resized, model.spec))      # {"logits": ..., "embedding": ..., "features": ...}
    p = model.probability(out["logits"])                  # calibrated P(PNEUMONIA)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ModelError
from .imaging import normalize
from .meta import from_session


def prob_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(class 1) from 2-class logits: softmax over (l / T), written stably as a sigmoid."""
    logits = np.asarray(logits, np.float64)
    z = (logits[:, 1] - logits[:, 0]) / temperature
    return 1.0 / (1.0 + np.exp(-z))


def default_model_path() -> Path:
    """$PNEUMO_EDGE_MODEL, else the bundle shipped beside the package in a source checkout."""
    env = os.environ.get("PNEUMO_EDGE_MODEL")
    if env:
        return Path(env)
    shipped = Path(__file__).resolve().parents[2] / "export" / "model.onnx"
    if not shipped.is_file():  # an installed wheel carries no bundle
        raise ModelError("no model given and no shipped bundle found: pass --model (an .onnx file, a bundle "
                         "folder or a hub id user/repo) or set PNEUMO_EDGE_MODEL")
    return shipped


def open_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model '{path}' does not exist")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"onnxruntime cannot load '{path}': {str(e)[:200]}") from None


class EdgeModel:
    """An onnxruntime session plus its validated metadata; fails at load, never per file."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from .guard import Guard

        self.path = Path(path)
        self.session = open_session(self.path, threads)
        self.meta = from_session(self.session, str(self.path))
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.spec = self.meta.preprocess
        self.labels = list(self.meta.labels)
        self.threshold = self.meta.threshold
        self.temperature = self.meta.temperature
        shape = inputs[0].shape
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
        self.cam = None  # heat maps: the classifier head from the metadata, on the 'features' output
        if self.meta.cam is not None:
            from .cam import OUTPUT, CamHead

            if OUTPUT not in self.output_names:
                raise ModelError(f"'{self.path}': metadata has a heat-map head ('cam') but the graph has no "
                                 f"'{OUTPUT}' output")
            self.cam = CamHead.from_meta(self.meta.cam, str(self.path), len(self.labels))
            self.cam.check_features(self.session.get_outputs()[self.output_names.index(OUTPUT)].shape, str(self.path))
        # what plain classification fetches: everything but the feature map (a copy it does not need)
        self.predict_outputs = [n for n in self.output_names if n != "features"]

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
        return dict(zip(names, self.session.run(names, {self.input_name: x})))

    def logits(self, resized: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits for pre-resized uint8 images (N, S, S), through imaging.normalize."""
        out = [self.run(normalize(resized[i:i + batch_size], self.spec), ["logits"])["logits"]
               for i in range(0, len(resized), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        return prob_from_logits(logits, self.temperature)
