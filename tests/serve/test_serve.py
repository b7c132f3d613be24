"""`pneumo-edge serve`: the HTTP API, its refusals, its temporary files, and the web page (FastAPI TestClient)."""

import base64
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the [test] extra)")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import xray_like  # noqa: E402
from pneumo_edge.edge import serve as serve_mod  # noqa: E402
from pneumo_edge.edge.serve import ServeConfig, create_app  # noqa: E402
from test_imaging import ramp, write_dicom  # noqa: E402

LOCAL = "http://127.0.0.1"  # the Host the server answers to by default (access.Gate)


def encoded(fmt: str, pneumonia: bool = True, seed: int = 0, size=(120, 100)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(xray_like(np.random.default_rng(seed), pneumonia, size)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_bundle):
    with TestClient(create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), threads=1)), base_url=LOCAL) as c:
        yield c


def one_line(r) -> str:
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == r.status_code, body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_health_and_model_description(client):
    assert client.get("/healthz").json()["status"] == "ok"
    m = client.get("/v1/model").json()
    assert m["heatmaps"] is True and m["guard"] is True and m["file"] == "model.onnx"
    assert m["limits"]["max_upload_bytes"] == 50 * 1024 * 1024
    assert m["weights_sha256"] == m["metadata"]["weights_sha256"] and m["metadata"]["labels"] == ["NORMAL", "PNEUMONIA"]
    assert all(len(v) < 300 for v in map(str, m["metadata"]["cam"].values()))  # packed arrays summarised
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_multipart_and_raw_bodies_give_one_answer(client):
    png = encoded("PNG")
    r = client.post("/v1/predict", files={"file": ("x.png", png, "image/png")})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["label"] in ("NORMAL", "PNEUMONIA", "REJECTED_OOD") and 0 <= a["probability"] <= 1
    assert a["threshold"] > 0 and a["guard_verdict"] in ("accepted", "rejected") and a["guard_score"] >= 0
    assert a["model"]["weights_sha256"] and a["model"]["version"] and a["latency_ms"] > 0 and "heatmap" not in a
    raw = client.post("/v1/predict", content=png, headers={"Content-Type": "image/png"}).json()
    assert raw["probability"] == pytest.approx(a["probability"], abs=1e-9)
    # the browser's generic type for files it does not know (DICOM, often)
    octet = client.post("/v1/predict", files={"file": ("x.png", png, "application/octet-stream")}).json()
    assert octet["probability"] == pytest.approx(a["probability"], abs=1e-9)


def test_every_supported_format(client, tmp_path):
    dcm = write_dicom(tmp_path / "x.dcm", ramp(80, 80)).read_bytes()
    for body, ctype in ((encoded("JPEG"), "image/jpeg"), (encoded("BMP"), "image/bmp"),
                        (encoded("TIFF"), "image/tiff"), (dcm, "application/dicom")):
        r = client.post("/v1/predict", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 200, (ctype, r.text)


def test_heatmap_is_a_png_of_the_model_input(client):
    r = client.post("/v1/predict?heatmap=1", files={"file": ("x.jpeg", encoded("JPEG"), "image/jpeg")})
    h = r.json()["heatmap"]
    assert h["class"] == "PNEUMONIA" and h["media_type"] == "image/png"
    assert h["method"] and "evidence for PNEUMONIA" in h["meaning"] and "low = none found" in h["meaning"]
    with Image.open(io.BytesIO(base64.b64decode(h["png_base64"]))) as im:
        assert im.format == "PNG" and im.size == (64, 64)


@pytest.mark.parametrize("body, ctype, status, words", [
    (b"hello", "text/plain", 415, "unsupported content type 'text/plain'"),
    (b"{}", "application/json", 415, "multipart/form-data"),
    (b"GIF89a....", "image/gif", 415, "unsupported content type"),
    (b"\x89PNG\r\n\x1a\n broken", "image/png", 422, "not a usable image"),
    (b"GIF89a" + b"\0" * 64, "application/octet-stream", 422, "GIF"),
    (b"", "image/png", 422, "empty upload"),
])
def test_bad_raw_uploads_get_one_line_reasons(client, body, ctype, status, words):
    r = client.post("/v1/predict", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status and words in one_line(r)


def test_bad_forms_and_queries(client):
    r = client.post("/v1/predict", content=encoded("PNG"), headers={"Content-Type": ""})
    assert r.status_code == 415
    r = client.post("/v1/predict", data={"note": "no file"}, files={"other": ("n.txt", b"x", "text/plain")})
    assert r.status_code == 415 and "unsupported file type 'text/plain'" in one_line(r)
    r = client.post("/v1/predict", data={"note": "only text"})
    assert r.status_code == 415  # urlencoded form: the wrong content type
    r = client.post("/v1/predict", content=b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
                    headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 422 and "no file in the form" in one_line(r)
    r = client.post("/v1/predict?heatmap=maybe", files={"file": ("x.png", encoded("PNG"), "image/png")})
    assert r.status_code == 422 and "heatmap" in one_line(r)
    assert client.get("/v1/nothing").status_code == 404 and one_line(client.get("/v1/nothing"))
    assert client.get("/v1/predict").status_code == 405


def test_too_large_is_413_whether_declared_or_streamed(tiny_bundle):
    app = create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), max_upload_bytes=2000, threads=1))
    big = encoded("BMP")  # uncompressed: well over 2000 bytes
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/v1/predict", content=big, headers={"Content-Type": "image/bmp"})
        assert r.status_code == 413 and "limit of" in one_line(r)
        r = c.post("/v1/predict", content=iter([big[:1500], big[1500:]]), headers={"Content-Type": "image/bmp"})
        assert r.status_code == 413  # chunked: no Content-Length, counted while reading
        r = c.post("/v1/predict", files={"file": ("x.bmp", big, "image/bmp")})
        assert r.status_code == 413
        assert app.state.service.pending == 0


def test_full_queue_is_503_with_retry_after(client):
    service = client.app.state.service
    saved = service.pending
    service.pending = service.capacity
    try:
        r = client.post("/v1/predict", files={"file": ("x.png", encoded("PNG"), "image/png")})
    finally:
        service.pending = saved
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in one_line(r)
    assert client.post("/v1/predict", files={"file": ("x.png", encoded("PNG"), "image/png")}).status_code == 200


def test_uploads_stay_in_a_private_folder_removed_with_the_request(client, monkeypatch):
    monkeypatch.setattr(serve_mod, "SPOOL_BYTES", 1024)  # spill every upload to a file
    service = client.app.state.service
    seen = {}
    real = service.classifier.predict

    def spy(source, heatmap=False):
        seen["source"] = source
        seen["listing"] = os.listdir(service.private_dir())
        return real(source, heatmap=heatmap)

    monkeypatch.setattr(service.classifier, "predict", spy)
    body = encoded("BMP")
    assert client.post("/v1/predict", content=body, headers={"Content-Type": "image/bmp"}).status_code == 200
    private = Path(service.private_dir())
    assert Path(seen["source"]).parent == private and len(seen["listing"]) == 1  # spooled, inside the folder
    assert os.stat(private).st_mode & 0o777 == 0o700
    assert os.listdir(private) == []  # removed after the request
    assert private.parent == Path(tempfile.gettempdir())


def test_an_unexpected_failure_is_one_line_500(tiny_bundle, monkeypatch):
    app = create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), threads=1))

    def boom(*_, **__):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.service.classifier, "predict", boom)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as c:
        r = c.post("/v1/predict", files={"file": ("x.png", encoded("PNG"), "image/png")})
    assert r.status_code == 500 and one_line(r) == "internal error (RuntimeError)"
    assert app.state.service.pending == 0


def test_old_bundle_serves_the_shipped_heat_maps(tiny_bundle, tmp_path):
    """The shipped map needs forward passes only: a file without the 'features' output still serves it."""
    from test_cam import strip_heatmaps

    old = strip_heatmaps(tiny_bundle / "model.onnx", tmp_path / "old.onnx")
    with TestClient(create_app(ServeConfig(model=str(old), threads=1, guard=False)), base_url=LOCAL) as c:
        assert c.get("/v1/model").json()["heatmaps"] is True
        png = encoded("PNG")
        r = c.post("/v1/predict?heatmap=1", files={"file": ("x.png", png, "image/png")})
        assert r.status_code == 200 and r.json()["heatmap"]["png_base64"], one_line(r)


def test_the_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    html = r.text
    assert '<input id="files" type="file"' in html and 'id="drop"' in html
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        if asset.startswith("data:"):
            continue
        asset = "/" + asset.removeprefix("/")  # relative to the page, so that a static copy works at any path
        assert asset.startswith("/static/"), asset  # nothing from another host: no CDN
        got = client.get(asset)
        assert got.status_code == 200 and got.content
        assert not re.search(r"https?://", got.text), asset
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, *options: str, timeout: float = 90, scheme: str = "http",
                 verify=True) -> tuple[subprocess.Popen, str]:
    """`pneumo-edge serve` in its own process on a free loopback port, returned once /healthz answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from pneumo_edge.cli import main; main()", "serve",
                             "--model", str(model), "--port", str(port), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"{scheme}://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2, verify=verify).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.communicate()[0][-500:]}")
        time.sleep(0.3)


def test_serve_command_binds_loopback_and_answers(tiny_bundle):
    import httpx

    proc, base = start_server(tiny_bundle / "model.onnx", "--threads", "1")
    try:
        r = httpx.post(f"{base}/v1/predict?heatmap=1", timeout=30,
                       files={"file": ("x.png", encoded("PNG"), "image/png")})
        assert r.status_code == 200 and r.json()["heatmap"]["png_base64"]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"Uvicorn running on {base}" in out  # the default bind is loopback


def test_serve_refuses_a_missing_model_before_binding(tmp_path):
    from click.testing import CliRunner

    from pneumo_edge.cli import main

    r = CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "none.onnx"), "--port", str(free_port())])
    assert r.exit_code == 2 and "not found" in r.output


def test_load_test_counts_every_request(tiny_bundle, tiny_data, tmp_path):
    from pneumo_edge.benchmarks.serve import LoadConfig, load_test, render

    r = load_test(LoadConfig(model=str(tiny_bundle / "model.onnx"), images=str(tiny_data / "test"), requests=24,
                             clients=3, warmup=4, heatmap=True, threads=1, out=str(tmp_path)))
    assert r["requests"] == 24 and r["errors"] == 0 and r["status_codes"] == {"200": 24}
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
    assert r["rss_mb"]["end"] > 0 and "req/s" in render(r)
    assert [p.name for p in tmp_path.glob("serve-*.json")] == ["serve-heatmap-model-w1-c3.json"]
