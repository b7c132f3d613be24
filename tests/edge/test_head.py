"""The classifier head rewritten at the protobuf level: the rest of each file byte for byte the parent's."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pneumo_edge.edge.errors import ModelError
from pneumo_edge.edge.head import Head, body_without_head, head_layout, read_head, twin_with_head, with_head
from pneumo_edge.site.headfit import fit_logistic, patient_folds

RNG = np.random.default_rng(0)
K = 6


def tiny_model(path, kind="gemm", float_data=False):
    """x (N, K) -> Relu -> 'embedding' -> linear head -> 'logits' (2 classes)."""
    w, b = RNG.normal(size=(2, K)).astype(np.float32), RNG.normal(size=2).astype(np.float32)
    inits = []
    if kind == "gemm":
        nodes = [helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"], transB=1)]
        inits = [numpy_helper.from_array(w, "W")]
    elif kind == "gemm-kc":  # weight stored (K, C), transB = 0
        nodes = [helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"])]
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")]
    elif kind == "matmul":
        nodes = [helper.make_node("MatMul", ["embedding", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["logits"])]
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")]
    else:  # the weight comes out of a DequantizeLinear: a quantized head
        q = np.clip(np.round(w / 0.05), -127, 127).astype(np.int8)
        nodes = [helper.make_node("DequantizeLinear", ["Wq", "s"], ["W"]),
                 helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"], transB=1)]
        inits = [numpy_helper.from_array(q, "Wq"), numpy_helper.from_array(np.array(0.05, np.float32), "s")]
    bias = helper.make_tensor("B", TensorProto.FLOAT, [2], b.tolist()) if float_data else numpy_helper.from_array(b, "B")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["embedding"]), *nodes], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", K])],
                              [*inits, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w, b


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["logits", "embedding"], {"x": x})


@pytest.mark.parametrize("kind,float_data", [("gemm", False), ("gemm-kc", False), ("matmul", False), ("gemm", True)])
def test_the_head_is_read_and_replaced_and_nothing_else_changes(tmp_path, kind, float_data):
    src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
    w, b = tiny_model(src, kind, float_data)
    h = read_head(src)
    assert np.array_equal(h.weight, w) and np.array_equal(h.bias, b)
    new = Head(RNG.normal(size=(2, K)).astype(np.float32), RNG.normal(size=2).astype(np.float32))
    body = with_head(src, new)
    dst.write_bytes(body)
    old = src.read_bytes()
    spans = head_layout(src).spans()
    outside = np.ones(len(old), bool)
    for lo, hi in spans:
        outside[lo:hi] = False
    assert len(body) == len(old)
    assert np.array_equal(np.frombuffer(body, np.uint8)[outside], np.frombuffer(old, np.uint8)[outside])
    assert body != old and body_without_head(dst) == body_without_head(src)
    x = RNG.normal(size=(5, K)).astype(np.float32)
    (la, ea), (lb, eb) = run(src, x), run(dst, x)
    assert np.array_equal(ea, eb)  # everything up to the embedding computes what it did
    assert np.allclose(lb, eb @ new.weight.T + new.bias, atol=1e-5) and not np.allclose(la, lb)


def test_a_quantized_or_misshapen_head_is_refused(tmp_path):
    tiny_model(tmp_path / "q.onnx", "quantized")
    with pytest.raises(ModelError, match="not an initializer"):
        read_head(tmp_path / "q.onnx")
    tiny_model(tmp_path / "a.onnx")
    with pytest.raises(ModelError, match="cannot replace"):
        with_head(tmp_path / "a.onnx", Head(np.zeros((2, K + 1), np.float32), np.zeros(2, np.float32)))
    with pytest.raises(ModelError, match="non-finite"):
        with_head(tmp_path / "a.onnx", Head(np.full((2, K), np.nan, np.float32), np.zeros(2, np.float32)))


def test_both_bundle_files_and_the_twin(tiny_bundle, tmp_path):
    """The exported fp32 and INT8 files (the INT8 file keeps a float head) and the safetensors twin."""
    import json

    from pneumo_edge.edge.model import EdgeModel

    new = None
    for name in ("model.onnx", "model.int8.onnx"):
        src = tiny_bundle / name
        h = read_head(src)
        new = new or Head(RNG.normal(size=h.weight.shape).astype(np.float32), np.array([0.3, -0.3], np.float32))
        (tmp_path / name).write_bytes(with_head(src, new))
        assert body_without_head(tmp_path / name) == body_without_head(src)
        x = RNG.normal(size=(3, 1, 64, 64)).astype(np.float32)
        a, b = EdgeModel(src).run(x), EdgeModel(tmp_path / name).run(x)
        assert np.array_equal(a["embedding"], b["embedding"]) and np.array_equal(a["features"], b["features"])
        assert np.allclose(b["logits"], b["embedding"] @ new.weight.T + new.bias, atol=1e-4)
    same, digest = twin_with_head(tiny_bundle / "model.safetensors", read_head(tiny_bundle / "model.onnx"))
    assert same == (tiny_bundle / "model.safetensors").read_bytes()
    assert digest == json.loads((tiny_bundle / "config.json").read_text())["weights_sha256"]
    changed, other = twin_with_head(tiny_bundle / "model.safetensors", new)
    assert len(changed) == len(same) and other != digest


def test_numpy_logistic_matches_scikit_learn_and_keeps_near_a_start():
    from sklearn.linear_model import LogisticRegression

    x = RNG.normal(size=(60, 80)) * RNG.uniform(0.1, 5, 80)  # more features than films
    y = (x[:, 0] / x[:, 0].std() + RNG.normal(size=60) > 0).astype(float)
    l2 = 1e-2
    h = fit_logistic(x, y, l2)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10000).fit((x - mu) / sd, y)
    expect = (x - mu) / sd @ ref.coef_[0] + ref.intercept_[0]
    assert np.allclose(h.margin(x), expect, atol=1e-3 * np.abs(expect).max())
    far = fit_logistic(x, y, 1e6, start=h)  # a heavy penalty on the correction: the start is kept
    assert np.allclose(far.margin(x), h.margin(x), atol=1e-3 * np.abs(expect).max())
    folds = patient_folds(np.repeat(np.arange(20), 3).astype(str), 5)
    assert all(len(set(folds[i * 3:i * 3 + 3])) == 1 for i in range(20)) and set(folds) == set(range(5))
