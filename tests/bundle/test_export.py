import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import REAL, needs_real
from pneumo_edge.cli import main
from pneumo_edge.edge.meta import read_meta
from pneumo_edge.edge.model import EdgeModel

SHIPPED = Path(__file__).resolve().parents[2] / "export"


def test_export_cli_writes_bundle_and_passes_gate(tiny_checkpoint, tiny_data, tmp_path):
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--out", str(out), "--data", str(tiny_data),
                                  "--calib-images", "16", "--min-int8-agreement", "0", "--max-int8-auroc-delta", "1",
                                  "--min-int8-heatmap-corr", "0"])
    assert r.exit_code == 0, r.output
    assert "parity PASSED" in r.output and "Next: pneumo-edge infer" in r.output and "MB)" in r.output
    for f in ("model.onnx", "model.int8.onnx", "model.safetensors", "config.json", "parity.json", "parity.md"):
        assert (out / f).is_file(), f
    assert not list(out.glob(".export-*"))  # no temporary leftovers
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["fp32"]["max_abs_prob_diff"] <= 1e-4
    assert parity["fp32"]["labels_differing"] == 0


def test_metadata_round_trip(tiny_bundle, tiny_checkpoint):
    meta = read_meta(tiny_bundle / "model.onnx")
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert list(meta.labels) == config["labels"] and meta.preprocess.to_dict() == config["preprocess"]
    assert meta.threshold == config["threshold"] and meta.temperature == config["temperature"]
    assert meta.weights_sha256 == config["weights_sha256"] and meta.data_fingerprint
    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    assert proto.opset_import[0].version >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # dynamic batch axis
    m = EdgeModel(tiny_bundle / "model.onnx")
    for n in (1, 5):
        x = np.zeros((n, 1, 64, 64), np.float32)
        assert m.run(x)["logits"].shape == (n, 2)
    with pytest.raises(ValueError, match="expected float32"):
        m.run(np.zeros((1, 3, 64, 64), np.float32))


def test_int8_model_is_quantized_and_smaller(tiny_bundle):
    q = onnx.load(str(tiny_bundle / "model.int8.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert read_meta(tiny_bundle / "model.int8.onnx").quantization.startswith("static QDQ")
    assert (tiny_bundle / "model.int8.onnx").stat().st_size < (tiny_bundle / "model.onnx").stat().st_size


def test_gate_fails_when_twin_is_perturbed(tiny_checkpoint, tiny_data, tmp_path, monkeypatch):
    """Perturb one weight of the PyTorch twin: the gate must list the failure and exit non-zero."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["classifier.bias"] = state["classifier.bias"] + torch.tensor([0.0, 5.0])
    save_file(state, str(bad / "model.safetensors"))

    import pneumo_edge.bundle.export as ox

    real_export = ox.export_onnx

    def export_from_original(model, spec, path, meta):  # the ONNX file comes from the unperturbed twin
        from pneumo_edge.train.checkpoint import load_checkpoint

        original, _ = load_checkpoint(tiny_checkpoint)
        real_export(original, spec, path, meta)

    monkeypatch.setattr(ox, "export_onnx", export_from_original)
    r = CliRunner().invoke(main, ["export", str(bad), "--out", str(tmp_path / "o"), "--data", str(tiny_data),
                                  "--no-int8", "--no-guard"])
    assert r.exit_code == 3, r.output
    assert "parity gate failed" in r.output and "max |delta prob|" in r.output
    report = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert report["passed"] is False and report["fp32"]["max_abs_prob_diff"] > 1e-4
    # Every failed check is listed: the label check appears exactly when labels flipped.
    assert ("labels differ" in r.output) == (report["fp32"]["labels_differing"] > 0)
    assert len(report["failures"]) == 1 + (report["fp32"]["labels_differing"] > 0)


def test_export_refuses_bad_checkpoints(tmp_path, tiny_data, tiny_checkpoint):
    r = CliRunner().invoke(main, ["export", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "does not exist" in r.output
    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_checkpoint, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = CliRunner().invoke(main, ["export", str(trunc), "--out", str(tmp_path / "o2"), "--data", str(tiny_data)])
    assert r.exit_code == 2 and "truncated" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o2" / "model.onnx").exists()


@needs_real
@pytest.mark.skipif(not (SHIPPED / "model.onnx").is_file(), reason="no shipped bundle")
def test_shipped_bundle_reproduces_its_metrics():
    from pneumo_edge.train.data import decode_all, load_splits
    from pneumo_edge.site.metrics import binary_metrics

    m = EdgeModel(SHIPPED / "model.onnx")
    assert m.guard is not None
    results = json.loads((SHIPPED / "results.json").read_text())
    x, y, _ = decode_all(load_splits(str(REAL)).test, m.spec.size, progress=False, rule=m.spec.resize)
    got = binary_metrics(y, m.probability(m.logits(x)), m.threshold)
    want = results["test"]["at_operating_point"]
    assert got["confusion_matrix"] == want["confusion_matrix"]
    for k in ("accuracy", "recall", "specificity", "roc_auc"):
        assert got[k] == pytest.approx(want[k], abs=1e-4), k
