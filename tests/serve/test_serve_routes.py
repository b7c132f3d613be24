"""`serve` with a token file: which routes answer without a token (and the docs table that says so), no /docs,
HSTS over TLS, no query string in the access log, and the TLS handshake held to the header deadline.
The real-server tests start `pneumo-edge serve` on loopback with the shipped INT8 model."""

import fnmatch
import re
import shutil
import socket
import time
from pathlib import Path

import pytest


pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the [test] extra)")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pneumo_edge.edge.serve import HSTS, OPEN_ROUTES, TOKEN_ROUTES, ServeConfig, create_app  # noqa: E402
from pneumo_edge.edge.tokens import TokenStore  # noqa: E402
from test_serve import LOCAL, one_line, start_server  # noqa: E402
from test_serve_security import _self_signed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "export" / "model.int8.onnx"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped export/model.int8.onnx is absent")]  # slow: starts a server


@pytest.fixture()
def tokens(tmp_path):
    path = tmp_path / "tokens.json"
    return path, TokenStore(path).create("ward-3")


def _pattern(path: str) -> str | None:
    """The OPEN_ROUTES or TOKEN_ROUTES entry a served path falls under."""
    return next((p for p in (*OPEN_ROUTES, *TOKEN_ROUTES) if fnmatch.fnmatchcase(path, p)), None)


def test_every_route_but_the_open_ones_needs_a_token(tokens):
    path, secret = tokens
    app = create_app(ServeConfig(model=str(SHIPPED), threads=1, tokens=str(path)))
    auth = {"Authorization": f"Bearer {secret}"}
    with TestClient(app, base_url=LOCAL) as c:
        seen = set()
        for route in app.routes:
            pattern = _pattern(route.path)
            assert pattern is not None, f"{route.path} is in neither OPEN_ROUTES nor TOKEN_ROUTES"
            seen.add(pattern)
            for method in sorted(route.methods - {"HEAD"}):
                r = c.request(method, route.path)
                if pattern in OPEN_ROUTES:
                    assert r.status_code == 200, (method, route.path, r.status_code)
                else:
                    assert r.status_code == 401 and "API token" in one_line(r), (method, route.path)
        assert seen == set(OPEN_ROUTES) | set(TOKEN_ROUTES)  # no entry names a route that is not served
        assert c.get("/metrics").status_code == 401 and c.get("/metrics", headers=auth).status_code == 200
        assert c.get("/v1/model.onnx", headers=auth).content == SHIPPED.read_bytes()
        for unknown in ("/docs", "/redoc", "/v1/nothing", "/metrics/", "/healthz/x", "/page.json/x"):
            assert c.get(unknown).status_code == 401, unknown  # a path not served alike needs the token too
        assert c.get("/docs", headers=auth).status_code == 404 and c.get("/redoc", headers=auth).status_code == 404
        assert c.get("/v1/model?token=" + secret).status_code == 401  # a token in the query is not one


def test_without_a_token_file_all_is_open_and_there_is_still_no_docs_page():
    with TestClient(create_app(ServeConfig(model=str(SHIPPED), threads=1)), base_url=LOCAL) as c:
        assert c.get("/metrics").status_code == 200 and c.get("/v1/model").status_code == 200
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert "/v1/predict" in c.get("/openapi.json").json()["paths"]
        assert "strict-transport-security" not in c.get("/healthz").headers  # plain HTTP
    with TestClient(create_app(ServeConfig(model=str(SHIPPED), threads=1)), base_url="https://127.0.0.1") as c:
        assert c.get("/healthz").headers["strict-transport-security"] == HSTS


def test_the_docs_table_lists_every_route_open_or_token():
    rows = {}
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if md.is_file():
            for line in md.read_text().splitlines():
                m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(open|token)\s*\|", line)
                if m:
                    rows[m.group(1)] = m.group(2)
    expected = {**{p: "open" for p in OPEN_ROUTES}, **{p: "token" for p in TOKEN_ROUTES}}
    assert {p: rows.get(p) for p in expected} == expected


def test_the_access_log_records_no_query_string(tokens):
    path, secret = tokens
    proc, base = start_server(SHIPPED, "--threads", "1", "--tokens", str(path))
    try:
        assert httpx.get(f"{base}/v1/model?token={secret}", timeout=10).status_code == 401
        assert httpx.get(f"{base}/healthz?patient=Jane-Doe", timeout=10).status_code == 200
        ok = httpx.get(f"{base}/v1/model?x=1", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert ok.status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert 'GET /v1/model HTTP/1.1" 401' in out and 'GET /healthz HTTP/1.1" 200' in out, out[-2000:]
    assert 'GET /v1/model HTTP/1.1" 200' in out, out[-2000:]
    assert secret not in out and secret[:12] not in out and "Jane-Doe" not in out and "?" not in out, out[-2000:]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command to make a certificate")
def test_tls_sends_hsts_and_closes_a_silent_handshake_at_the_header_deadline(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    proc, base = start_server(SHIPPED, "--threads", "1", "--certfile", str(cert), "--keyfile", str(key),
                              "--header-timeout", "2", scheme="https", verify=trust)
    try:
        r = httpx.get(f"{base}/healthz", verify=trust, timeout=10)
        assert r.status_code == 200 and r.headers["strict-transport-security"] == HSTS
        port = int(base.rsplit(":", 1)[1])
        for hello in (b"", b"\x16\x03\x01"):  # never starts TLS; starts a ClientHello and stops
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(20)
                s.sendall(hello)
                t = time.monotonic()
                assert s.recv(4096) == b""  # closed by the server, not by our 20 s timeout
                assert 1.5 < time.monotonic() - t < 8
        assert httpx.get(f"{base}/healthz", verify=trust, timeout=10).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out, out[-2000:]
