"""A throw-away Orthanc PACS on loopback: what the node's tests and `bench-node` send results to.

    with Orthanc(tmp_dir) as pacs:                 # Debian's `orthanc` package, temp config, free ports
        pacs.dicom_port, pacs.aet                  # where the node sends (C-STORE)
        pacs.instances()                           # REST: every stored instance's tags
        pacs.stop(); pacs.start()                  # an outage: same ports, same storage

Nothing here is part of the edge runtime; it needs the `orthanc` binary, found on PATH or in /usr/sbin.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from pneumo_edge.edge.errors import PneumoEdgeError


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or shutil.which("orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)


def dicomweb_plugin() -> str | None:
    for folder in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins"):
        p = Path(folder) / "libOrthancDicomWeb.so"
        if p.exists():
            return str(p)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: str | os.PathLike, aet: str = "PACS", dicomweb: bool = False):
        binary = orthanc_binary()
        if binary is None:
            raise PneumoEdgeError("Orthanc is not installed (Debian: apt-get install orthanc)")
        self.binary, self.folder, self.aet = binary, Path(folder), aet
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        plugins = [p for p in [dicomweb_plugin() if dicomweb else None] if p]
        config = {"Name": "pneumo-edge-test", "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "OverwriteInstances": True, "Plugins": plugins,
                  "DicomServerEnabled": True, "HttpServerEnabled": True, "StorageCompression": False,
                  "ConcurrentJobs": 1, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 20.0) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PneumoEdgeError(f"Orthanc exited at start (see {self.folder / 'orthanc.log'})")
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise PneumoEdgeError(f"Orthanc did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, body: bytes) -> object:
        req = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def instances(self) -> list[dict]:
        """Every stored instance's main tags (simplified names), with its Orthanc id as "ID"."""
        return [{**self.get(f"/instances/{i}/simplified-tags"), "ID": i} for i in self.get("/instances")]

    def file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
