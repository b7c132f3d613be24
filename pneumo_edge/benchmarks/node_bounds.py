"""`pneumo-edge bench-node-bounds`: hostile input against `pneumo-edge listen`, and what it costs the node.

    result = bench_node_bounds(NodeBoundsConfig())      # writes bench/results/node-bounds.json

Each measurement runs its own node process on loopback (nothing reaches beyond the machine):
  - deflate bomb: a ~1 MB deflated CR whose pixel data inflates to 1 GB, by C-STORE; the node's resident
    memory sampled every 10 ms from /proc while it arrives and is classified: growth over the start;
  - trickling peers: ten raw sockets from 127.0.0.2 sending an A-ASSOCIATE-RQ a byte every 0.5 s, the node
    with --max-per-peer 2; seconds until a C-ECHO from 127.0.0.1 succeeds, how many tricklers were rejected
    at once and when the admitted ones were cut off;
  - silent peers: six connections from six addresses that say nothing, --max-associations 4; seconds until
    the C-ECHO succeeds;
  - stalled PACS: a C-STORE SCP that takes each result and never answers; seconds from SIGTERM to exit with
    the default --stop-timeout, results left queued, dead letters;
  - hostile headers: the cases of `header_cases`, which end as a result and which in failed/ (and why).
The helpers (deflate_bomb, RssWatch, Trickler, StallingPacs, echo_within) are what tests/test_node_bounds.py and
tests/test_node_robust.py drive the node with. Nothing here is part of the edge runtime.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info

from pneumo_edge.benchmarks.node import NodeProcess
from pneumo_edge.edge.atomic import write_json
from pneumo_edge.edge.errors import PneumoEdgeError
from pneumo_edge.edge.node.gate import REJECT_LIMIT
from pneumo_edge.edge.node.sr import read_sr
from pneumo_edge.testing.dicomfilm import film_dataset, write_film
from pneumo_edge.testing.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
RSS_BOUND_MB = 300  # what one hostile instance may add to the node's memory (the stated bound)

# ---- hostile headers: each a file a real modality could send; the names and dates are markers that the tests
# search every log, audit and status line for
NAME_NO_CARET = "QUIMBY ZEBEDEE"  # highdicom warns about it and quotes it
MARKERS = ("QUIMBY", "ZEBEDEE", "2026-13-45", "19611345", "KOBAYASHI")
CHARSETS = {"iso2022_ir87": "\\ISO 2022 IR 87", "iso2022_ir149": "\\ISO 2022 IR 149", "iso2022_ir100": "ISO 2022 IR 100",
            "empty": "", "utf_8": "UTF-8", "iso_8859_1": "ISO-8859-1", "iso_ir100": "ISO_IR100", "utf8": "utf8",
            "ir999": "ISO_IR 999"}
CT = "1.2.840.10008.5.1.4.1.1.2"


def _write(ds, path: Path, raw: dict[bytes, bytes] | None = None) -> Path:
    """Written as it is (no file-meta repair), then byte patches pydicom would never write."""
    ds.preamble = b"\0" * 128
    dcmwrite(path, ds, enforce_file_format=False)
    for old, new in (raw or {}).items():
        data = path.read_bytes()
        assert len(old) == len(new) and data.count(old) == 1, old
        path.write_bytes(data.replace(old, new))
    return path


def header_cases(folder: Path, pixels: np.ndarray) -> dict[str, Path]:
    """One file per hostile header; every one is a CR the node accepts at association."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "KOBAYASHI^TARO"
    tags: dict[str, dict] = {f"charset_{k}": {"SpecificCharacterSet": v.split("\\") if "\\" in v else v,
                                              "PatientName": name} for k, v in CHARSETS.items()}
    tags.update({"sex_x": {"PatientSex": "X"}, "sex_u": {"PatientSex": "U"},
                 "name_no_caret": {"PatientName": NAME_NO_CARET, "ReferringPhysicianName": NAME_NO_CARET},
                 "name_backslash": {"PatientName": "QUIMBY\\ZEBEDEE"}})
    files = {key: _write(film_dataset(pixels, **t), folder / f"{key}.dcm") for key, t in tags.items()}
    ds = film_dataset(pixels)  # dates pydicom would refuse to write: patched in
    files["bad_dates"] = _write(ds, folder / "bad_dates.dcm", {b"20260101": b"20261345", b"20230101": b"19611345"})
    _patch_study_date(files["bad_dates"])
    ds = film_dataset(pixels)  # the command says CR (file meta), the data set CT
    ds.SOPClassUID = CT
    files["class_differs"] = _write(ds, folder / "class_differs.dcm")
    ds = film_dataset(pixels, series_uid="1.2.3.4")  # a trailing newline inside the value, where NUL padding goes
    files["uid_newline"] = _write(ds, folder / "uid_newline.dcm", {b"UI\x08\x001.2.3.4\x00": b"UI\x08\x001.2.3.4\n"})
    return files


def _patch_study_date(path: Path) -> None:
    """StudyDate as '2026-13-45' (10 characters where the DA held 8: the length field changes too)."""
    data = path.read_bytes()
    old = b"\x08\x00\x20\x00DA\x08\x0020261345"
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, b"\x08\x00\x20\x00DA\x0a\x002026-13-45"))




def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


class RssWatch:
    """The highest resident memory of a process, sampled every 10 ms until `growth_mb` stops it."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, rss_mb(pid), threading.Event()
        self.start_mb = self.peak
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, IndexError):
                return

    def growth_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak - self.start_mb


def deflate_bomb(path: Path, inflated: int = 1 << 30) -> Path:
    """A deflated CR whose pixel data inflates to `inflated` bytes of zeros: about 1 MB on disk, made in pieces."""

    ds = film_dataset(np.zeros((8, 8), np.uint8))
    del ds.PixelData
    ds.Rows = ds.Columns = 32768
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta, body = DicomBytesIO(), DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(meta.getvalue())
        f.write(deflate.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated)))
        zeros = bytes(1 << 20)
        f.writelines(deflate.compress(zeros) for _ in range(inflated >> 20))
        f.write(deflate.flush())
    return path


def send_file(port: int, path: Path, called: str = "PNEUMO", calling: str = "MOD") -> int | None:
    """C-STORE the file's bytes as they are (the command's UIDs from its file meta, whatever the data set says);
    the status, or None when there was none (no association, or the node cut the transfer off)."""
    from pynetdicom import AE, _config  # the [node] extra, only when the node runs

    _config.STORE_SEND_CHUNKED_DATASET = True
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title=calling)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    return int(status.Status) if status and "Status" in status else None


def connect_from(address: str, port: int) -> socket.socket:
    """A TCP connection to the node from a loopback address of its own (127.0.0.2 and up on Linux)."""
    s = socket.socket()
    try:
        s.bind((address, 0))
    except OSError as e:
        s.close()
        raise PneumoEdgeError(f"cannot bind a socket to {address} on this machine") from e
    s.connect(("127.0.0.1", port))
    return s


class Trickler(threading.Thread):
    """An A-ASSOCIATE-RQ one byte every `every_s`, from `address`, until the node closes the connection."""

    def __init__(self, address: str, port: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.sock = connect_from(address, port)
        self.every_s, self.closed_after, self.reply = every_s, None, b""
        self.t0 = time.monotonic()
        self.start()

    def run(self) -> None:
        pdu = b"\x01\x00" + struct.pack(">L", 200) + bytes(200)
        self.sock.settimeout(self.every_s)
        for byte in pdu:
            try:
                self.sock.send(bytes([byte]))
                data = self.sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                break
            self.reply += data
            if not data:
                break
        self.closed_after = time.monotonic() - self.t0
        self.sock.close()


def echo_within(port: int, seconds: float) -> float:
    """Seconds until a C-ECHO from 127.0.0.1 succeeds (tried every 0.25 s); PneumoEdgeError past `seconds`."""
    from pynetdicom import AE  # the [node] extra, only when the node runs

    ae = AE(ae_title="MOD")
    ae.add_requested_context("1.2.840.10008.1.1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return time.monotonic() - t0
        time.sleep(0.25)
    raise PneumoEdgeError(f"no C-ECHO succeeded within {seconds} s")


class StallingPacs:
    """A C-STORE SCP that takes the association and the object and does not answer until `release` is set."""

    def __init__(self):
        from pynetdicom import AE, evt  # the [node] extra, only when the node runs

        self.release, self.stored = threading.Event(), []
        self.ae = AE(ae_title="STALL")
        self.ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.33")
        self.ae.dimse_timeout = self.ae.network_timeout = 120
        self.port = free_port()

        def handle(event):
            if not self.release.wait(60):
                return 0xA700
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, handle)])

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    """The first true value of `predicate()`, polled every 0.1 s; AssertionError past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class NodeProcesses:
    """`pneumo-edge listen` processes started for a test or a measurement; `kill_running` ends any left."""

    def __init__(self):
        self.started: list = []

    def start(self, folder: Path, send_to: str, *extra: str, port: int | None = None):
        node = NodeProcess(folder, send_to, "--retry-after", "0.2", *extra, port=port)
        self.started.append(node)
        return node.start()

    def kill_running(self) -> None:
        while self.started:
            node = self.started.pop()
            if node.proc is not None and node.proc.poll() is None:
                node.kill()


@dataclass
class NodeBoundsConfig:
    out: str = "bench/results"
    model: str | None = None  # .onnx file or bundle folder; None: the shipped one


def _node(folder: Path, cfg: NodeBoundsConfig, send_to: str | None = None, *extra: str):
    args = ["--model", cfg.model] if cfg.model else []
    return NodeProcesses().start(folder, send_to or f"PACS@127.0.0.1:{free_port()}", *args, *extra)


def measure_bomb(folder: Path, cfg: NodeBoundsConfig) -> dict:
    bomb = deflate_bomb(folder / "bomb.dcm")
    node = _node(folder, cfg)
    try:
        watch = RssWatch(node.proc.pid)
        status = send_file(node.port, bomb)
        (result,) = wait_for(lambda: list((node.spool / "outbox").glob("*/*.dcm")), 120, "the bomb's result")
        grew = watch.growth_mb()
        finding = read_sr(pydicom.dcmread(result))
    finally:
        node.terminate()
    return {"file_bytes": bomb.stat().st_size, "inflates_to_bytes": 1 << 30, "c_store_status": status,
            "rss_growth_mb": round(grew, 1), "bound_mb": RSS_BOUND_MB, "finding": finding["finding"],
            "comment": finding["comment"]}


def measure_trickle(folder: Path, cfg: NodeBoundsConfig) -> dict:
    node = _node(folder, cfg, None, "--max-per-peer", "2", "--request-timeout", "3", "--calling-ae", "MOD")
    try:
        time.sleep(1)  # the start-up probe's association has ended: every slot is free
        peers = [Trickler("127.0.0.2", node.port) for _ in range(10)]
        time.sleep(0.5)
        echo_s = echo_within(node.port, 10)
        for t in peers:
            t.join(10)
    finally:
        node.terminate()
    held = [t.closed_after for t in peers if not t.reply]
    return {"tricklers": len(peers), "byte_every_s": 0.5, "max_per_peer": 2, "request_timeout_s": 3,
            "echo_succeeded_after_s": round(echo_s, 2),
            "rejected_at_once": sum(t.reply.startswith(REJECT_LIMIT) for t in peers),
            "admitted_then_cut_off_after_s": [round(s, 2) for s in held]}


def measure_silent(folder: Path, cfg: NodeBoundsConfig) -> dict:
    node = _node(folder, cfg, None, "--max-associations", "4", "--request-timeout", "3")
    try:
        time.sleep(1)  # the start-up probe's association has ended: every slot is free
        peers = [connect_from(f"127.0.0.{10 + i}", node.port) for i in range(6)]
        time.sleep(0.3)
        echo_s = echo_within(node.port, 10)
        for s in peers:
            s.close()
    finally:
        node.terminate()
    return {"silent_peers": 6, "max_associations": 4, "request_timeout_s": 3, "echo_succeeded_after_s": round(echo_s, 2)}


def measure_stalled(folder: Path, cfg: NodeBoundsConfig) -> dict:
    films = sorted((REPO / "examples" / "xrays").rglob("*.jpeg"))[:2]
    pacs = StallingPacs()
    try:
        node = _node(folder, cfg, f"STALL@127.0.0.1:{pacs.port}", "--send-timeout", "5", "--max-attempts", "2")
        for i, film in enumerate(films):
            send_file(node.port, write_film(film, folder / f"{i}.dcm"))
        wait_for(lambda: any(r["event"] == "destination-down" for r in node.audit()), 60, "the stall noticed")
        time.sleep(12)  # several timeouts and back-offs
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(60)
        took = time.monotonic() - t0
    finally:
        pacs.close()
    audit = node.audit()
    return {"send_timeout_s": 5, "max_attempts": 2, "stop_timeout_s": 10.0, "sigterm_to_exit_s": round(took, 2),
            "exit_code": code, "results_left_queued": len(list((node.spool / "outbox").glob("*/*.dcm"))),
            "dead_letters": len(list((node.spool / "dead").glob("*/*.dcm"))),
            "destination_down_lines": sum(r["event"] == "destination-down" for r in audit),
            "cause": next(r["reason"] for r in audit if r["event"] == "destination-down")}


def measure_headers(folder: Path, cfg: NodeBoundsConfig) -> dict:
    """Which hostile header ends as a result and which in failed/ (with the first line of its reason)."""
    node = _node(folder, cfg)
    try:
        cases = header_cases(folder / "cases", np.full((256, 256), 120, np.uint8))
        uids = {k: str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
                for k, p in cases.items()}
        for path in cases.values():
            send_file(node.port, path)
        wait_for(lambda: len(list((node.spool / "failed").glob("*.dcm"))) + len(_queued_sources(node)) >= len(cases),
                 120, "every case settled")
    finally:
        node.terminate()
    queued = _queued_sources(node)
    out = {}
    for key, uid in uids.items():
        reason = node.spool / "failed" / f"{uid}.reason.txt"
        out[key] = "result" if uid in queued else ("failed: " + reason.read_text().splitlines()[0]
                                                   if reason.exists() else "lost")
    return out


def _queued_sources(node) -> set[str]:
    return {json.loads(p.read_text())["sop_instance_uid"] for p in (node.spool / "outbox").glob("*/*.json")}


def bench_node_bounds(cfg: NodeBoundsConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="node-bounds-") as tmp:
        root = Path(tmp)
        parts = {}
        for name, fn in (("deflate_bomb", measure_bomb), ("trickling_peers", measure_trickle),
                         ("silent_peers", measure_silent), ("stalled_pacs", measure_stalled),
                         ("hostile_headers", measure_headers)):
            (root / name).mkdir()
            parts[name] = fn(root / name, cfg)
    result = {"config": asdict(cfg), **parts}
    write_json(Path(cfg.out) / "node-bounds.json", result)
    return result


def render(r: dict) -> str:
    b, t, s, p = r["deflate_bomb"], r["trickling_peers"], r["silent_peers"], r["stalled_pacs"]
    failed = sum(v.startswith("failed") for v in r["hostile_headers"].values())
    return "\n".join([
        f"deflate bomb ({b['file_bytes'] / 2**20:.1f} MB -> 1 GB): node memory +{b['rss_growth_mb']:.0f} MB "
        f"(bound {b['bound_mb']} MB), result '{b['finding']}'",
        f"{t['tricklers']} trickling peers: C-ECHO after {t['echo_succeeded_after_s']:.2f} s, "
        f"{t['rejected_at_once']} rejected at once, the rest cut off after {t['admitted_then_cut_off_after_s']} s",
        f"{s['silent_peers']} silent peers at the limit of {s['max_associations']}: C-ECHO after "
        f"{s['echo_succeeded_after_s']:.2f} s",
        f"stalled PACS: SIGTERM to exit {p['sigterm_to_exit_s']:.1f} s (exit {p['exit_code']}), "
        f"{p['results_left_queued']} results left queued, {p['dead_letters']} dead letters",
        f"hostile headers: {len(r['hostile_headers']) - failed} results, {failed} in failed/"])
