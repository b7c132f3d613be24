"""What a bundle holds: the export targets (one ONNX file each) and the other files, by name.

    for t in TARGETS: bundle / t.file           # model.onnx (fp32, the reference), model.int8.onnx
    target("int8").file                         # "model.int8.onnx"

The training side pairs each target with its builder and its gate (`onnx_export.EXPORTS`); the edge
reads the file names from here (the API, the hub, bench, the card). A new target is a row here and a
row there.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelError


@dataclass(frozen=True)
class Target:
    name: str  # how commands and reports name it
    file: str  # its file in a bundle
    summary: str  # for people: what it is


TARGETS = (Target("fp32", "model.onnx", "float32 graph: the reference every other target is gated against"),
           Target("int8", "model.int8.onnx", "static QDQ INT8: weights per channel, activations calibrated on "
                                             "training images"))
FP32, INT8 = TARGETS
MODEL_FILES = tuple(t.file for t in TARGETS)  # what a bundle folder or hub repo offers, the reference first

WEIGHTS = "model.safetensors"  # the PyTorch twin's weights
CONFIG = "config.json"  # the twin in timm's hub layout
CARD = "README.md"  # the model card
RESULTS = "results.json"  # the evaluation behind the operating point
PARITY = "parity.json"  # the export gates' report
SHIPPED_BUNDLE = "export"  # the shipped bundle's folder in a checkout, every command's default bundle
DEFAULT_DATA = "hf-vision/chest-xray-pneumonia"  # the home dataset on the Hugging Face hub (Kermany 2018)


def target(name: str) -> Target:
    for t in TARGETS:
        if t.name == name:
            return t
    raise ModelError(f"unknown export target '{name}': one of {', '.join(t.name for t in TARGETS)}")
