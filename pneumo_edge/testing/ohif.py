"""The OHIF viewer (the prebuilt `@ohif/app` npm package) served against a local Orthanc: how the tests see a
result the way a radiologist would.

    python -m pneumo_edge.testing.ohif                      # fetch the viewer once (npm pack) into the cache folder
    with Orthanc(tmp, dicomweb=True) as pacs, Viewer(pacs.url) as viewer:
        page.goto(viewer.study_url(study_uid))

`Viewer` serves the viewer's dist/ folder and forwards /dicom-web/ to Orthanc's DICOMweb plugin on the same
origin (no cross-origin set-up), with a configuration of ours in place of the package's app-config.js.
Nothing here is part of the edge runtime.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from pneumo_edge.edge.errors import PneumoEdgeError

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
# of the npm tarball (npm view @ohif/app@3.13.2 dist.integrity): npm pack checks it, so do we after a copy
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
ENV = "PNEUMO_EDGE_OHIF"  # a folder holding the package's dist/, else the cache folder below


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pneumo-edge" / f"ohif-{VERSION}"


def dist_dir() -> Path | None:
    """The viewer's dist/ folder, or None when it has not been fetched."""
    root = Path(os.environ[ENV]) if os.environ.get(ENV) else cache_dir()
    dist = root / "package" / "dist" if (root / "package").is_dir() else root / "dist"
    return dist if (dist / "index.html").is_file() else None


def fetch(dest: Path | None = None) -> Path:
    """`npm pack @ohif/app@VERSION` (npm checks the registry's integrity hash), unpacked into `dest`."""
    import base64
    import hashlib

    dest = dest or cache_dir()
    if (dest / "package" / "dist" / "index.html").is_file():
        return dest / "package" / "dist"
    if shutil.which("npm") is None:
        raise PneumoEdgeError("npm is not installed: it fetches the OHIF viewer (apt-get install npm)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        r = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp],
                           capture_output=True, text=True, timeout=900)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if r.returncode != 0 or tgz is None:
            raise PneumoEdgeError(f"npm pack {PACKAGE}@{VERSION} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if digest != INTEGRITY:
            raise PneumoEdgeError(f"{tgz.name}: integrity {digest[:24]}... is not the published {INTEGRITY[:24]}...")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(Path(tmp) / "package", dest / "package")
    return dest / "package" / "dist"


def app_config(origin: str) -> str:
    """The viewer's configuration: one DICOMweb source, Orthanc's, through this origin."""
    root = f"{origin}/dicom-web"
    source = {"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb", "sourceName": "orthanc",
              "configuration": {"friendlyName": "Orthanc", "name": "orthanc", "wadoUriRoot": root,
                                "qidoRoot": root, "wadoRoot": root, "qidoSupportsIncludeField": False,
                                "imageRendering": "wadors", "thumbnailRendering": "wadors",
                                "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
                                "supportsWildcard": True, "staticWado": False, "singlepart": "bulkdata,video",
                                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                                "omitQuotationForMultipartRequest": True}}
    config = {"routerBasename": "/", "extensions": [], "modes": [], "showStudyList": True,
              "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False,
              "showCPUFallbackMessage": False, "showLoadingIndicator": True, "investigationalUseDialog":
              {"option": "never"}, "defaultDataSourceName": "orthanc", "dataSources": [source]}
    return f"window.config = {json.dumps(config, indent=1)};\n"


_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".wasm": "application/wasm",
          ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".woff2": "font/woff2",
          ".ico": "image/x-icon"}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet: the test reads the page, not the access log
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/"):
            return self._forward()
        if path == "/app-config.js":
            return self._send(200, self.server.config.encode(), "text/javascript")
        file = (self.server.dist / path.lstrip("/")).resolve()
        if not (file.is_file() and file.is_relative_to(self.server.dist)):
            file = self.server.dist / "index.html"  # the viewer's own routes (/viewer?...)
        self._send(200, file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream"))

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
        req = urllib.request.Request(self.server.pacs + self.path, data=body, headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                self._send(r.status, r.read(), r.headers.get("Content-Type", "application/octet-stream"))
        except urllib.error.HTTPError as e:
            self._send(e.code, e.read(), e.headers.get("Content-Type", "text/plain"))

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    pacs: str
    config: str


class Viewer:
    """OHIF's dist/ and Orthanc's /dicom-web/ on one loopback origin, in a thread of this process."""

    def __init__(self, pacs_url: str, dist: Path | None = None):
        found = dist or dist_dir()
        if found is None:
            raise PneumoEdgeError(f"the OHIF viewer is not fetched: run `{sys.executable} -m pneumo_edge.testing.ohif`")
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.dist, self.server.pacs = found.resolve(), pacs_url.rstrip("/")
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.config = app_config(self.origin)
        self.thread = threading.Thread(target=self.server.serve_forever, name="ohif", daemon=True)

    def study_url(self, study_uid: str) -> str:
        return f"{self.origin}/viewer?StudyInstanceUIDs={study_uid}"

    def __enter__(self) -> "Viewer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    print(fetch())
