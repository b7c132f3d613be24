"""The edge boundary: the edge package runs without torch, and both sides preprocess identically."""

import ast
from pathlib import Path

import numpy as np

from conftest import run_cli_without_torch

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "pneumo_edge" / "edge"
EXAMPLE = sorted((ROOT / "examples" / "xrays" / "PNEUMONIA").iterdir())[0]


def test_edge_modules_import_only_edge_modules():
    for py in EDGE.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{py.name} reaches outside the edge package: {ast.unparse(node)}"
                if node.level == 0 and node.module:
                    assert not node.module.startswith("pneumo_edge") or node.module.startswith("pneumo_edge.edge"), \
                        f"{py.name}: {ast.unparse(node)}"
                    assert node.module.split(".")[0] not in ("torch", "timm", "onnx", "sklearn"), ast.unparse(node)
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] not in ("torch", "timm", "onnx", "sklearn"), f"{py.name}: {a.name}"


def test_infer_cli_classifies_a_real_xray_with_torch_unimportable(tmp_path):
    out = tmp_path / "rows.csv"
    r = run_cli_without_torch(["infer", EXAMPLE, "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and ",ok," in rows[1], rows


def test_training_and_inference_paths_give_identical_input():
    import torch

    from pneumo_edge.train.data import Sample, decode_all
    from pneumo_edge.edge.imaging import PreprocessSpec, load_image, normalize, resize_gray
    from pneumo_edge.train.fit import to_model_input, uint8_batch

    spec = PreprocessSpec()
    images, _, _ = decode_all([Sample(name=EXAMPLE.name, label=1, path=str(EXAMPLE))], spec.size, progress=False,
                              rule=spec.resize)
    train_x = to_model_input(uint8_batch(images, np.array([0])), spec)
    gray, _ = load_image(str(EXAMPLE), size=spec.size)
    infer_x = normalize(resize_gray(gray, spec.size, spec.resize)[None], spec)
    assert isinstance(train_x, torch.Tensor) and train_x.shape == infer_x.shape == (1, 1, spec.size, spec.size)
    assert np.array_equal(train_x.contiguous().numpy(), infer_x)
