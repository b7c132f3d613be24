"""The node keeps going whatever a header holds, whatever the disk or a destination does: every instance ends as
a result or in failed/ with its reason, a stage that dies anyway stops the node loudly, and no header text
reaches a log, an audit line or the status line.

In-process tests drive the classify stage (edge.node.worker) directly; the end-to-end ones run `pneumo-edge
listen` as a process of its own (SIGTERM, exit codes, its log) against Orthanc or a stalling test PACS."""

from __future__ import annotations

import errno
import io
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("pynetdicom", reason="the node extra is not installed (pip install '.[node]')")
pytest.importorskip("highdicom", reason="the node extra is not installed (pip install '.[node]')")

import pydicom

from pneumo_edge.testing.dicomfilm import film_dataset, write_film
from pneumo_edge.edge.node import audit as audit_log
from pneumo_edge.edge.node.service import (
    METRICS_FILE,
    STATUS_FILE,
    Node,
    NodeConfig,
    status_text,
)
from pneumo_edge.edge.node.spool import Spool
from pneumo_edge.benchmarks.node_bounds import MARKERS, StallingPacs, header_cases, wait_for
from pneumo_edge.benchmarks.node_bounds import send_file as send
from pneumo_edge.testing.orthanc import Orthanc, free_port, orthanc_binary

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "export" / "model.int8.onnx"
FILMS = sorted((REPO / "examples" / "xrays").rglob("*.jpeg"))


def pixels(i: int = 0) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(FILMS[i % len(FILMS)]).convert("L").resize((256, 256)))


def make_node(tmp: Path, **kw) -> Node:
    cfg = dict(port=0, ae_title="PNEUMO", destinations=[f"PACS@127.0.0.1:{free_port()}"], spool=tmp / "spool",
               model=str(MODEL), retry_after_s=0.01)
    return Node(NodeConfig(**{**cfg, **kw}))


def spool_file(node: Node, path: Path) -> Path:
    """As the receiver spools it: named by the command's SOP Instance UID (the file meta's)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    spooled = node.spool.put_incoming(str(meta.MediaStorageSOPInstanceUID), path.read_bytes())
    node.worker.todo.put(spooled)
    return spooled


def drain(node: Node, timeout_s: float = 60.0) -> None:
    """Run the classify stage until nothing waits (tries again included)."""
    deadline = time.monotonic() + timeout_s
    while node.worker.waiting() and time.monotonic() < deadline:
        batch = node.worker.take_batch()
        if batch:
            node.process(batch)
    assert not node.worker.waiting(), "the classify stage did not finish"


def outcome(node: Node, uid: str) -> str:
    """'failed: <reason>' (in failed/ with its reason), 'result' (an SR queued for the destination), or 'lost'."""
    reason = node.spool.root / "failed" / f"{uid}.reason.txt"
    if reason.is_file() and (node.spool.root / "failed" / f"{uid}.dcm").is_file():
        return "failed: " + reason.read_text().splitlines()[0]
    states = [json.loads(p.read_text()) for p in (node.spool.root / "outbox").glob("*/*.json")]
    if any(s["sop_instance_uid"] == uid and s["object"] == "SR" for s in states):
        return "result"
    return "lost"


def assert_no_markers(texts: dict[str, str]) -> None:
    for where, text in texts.items():
        found = [m for m in MARKERS if m.lower() in text.lower()]
        assert not found, f"{where} holds header text {found}: {text[:400]}"


def test_every_hostile_header_ends_as_a_result_or_in_failed(tmp_path):
    """Character sets, sex, dates, names, a SOP class that differs from the command's, a UID with a newline:
    each instance gets an SR or a failed/ entry with its reason, a film sent after them gets its SR, the
    stage never dies, the spool keeps no try in hand, metrics count only images with a result."""
    node = make_node(tmp_path)
    cases = header_cases(tmp_path / "cases", pixels())
    last = write_film(FILMS[1], tmp_path / "last.dcm")
    uids = {}
    for key, path in [*cases.items(), ("last", last)]:
        spool_file(node, path)
        uids[key] = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
    drain(node)
    outcomes = {key: outcome(node, uid) for key, uid in uids.items()}
    assert "lost" not in outcomes.values(), outcomes
    assert outcomes["last"] == "result"
    assert outcomes["class_differs"].startswith("failed: no result can be filed: the data set's SOPClassUID differs")
    assert outcomes["uid_newline"] == "failed: no result can be filed: the header's SeriesInstanceUID is not a valid UID"
    for key, got in outcomes.items():  # a library refusing a value: tried twice, then kept with its reason
        if got.startswith("failed: making the results"):
            assert got.endswith("(2 tries)") and " in " in got, (key, got)
    assert not list(node.spool.root.joinpath("incoming").glob("*.dcm"))
    assert not list(node.spool.root.joinpath("attempts").glob("*"))
    st = node.status()
    n_results = sum(v == "result" for v in outcomes.values())
    assert st["classified"] == n_results and st["failed"] == len(outcomes) - n_results
    metrics = (node.spool.root / METRICS_FILE).read_text()
    scored = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("pneumo_edge_images_total{"))
    assert scored == n_results  # every one here decodes: scored = got a result
    lines = audit_log.read(node.spool.root / "audit.jsonl")
    assert {r["sop_instance_uid"] for r in lines if r.get("status") == "failed"} == {
        uids[k] for k, v in outcomes.items() if v != "result"}
    assert_no_markers({"audit": (node.spool.root / "audit.jsonl").read_text(), "status": status_text(st)})


def test_a_stage_begun_twice_without_finishing_is_quarantined_at_start(tmp_path):
    """A try is counted before it runs: an instance whose report stage was begun twice and never finished (the
    node died in it) goes to failed/ at the next start, unread; one begun once is tried again, alone."""
    spool = Spool(tmp_path / "spool")
    paths = [write_film(f, tmp_path / f"{i}.dcm") for i, f in enumerate(FILMS[:2])]
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    for uid, path, crashes in zip(uids, paths, (2, 1)):
        spool.put_incoming(uid, path.read_bytes())
        for _ in range(crashes):
            spool.begin(uid, "report")
    node = make_node(tmp_path)
    assert outcome(node, uids[0]) == ("failed: making the results did not finish in 2 tries "
                                      "(last: the node stopped)")
    drain(node)
    assert outcome(node, uids[1]) == "result" and not node.spool.attempts(uids[1])


def test_full_outbox_disk_recovers_without_a_restart(tmp_path, monkeypatch, caplog):
    """ENOSPC while queueing results: the instances stay in incoming/, nothing counts against them, and once the
    disk takes writes again they get their results; the full disk and its end are one log and one audit line."""
    original, calls = Spool.put_result, {"n": 0}

    def full_then_fine(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *a, **kw)

    monkeypatch.setattr(Spool, "put_result", full_then_fine)
    node = make_node(tmp_path)
    stop = threading.Event()
    runner = threading.Thread(target=node.run, args=(stop,), daemon=True)
    runner.start()
    uids = []
    for i, film in enumerate(FILMS[:3]):
        path = write_film(film, tmp_path / f"{i}.dcm")
        uids.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        node._stored(node.spool.put_incoming(uids[-1], path.read_bytes()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(outcome(node, u) != "result" for u in uids):
        time.sleep(0.1)
    stop.set()
    runner.join(30)
    assert [outcome(node, u) for u in uids] == ["result"] * 3 and calls["n"] > 3
    assert not list(node.spool.root.joinpath("incoming").glob("*.dcm")) and node.status()["failed"] == 0
    events = [r["event"] for r in audit_log.read(node.spool.root / "audit.jsonl")]
    assert events.count("spool-full") == 1 and events.count("spool-ok") == 1
    said = [r.getMessage() for r in caplog.records if r.name == "pneumo_edge.node"]
    assert sum("refuses writes" in m for m in said) == 1 and sum("takes writes again" in m for m in said) == 1


def test_same_uid_with_other_content_is_a_conflict(tmp_path):
    """The second instance under a SOP Instance UID already classified, with other pixels, gets no result (its
    result UIDs would be the first's): failed/ with the reason, an audit line, the status line. The same
    instance again is no conflict: its results are made again (same UIDs, a replacement)."""
    node = make_node(tmp_path)
    uid = "1.2.826.0.1.3680043.8.498.1"
    first, other = film_dataset(pixels(0), sop_uid=uid), film_dataset(pixels(1), sop_uid=uid)
    for name, ds in (("first", first), ("other", other)):
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    spool_file(node, tmp_path / "first.dcm")
    drain(node)
    assert outcome(node, uid) == "result"
    spool_file(node, tmp_path / "other.dcm")
    drain(node)
    assert outcome(node, uid).startswith("failed: conflict: an instance with this SOP Instance UID and other "
                                         "content was classified before")
    st = node.status()
    assert st["conflicts"] == 1 and "CONFLICTS 1" in status_text(st)
    assert [r["event"] for r in audit_log.read(node.spool.root / "audit.jsonl")] == ["conflict"]
    shutil.rmtree(node.spool.root / "failed")
    (node.spool.root / "failed").mkdir()
    spool_file(node, tmp_path / "first.dcm")
    drain(node)
    assert outcome(node, uid) == "result" and node.status()["conflicts"] == 1


def test_same_uid_received_again_while_in_hand_is_not_lost(tmp_path, monkeypatch):
    """An instance received again (other pixels, same SOP Instance UID) while the first copy is being classified:
    the first copy's removal leaves the new file alone, and the new one is then found in conflict."""
    from pneumo_edge.edge.node import worker

    node = make_node(tmp_path)
    uid = "1.2.826.0.1.3680043.8.498.2"
    for name, i in (("first", 0), ("other", 1)):
        film_dataset(pixels(i), sop_uid=uid).save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    real = worker.classify

    def classify_while_a_second_copy_arrives(*a, **kw):
        out = real(*a, **kw)
        spool_file(node, tmp_path / "other.dcm")
        return out

    monkeypatch.setattr(worker, "classify", classify_while_a_second_copy_arrives)
    spool_file(node, tmp_path / "first.dcm")
    node.process(node.worker.take_batch())
    monkeypatch.setattr(worker, "classify", real)
    assert (node.spool.root / "incoming" / f"{uid}.dcm").is_file() and node.worker.waiting() == 1
    drain(node)
    assert outcome(node, uid).startswith("failed: conflict") and node.status()["classified"] == 1


def test_a_dead_stage_stops_the_node(tmp_path, monkeypatch):
    """The classify stage ending on an error (here: its work raising outside any image) stops the node by itself:
    run returns, `failure` and the status line say which stage and why."""
    node = make_node(tmp_path)

    def broken(batch):
        raise RuntimeError("a bug")

    monkeypatch.setattr(node.worker, "process", broken)
    node.worker.todo.put(tmp_path / "any.dcm")
    runner = threading.Thread(target=node.run, args=(threading.Event(),), daemon=True)
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "the node went on without its classify stage"
    assert node.failure.startswith("the classify stage ended on an error: RuntimeError in ")
    assert "STOPPED: the classify stage ended" in status_text(node.status())
    assert json.loads((node.spool.root / STATUS_FILE).read_text())["state"].startswith("stopped: the classify")


# ---- end to end: `pneumo-edge listen` as a process
NEEDS = [n for n, ok in (("Orthanc", orthanc_binary()), ("storescu", shutil.which("storescu"))) if not ok]
needs_tools = pytest.mark.skipif(bool(NEEDS), reason="not installed: " + ", ".join(NEEDS))
def everything_said(node) -> dict[str, str]:
    """The node's log (its status lines included), audit, status file and metrics."""
    out = {"log": node.log.read_text(errors="replace")}
    for name in ("audit.jsonl", STATUS_FILE, METRICS_FILE):
        if (node.spool / name).exists():
            out[name] = (node.spool / name).read_text(errors="replace")
    return out


@needs_tools
def test_hostile_headers_through_a_running_node_leave_no_text_in_any_log(tmp_path, node_processes):
    """The hostile headers (names without carets, invalid dates, odd character sets) through `listen --heatmaps`
    into Orthanc: the node keeps classifying (a later film gets its SR in the PACS), exits 0 on SIGTERM, and its
    log, audit, status file and metrics hold none of the names or dates (highdicom's warnings included)."""
    with Orthanc(tmp_path / "orthanc") as pacs:
        node = node_processes.start(tmp_path, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--heatmaps")
        cases = header_cases(tmp_path / "cases", pixels())
        statuses = {key: send(node.port, path) for key, path in cases.items()}
        assert set(statuses.values()) == {0}, statuses  # every one is taken: what follows is the node's business
        last = write_film(FILMS[1], tmp_path / "last.dcm")
        assert send(node.port, last) == 0
        last_uid = str(pydicom.dcmread(last, stop_before_pixels=True).SOPInstanceUID)

        def last_reported():
            return any(i.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.88.33" and
                       _source(pacs, i["ID"]) == last_uid for i in pacs.instances())

        wait_for(last_reported, 90, "the later film's SR in Orthanc")
        wait_for(lambda: not list((node.spool / "incoming").glob("*.dcm")), 60, "an empty incoming/")
        assert node.terminate(30) == 0
    failed = {p.stem for p in (node.spool / "failed").glob("*.dcm")}
    assert all((node.spool / "failed" / f"{u}.reason.txt").is_file() for u in failed)
    said = everything_said(node)
    assert "Traceback" not in said["log"]
    assert_no_markers(said)


def _source(pacs: Orthanc, orthanc_id: str) -> str | None:
    from pneumo_edge.edge.node.sr import read_sr

    return read_sr(pydicom.dcmread(io.BytesIO(pacs.file(orthanc_id))))["source_uid"]


def test_a_damaged_spool_stops_the_node_with_a_non_zero_exit(tmp_path, node_processes):
    """failed/ replaced by a file while the node runs: the first instance that must go there cannot; the classify
    stage ends, and the node stops by itself with exit code 3, its last status line saying why."""
    node = node_processes.start(tmp_path, f"PACS@127.0.0.1:{free_port()}")
    shutil.rmtree(node.spool / "failed")
    (node.spool / "failed").write_text("not a folder")
    ds = film_dataset(pixels(), SOPClassUID="1.2.840.10008.5.1.4.1.1.1")
    ds.StudyInstanceUID = "1.2.3.04"  # not a valid UID: no result can be filed, the instance must go to failed/
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    assert send(node.port, tmp_path / "bad.dcm") == 0
    code = node.proc.wait(30)
    log = node.log.read_text()
    assert code == 3, log
    assert "STOPPED: the classify stage ended on an error: NotADirectoryError" in log
    assert "error: the node stopped" in log


def test_a_stalled_pacs_is_an_outage_then_sigterm_is_bounded(tmp_path, node_processes):
    """A PACS that never answers a C-STORE: a timeout that backs off, not failed attempts (nothing in dead/ after
    many --max-attempts' worth of tries), one log line and one audit line naming the cause; SIGTERM ends the node
    within --stop-timeout with the results still queued; once the PACS answers, they are sent and the outage's
    end is one log and one audit line."""
    pacs = StallingPacs()
    try:
        node = node_processes.start(tmp_path, f"STALL@127.0.0.1:{pacs.port}", "--send-timeout", "1",
                                    "--max-attempts", "2", "--stop-timeout", "5", "--links", "1")
        paths = [write_film(f, tmp_path / f"{i}.dcm") for i, f in enumerate(FILMS[:2])]
        assert all(send(node.port, p) == 0 for p in paths)
        wait_for(lambda: len(list((node.spool / "outbox").glob("*/*.dcm"))) == 2, 30, "two results queued")
        time.sleep(6)  # several timeouts: with --max-attempts 2, counted attempts would have dead-lettered them
        assert not list((node.spool / "dead").glob("*/*"))
        down = [r for r in node.audit() if r["event"] == "destination-down"]
        assert len(down) == 1 and down[0]["reason"] == "no C-STORE answer within 1 s"
        assert node.log.read_text().count("is unreachable") == 1
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(15) == 0
        assert time.monotonic() - t0 < 6.5, "SIGTERM took longer than --stop-timeout"
        assert len(list((node.spool / "outbox").glob("*/*.dcm"))) == 2
        pacs.release.set()
        again = node_processes.start(tmp_path, f"STALL@127.0.0.1:{pacs.port}", "--send-timeout", "5")
        wait_for(lambda: len(pacs.stored) >= 2 and not list((node.spool / "outbox").glob("*/*.dcm")), 30,
                 "the queued results sent")
        assert again.terminate(30) == 0
    finally:
        pacs.close()
    assert [r["status"] for r in again.audit() if r["event"] == "result"][-2:] == ["sent", "sent"]


@needs_tools
def test_a_pacs_outage_and_its_end_are_one_line_each(tmp_path, node_processes):
    """Orthanc stopped for a while, then started: one 'destination-down' and one 'destination-up' audit line, and
    one log line each, however many retries happened in between."""
    with Orthanc(tmp_path / "orthanc") as pacs:
        node = node_processes.start(tmp_path, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}")
        pacs.stop()
        assert send(node.port, write_film(FILMS[0], tmp_path / "a.dcm")) == 0
        wait_for(lambda: any(r["event"] == "destination-down" for r in node.audit()), 30, "the outage noticed")
        time.sleep(4)  # retries meanwhile
        pacs.start()
        wait_for(lambda: any(r.get("status") == "sent" for r in node.audit()), 60, "the result sent")
        assert node.terminate(30) == 0
    events = [r["event"] for r in node.audit()]
    assert events.count("destination-down") == 1 and events.count("destination-up") == 1
    log = node.log.read_text()
    assert log.count("is unreachable") == 1 and log.count("answers again") == 1
    assert "Association request failed" not in log  # pynetdicom's per-retry errors are not the node's log


def _silent_http_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(8)], daemon=True).start()
    return srv, srv.getsockname()[1]


def _self_signed_https_server(tmp: Path) -> tuple[object, int]:
    import http.server
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp / "key.pem"),
                    "-out", str(tmp / "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, httpd.server_address[1]


def test_stow_rs_timeout_and_certificate_failure_are_named(tmp_path, node_processes):
    """A DICOMweb server that accepts and never answers costs --send-timeout, then is an outage; one whose
    certificate fails verification is an outage named as such. Both in the log and the audit."""
    silent, silent_port = _silent_http_server()
    httpd, tls_port = _self_signed_https_server(tmp_path)
    try:
        node = node_processes.start(tmp_path, f"http://127.0.0.1:{silent_port}/dicom-web", "--send-to",
                                    f"https://127.0.0.1:{tls_port}/dicom-web", "--send-timeout", "2")
        assert send(node.port, write_film(FILMS[0], tmp_path / "a.dcm")) == 0
        downs = wait_for(lambda: [r for r in node.audit() if r["event"] == "destination-down"] if sum(
            r["event"] == "destination-down" for r in node.audit()) == 2 else None, 30, "two outages")
        t0 = time.monotonic()
        assert node.terminate(20) == 0 and time.monotonic() - t0 < 12
    finally:
        silent.close()
        httpd.shutdown()
    causes = {r["destination"].split(":")[0]: r["reason"] for r in downs}
    assert causes["http"] == "no answer within 2 s"
    assert causes["https"].startswith("TLS certificate verification failed (self-signed certificate")
    log = node.log.read_text()
    assert "TLS certificate verification failed" in log and "unreachable: no answer within 2 s" in log
