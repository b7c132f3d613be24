import io
import time

import numpy as np
import pytest
from PIL import Image

import pneumo_edge
from conftest import xray_like
from pneumo_edge.edge.decision import FIELDS, decide
from pneumo_edge.edge.errors import HubError, ImageError, ModelError


@pytest.fixture()
def xray(tmp_path):
    arr = xray_like(np.random.default_rng(0), True)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    return arr, path


def test_predict_accepts_path_bytes_pil_and_array_with_one_answer(tiny_bundle, xray):
    arr, path = xray
    m = pneumo_edge.load(tiny_bundle)
    one = m.predict(str(path))
    assert list(one) == list(FIELDS) and one["model_sha256"] == m.model.sha256
    assert one["threshold"] == m.meta.threshold and 0.0 <= one["probability"] <= 1.0
    for x in (path, path.read_bytes(), Image.open(path), arr):
        assert m.predict(x)["probability"] == pytest.approx(one["probability"], abs=1e-6), type(x)
    many = m.predict([path, arr])
    assert isinstance(many, list) and len(many) == 2
    assert one["model_label"] == decide(m.meta, one["probability"]).model_label
    if one["guard_verdict"] == "accepted":
        assert one["label"] == one["model_label"] and one["status"] == "ok"


def test_predict_as_frame_and_without_guard(tiny_bundle, xray):
    _, path = xray
    frame = pneumo_edge.load(tiny_bundle).predict([path, path], as_frame=True)
    assert list(frame.columns) == list(FIELDS)
    assert len(frame) == 2
    unguarded = pneumo_edge.load(tiny_bundle / "model.int8.onnx", guard=False).predict(path)
    assert unguarded["guard_score"] is None and unguarded["guard_verdict"] == "off"
    assert unguarded["label"] in ("NORMAL", "PNEUMONIA")


def test_load_and_predict_errors_are_library_errors(tiny_bundle, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="not found"):
        pneumo_edge.load(tmp_path / "nothing.onnx")
    m = pneumo_edge.load(tiny_bundle)
    with pytest.raises(ImageError, match="cannot classify a dict"):
        m.predict({"not": "an image"})
    with pytest.raises(ImageError):
        m.predict(b"not an image at all")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(HubError, match="--model"):
        pneumo_edge.load("nobody-here/no-such-model")
    assert time.perf_counter() - t0 < 5  # offline fails fast
