"""`serve` on a network: tokens, TLS, Host and Origin checks, slow and vanishing clients, total body limits."""

import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the [test] extra)")

import httpx  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pneumo_edge.cli import main  # noqa: E402
from pneumo_edge.edge.serve import ServeConfig, create_app  # noqa: E402
from test_serve import LOCAL, encoded, one_line, start_server  # noqa: E402


@pytest.fixture()
def token_file(tmp_path):
    path = tmp_path / "tokens.json"
    r = CliRunner().invoke(main, ["token", "create", "ward-3", "--tokens", str(path)])
    assert r.exit_code == 0, r.output
    return path, r.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- tokens

def test_token_commands_store_only_hashes_in_a_private_file(token_file):
    path, secret = token_file
    assert secret.startswith("pe_") and len(secret) > 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret not in path.read_text()  # only its hash
    runner = CliRunner()
    listed = runner.invoke(main, ["token", "list", "--tokens", str(path)])
    assert listed.exit_code == 0 and "ward-3" in listed.stdout and secret not in listed.output
    again = runner.invoke(main, ["token", "create", "ward-3", "--tokens", str(path)])
    assert again.exit_code != 0 and "exists" in again.output
    from pneumo_edge.edge.tokens import TokenStore

    store = TokenStore(path)
    assert store.check(secret) == "ward-3" and store.check(secret + "x") is None and store.check("") is None
    assert runner.invoke(main, ["token", "revoke", "ward-3", "--tokens", str(path)]).exit_code == 0
    assert store.check(secret) is None  # the store rereads the changed file: revoked from the next request
    os.chmod(path, 0o644)
    assert "readable by others" in runner.invoke(main, ["token", "list", "--tokens", str(path)]).output


@pytest.fixture()
def guarded(tiny_bundle, token_file, caplog):
    path, secret = token_file
    app = create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), threads=1, tokens=str(path)))
    with TestClient(app, base_url=LOCAL) as c:
        yield c, secret


def test_a_token_is_required_and_never_logged(guarded, caplog):
    c, secret = guarded
    png = encoded("PNG")
    r = c.post("/v1/predict", files={"file": ("x.png", png, "image/png")})
    assert r.status_code == 401 and "API token" in one_line(r) and r.headers["www-authenticate"].startswith("Bearer")
    wrong = secret[:-4] + "abcd"
    caplog.clear()
    with caplog.at_level("WARNING", logger="pneumo_edge.serve"):
        r = c.post("/v1/predict", files={"file": ("x.png", png, "image/png")},
                   headers={"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 401 and "unknown or revoked" in one_line(r)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "pneumo_edge.serve"]
    assert len(lines) == 1 and "refused" in lines[0] and wrong not in lines[0] and wrong[:8] not in lines[0]
    assert c.get("/v1/model").status_code == 401
    ok = c.post("/v1/predict", files={"file": ("x.png", png, "image/png")}, headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200, ok.text
    assert c.get("/v1/model", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert c.get("/").status_code == 200 and c.get("/healthz").status_code == 200  # the page loads to ask for it


def test_the_page_asks_for_the_token_once(guarded):
    c, _ = guarded
    html, js = c.get("/").text, c.get("/static/app.js").text
    assert 'id="token" type="password"' in html and 'id="signin"' in html
    assert "sessionStorage" in js and "Authorization: `Bearer ${token}`" in js and "r.status === 401" in js


def test_host_allowlist_and_origin_check(client):
    png = encoded("PNG")
    r = client.get("/v1/model", headers={"Host": "attacker.example"})
    assert r.status_code == 421 and "Host" in one_line(r)
    r = client.post("/v1/predict", files={"file": ("x.png", png, "image/png")}, headers={"Host": "attacker.example"})
    assert r.status_code == 421
    r = client.post("/v1/predict", files={"file": ("x.png", png, "image/png")}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in one_line(r)
    r = client.post("/v1/predict", files={"file": ("x.png", png, "image/png")}, headers={"Origin": "null"})
    assert r.status_code == 403
    same = client.post("/v1/predict", files={"file": ("x.png", png, "image/png")}, headers={"Origin": "http://127.0.0.1"})
    assert same.status_code == 200  # the page this server serves
    assert client.get("/v1/model", headers={"Host": "localhost:8000"}).status_code == 200


@pytest.fixture(scope="module")
def client(tiny_bundle):
    app = create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), threads=1, max_upload_bytes=64 * 1024))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def test_multipart_total_counts_every_part(client):
    r = client.post("/v1/predict", data={"note": "x" * 200_000}, files={"file": ("x.png", b"\x89PNG", "image/png")})
    assert r.status_code == 413 and "limit of" in one_line(r)
    chunks = iter([b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"] + [b"y" * 65536] * 8)
    r = client.post("/v1/predict", content=chunks, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413  # chunked: no Content-Length to refuse early, counted while reading
    assert client.app.state.service.pending == 0


# ---------------------------------------------------------------- the command: bind policy and TLS

def test_a_network_bind_needs_tls_or_insecure_http_and_a_token(tmp_path, token_file, monkeypatch):
    from pneumo_edge.edge import serve as serve_mod

    runner = CliRunner()
    empty = tmp_path / "none.json"
    r = runner.invoke(main, ["serve", "--host", "0.0.0.0", "--tokens", str(empty)])
    assert r.exit_code == 2 and "without TLS" in r.output and "--insecure-http" in r.output
    r = runner.invoke(main, ["serve", "--host", "0.0.0.0", "--insecure-http", "--tokens", str(empty)])
    assert r.exit_code == 2 and "without an API token" in r.output and "token create" in r.output
    seen = {}
    monkeypatch.setattr(serve_mod, "serve", lambda **kw: seen.update(kw))  # do not really bind the network
    for _ in range(2):  # the warning comes at every start
        r = runner.invoke(main, ["serve", "--host", "0.0.0.0", "--insecure-http", "--tokens", str(token_file[0]),
                                 "--allow-host", "pneumo-box.ward3"])
        assert r.exit_code == 0, r.output
        assert "plain HTTP" in r.stderr and "warning" in r.stderr
    cfg = seen["config"]
    assert cfg.tokens == str(token_file[0]) and "pneumo-box.ward3" in cfg.allowed_hosts
    assert socket.gethostname().lower() in cfg.allowed_hosts and seen["insecure_http"] is True
    r = runner.invoke(main, ["serve", "--host", "127.0.0.1"])
    assert r.exit_code == 0 and not r.stderr and seen["config"].tokens is None  # loopback: as before
    r = runner.invoke(main, ["serve", "--tokens", str(empty)])  # asked for tokens, holds none: all would be 401
    assert r.exit_code == 2 and "holds no API token" in r.output


def _self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command to make a certificate (apt-get install openssl)")
def test_tls_with_certfile_and_keyfile(tiny_bundle, tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    proc, base = start_server(tiny_bundle / "model.onnx", "--threads", "1", "--certfile", str(cert),
                              "--keyfile", str(key), scheme="https", verify=trust)
    try:
        assert base.startswith("https://")
        r = httpx.post(f"{base}/v1/predict", files={"file": ("x.png", encoded("PNG"), "image/png")}, verify=trust,
                       timeout=30)
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.TransportError):
            httpx.get(base.replace("https://", "http://") + "/healthz", timeout=5)  # no plain HTTP on that port
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# ---------------------------------------------------------------- slow and vanishing clients (a real server)

def _connect(base: str, source: str = "127.0.0.1") -> socket.socket:
    """A raw connection to the server from `source` (any 127.x.y.z address is this machine)."""
    port = int(base.rsplit(":", 1)[1])
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(20)
    return s


def _slow_upload(base: str, source: str, length: int = 100_000) -> socket.socket:
    """Complete headers, then one byte of a long body: the rest never comes."""
    s = _connect(base, source)
    s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              f"Content-Length: {length}\r\n\r\n".encode() + b"\x89")
    return s


def _status(s: socket.socket) -> int:
    head = s.recv(4096)
    return int(head.split(b" ", 2)[1]) if head else 0


@pytest.fixture(scope="module")
def strict_server(tiny_bundle):
    proc, base = start_server(tiny_bundle / "model.onnx", "--threads", "1", "--queue", "0", "--per-client", "2",
                              "--header-timeout", "2", "--body-timeout", "4")
    yield proc, base
    if proc.poll() is None:
        proc.terminate()
        proc.communicate(timeout=30)


def test_slow_uploads_do_not_take_the_only_slot(strict_server):
    _, base = strict_server
    slow = [_slow_upload(base, f"127.0.0.{i}") for i in range(2, 8)]  # 6 slow senders, one slot in all
    try:
        time.sleep(0.5)
        t = time.monotonic()
        r = httpx.post(f"{base}/v1/predict", files={"file": ("x.png", encoded("PNG"), "image/png")}, timeout=30)
        assert r.status_code == 200, r.text
        assert time.monotonic() - t < 10  # generous: the bound itself is measured by bench-serve --slow-clients
        assert _status(slow[0]) == 408  # the body deadline ends them
    finally:
        for s in slow:
            s.close()


def test_headers_that_never_finish_are_cut_off(strict_server):
    _, base = strict_server
    s = _connect(base, "127.0.0.20")
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0")
    t = time.monotonic()
    assert s.recv(4096) == b""  # closed by the server, not by our 20 s timeout
    assert 1.5 < time.monotonic() - t < 8
    s.close()


def test_per_client_cap(strict_server):
    _, base = strict_server
    held = [_slow_upload(base, "127.0.0.30") for _ in range(2)]
    try:
        time.sleep(0.3)
        third = _slow_upload(base, "127.0.0.30")
        assert _status(third) == 429
        third.close()
        other = httpx.get(f"{base}/healthz", timeout=10)  # another address is not affected
        assert other.status_code == 200
    finally:
        for s in held:
            s.close()


def test_a_client_hanging_up_mid_upload_is_one_log_line(tiny_bundle):
    proc, base = start_server(tiny_bundle / "model.onnx", "--threads", "1")
    try:
        s = _slow_upload(base, "127.0.0.40")
        s.sendall(b"\x00" * 5000)
        time.sleep(0.5)
        s.close()
        time.sleep(1.0)
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out and " 500" not in out, out[-2000:]
    lines = [ln for ln in out.splitlines() if "hung up" in ln]
    assert len(lines) == 1 and "127.0.0.40" in lines[0], out[-2000:]


def test_bench_serve_measures_a_normal_client_among_slow_ones(tiny_bundle, tiny_data, tmp_path):
    from pneumo_edge.benchmarks.serve import LoadConfig, load_test, render

    r = load_test(LoadConfig(model=str(tiny_bundle / "model.onnx"), images=str(tiny_data / "test"), requests=4,
                             threads=1, slow_clients=6, out=str(tmp_path)))
    assert r["status_codes"] == {"200": 4} and r["slow_connected_min"] > 0 and 0 < r["latency_ms"]["p50"]
    assert "slow clients" in render(r) and (tmp_path / "serve-slow6-model.json").exists()


def test_python_multipart_floor_has_part_header_limits():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    floor = re.search(r'"python-multipart>=([0-9.]+)"', text).group(1)
    assert tuple(map(int, floor.split("."))) >= (0, 0, 27)  # 0.0.27: per-part header count and size limits
