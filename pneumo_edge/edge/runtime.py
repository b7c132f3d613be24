"""The runtime seam: open a model file, read its metadata, run it. onnxruntime today.

    rt = open_runtime("export/model.int8.onnx")
    rt.metadata()                      # {"pneumo_edge": "{...}", "threshold": "0.55", ...}
    rt.run(["logits"], x)              # [array (N, 2)]

A second backend (OpenVINO, a browser harness) implements `Runtime` and registers in BACKENDS;
`EdgeModel` and `meta.read_meta` only ever see this interface.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .errors import ModelError


class Runtime(Protocol):
    path: Path
    input_name: str
    input_shape: list  # ints, or names for dynamic axes
    output_names: list[str]
    description: str  # the graph's doc string

    def output_shape(self, name: str) -> list: ...

    def metadata(self) -> dict[str, str]: ...

    def run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]: ...


class OnnxRuntime:
    """An onnxruntime CPU session: all cores for one call unless `threads` says otherwise."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model '{self.path}' does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: the cores are shared with the decode pool (and a
        # server's event loop), and spinning cost infer a third of its wall time (farm-bench, same run).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"onnxruntime cannot load '{self.path}': {str(e)[:200]}") from None
        first = self.session.get_inputs()[0]
        self.input_name, self.input_shape = first.name, list(first.shape)
        self._outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        self.output_names = list(self._outputs)
        self.description = self.session.get_modelmeta().description

    def output_shape(self, name: str) -> list:
        return self._outputs[name]

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(names, {self.input_name: x})


BACKENDS = {"onnxruntime": OnnxRuntime}


def open_runtime(path: str | Path, threads: int | None = None, backend: str = "onnxruntime") -> Runtime:
    if backend not in BACKENDS:
        raise ModelError(f"unknown runtime '{backend}': one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](path, threads)


def file_sha256(path: str | Path) -> str:
    """The digest of a model file: what a row records, so rows of two models are never mixed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
