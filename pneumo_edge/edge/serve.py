"""`pneumo-edge serve`: the classifier over HTTP, and a web page to use it (the optional [serve] extra).

    pneumo-edge serve --model export/model.int8.onnx          # http://127.0.0.1:8000/
    curl -F file=@xray.jpeg 'http://127.0.0.1:8000/v1/predict?heatmap=1'
    curl --data-binary @xray.dcm -H 'Content-Type: application/dicom' http://127.0.0.1:8000/v1/predict

Endpoints: POST /v1/predict (one image as multipart field `file`, or as the raw body), GET /v1/model
(the bundle metadata), GET /healthz, GET /metrics (Prometheus text: rates and drift, `edge.monitor`; per
worker process), GET / (the web page), the OpenAPI schema at /openapi.json. No /docs: Swagger UI would load
scripts from a CDN onto the box's own origin. With a token file, every route but OPEN_ROUTES needs a token.
Over TLS every answer carries Strict-Transport-Security; the access log never records a query string.

What a request can cost the box is bounded: its headers must arrive within a deadline (http_protocol), its
body within `body_timeout` seconds (408 beyond) and only up to `max_upload_bytes` in all, every multipart part
counted (413 beyond, told by Content-Length or found while reading), in memory up to SPOOL_BYTES and beyond
that in a file inside a private temporary folder (mode 0700) that is deleted with the request. Only a request
whose body has fully arrived takes an admission slot (at most `concurrency + queue` in flight, the rest get
503 with Retry-After), so slow senders cannot starve the others; one address has at most `per_client`
requests in progress (access.Gate: 429 beyond, with the Host, Origin and token checks). Decoding and inference
run on a bounded executor, never on the event loop; one onnxruntime session per worker process. Every refusal
is a JSON object with a one-line `error`: 401 no valid token, 403 cross-origin, 408 too slow, 413 too large,
415 wrong content type, 421 unknown Host, 422 not a decodable image, 429/503 busy; never a stack trace. A
client that hangs up mid-upload is one log line.
"""

import asyncio
import base64
import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .access import AccessPolicy, Gate, check_bind
from .api import Classifier, resolve_model
from .decision import FIELDS
from .errors import ImageError, PneumoEdgeError
from .heatmap import can_draw
from .model import EdgeModel, default_model_path
from .monitor import Monitor, prometheus_collector

DEFAULT_MAX_UPLOAD_MB = 50
SPOOL_BYTES = 8 * 1024 * 1024  # larger uploads wait in the private temporary folder, not in memory
MULTIPART_SLACK = 64 * 1024  # form headers and boundaries on top of the file itself
RAW_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG",
             "image/bmp": "BMP", "image/x-bmp": "BMP", "image/x-ms-bmp": "BMP", "image/tiff": "TIFF",
             "image/tif": "TIFF", "application/dicom": "DICOM", "application/octet-stream": "any"}
STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "/static/app.css": ("app.css", "text/css; charset=utf-8")}
# The in-browser runtime (edge/page.py): its modules, onnxruntime-web's WebAssembly build, the DICOM parser.
PAGE_DIRS = ("local", "ort", "dicom")
_MEDIA = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
          ".wasm": "application/wasm", ".md": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}
PAGE_FILES.update({f"/static/{d}/{p.name}": (f"{d}/{p.name}", _MEDIA[p.suffix]) for d in PAGE_DIRS
                   for p in sorted((STATIC / d).iterdir()) if p.is_file() and p.suffix in _MEDIA})
# Cross-origin isolation: lets onnxruntime-web use several threads (SharedArrayBuffer) in the page.
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# With a token file, these answer without a token, for the reason given (README "On a network"); every other
# path, TOKEN_ROUTES and any unknown one included, needs a token.
OPEN_ROUTES = {
    "/": "the page: it must load to ask for the token",
    "/static/*": "the page's own scripts, styles and in-browser runtime: files of the package, no data",
    "/page.json": "read by the page before it has the token: the served file's name (as /healthz says) and "
                  "where its in-browser mode fetches the model (v1/model.onnx, which needs the token)",
    "/healthz": "liveness for a supervisor or load balancer that holds no token: the model file's name and "
                "the number of requests in flight",
    "/openapi.json": "the API's description: routes and fields, no data and no settings",
}
TOKEN_ROUTES = {
    "/v1/predict": "classifies an X-ray",
    "/v1/model": "the bundle's metadata, the guard's and monitor's settings, upload limits",
    "/v1/model.onnx": "the model file itself",
    "/metrics": "images scored by outcome, positive and refusal rates, drift statistic and alarm",
}
HSTS = "max-age=31536000"  # a year: a browser that met the box over TLS will not try plain HTTP
GUARD_WORDS = {"off": "no out-of-distribution check (turned off, or this model file has none)",
               "rejected": "this does not look like a frontal chest X-ray like those the model was trained on, "
                           "so no diagnosis and no heat map are given",
               "accepted": "looks like a frontal chest X-ray like those the model was trained on"}
CONFIG_ENV = "PNEUMO_EDGE_SERVE_CONFIG"  # how `serve --workers N` hands its settings to each worker process
log = logging.getLogger("pneumo_edge.serve")


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None  # .onnx file, bundle folder or hub id; None: the shipped model
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    queue: int = 16  # requests admitted beyond those running; more get 503
    concurrency: int = 1  # requests decoded and classified at once in one worker (one session)
    threads: int | None = None  # onnxruntime intra-op threads per worker (default: cores / workers)
    guard: bool = True
    tokens: str | None = None  # token file (tokens.py): when set, /v1/ requests need a bearer token
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback (the CLI adds the bind name)
    per_client: int = 4  # requests in progress from one client address
    body_timeout: float = 60.0  # seconds for a whole request body to arrive


class Refusal(Exception):
    """An HTTP refusal with a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


# ---------------------------------------------------------------- uploads

class Upload:
    """One upload's bytes: in memory up to SPOOL_BYTES, then a file in the private folder; close() deletes it."""

    def __init__(self, limit: int, private_dir):
        self.limit, self.size = limit, 0
        self._private_dir = private_dir  # a callable: the folder is made on the first upload that needs it
        self._buf = bytearray()
        self._file = None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise Refusal(413, f"upload larger than the limit of {_mb(self.limit)}")
        if self._file is None and len(self._buf) + len(chunk) > SPOOL_BYTES:
            self._file = tempfile.NamedTemporaryFile(dir=self._private_dir(), prefix="upload-", delete=True)
            self._file.write(self._buf)
            self._buf = bytearray()
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._buf += chunk

    def source(self) -> bytes | str:
        """What `load_image` reads: the bytes, or the spooled file's path."""
        if self._file is None:
            return bytes(self._buf)
        self._file.flush()
        return self._file.name

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # delete=True: the file goes with it
            self._file = None
        self._buf = bytearray()


class FormReader:
    """Streams a multipart/form-data body; the first file part (or a field named file/image) goes to `upload`."""

    FIELDS = ("file", "image")

    def __init__(self, boundary: bytes, upload: Upload):
        MultipartParser, _ = _multipart()

        self.upload = upload
        self.found = False
        self.content_type: str | None = None
        self._field = self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._take = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end})

    def _begin(self) -> None:
        self._headers, self._take = {}, False

    def _hfield(self, data, start, end) -> None:
        self._field += data[start:end]

    def _hvalue(self, data, start, end) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_done(self) -> None:
        _, parse_options_header = _multipart()
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        is_file = b"filename" in opts or opts.get(b"name", b"").decode("latin-1").lower() in self.FIELDS
        if is_file and not self.found:
            self._take = self.found = True
            ctype = self._headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            self.content_type = ctype or None

    def _data(self, data, start, end) -> None:
        if self._take:
            self.upload.write(data[start:end])

    def _end(self) -> None:
        self._take = False

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except Refusal:
            raise
        except Exception as e:  # python-multipart's parse errors
            raise Refusal(400, f"malformed multipart body ({e.__class__.__name__})") from None


def _multipart():
    """(MultipartParser, parse_options_header) from python-multipart (>= 0.0.31: part headers are bounded)."""
    from python_multipart.multipart import (  # python_multipart: only when this runs
        MultipartParser,
        parse_options_header,
    )

    return MultipartParser, parse_options_header


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def _content_type(header: str | None) -> tuple[str, dict[str, str]]:
    if not header:
        return "", {}
    main, *params = header.split(";")
    opts = {}
    for p in params:
        if "=" in p:
            k, v = p.split("=", 1)
            opts[k.strip().lower()] = v.strip().strip('"')
    return main.strip().lower(), opts


# ---------------------------------------------------------------- the service

class Service:
    """The model, its executor, the admission count and the private temporary folder of one worker."""

    def __init__(self, config: ServeConfig):

        self.config = config
        path = resolve_model(config.model) if config.model else default_model_path()
        self.model = EdgeModel(path, threads=config.threads)
        self.classifier = Classifier(self.model, guard=config.guard)
        self.monitor = Monitor.for_model(self.model)  # this worker's rolling window, shown at /metrics
        self.executor = ThreadPoolExecutor(max(1, config.concurrency), thread_name_prefix="pneumo-infer")
        self.capacity = max(1, config.concurrency) + max(0, config.queue)
        self.pending = 0
        self.latency_s = 0.05  # moving average of one request's work, for Retry-After
        self._dir: str | None = None

    def private_dir(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="pneumo-edge-serve-")  # mode 0700, this process only
        return self._dir

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def admit(self) -> bool:
        if self.pending >= self.capacity:
            wait = self.pending * self.latency_s / max(1, self.config.concurrency)
            raise Refusal(503, f"busy: {self.pending} requests in progress or queued; retry shortly",
                          {"Retry-After": str(max(1, math.ceil(wait)))})
        self.pending += 1
        return True

    def release(self) -> None:
        self.pending -= 1

    def classify(self, source: bytes | str, heatmap: bool) -> dict:
        """Decode, classify and (optionally) explain one image: runs on the executor."""
        t0 = time.perf_counter()
        r = self.classifier.predict(source, heatmap=heatmap)
        self.monitor.observe(r["probability"], r["guard_score"], r["label"], r["guard_verdict"] == "rejected")
        self.latency_s = 0.8 * self.latency_s + 0.2 * (time.perf_counter() - t0)
        return r

    def model_info(self) -> dict:
        meta = self.model.meta
        return {"file": self.model.path.name, "weights_sha256": meta.weights_sha256,
                "version": meta.pneumo_edge_version, "model": meta.model, "quantization": meta.quantization,
                "heatmaps": can_draw(self.model), "guard": self.classifier.guard,
                "metadata": _brief(meta.to_dict()),
                "limits": {"max_upload_bytes": self.config.max_upload_bytes, "queue": self.config.queue,
                           "concurrency": self.config.concurrency}}

    def answer(self, r: dict, latency_ms: float) -> dict:
        """The HTTP answer: the scored-image fields under their names in every output, plus words for people."""
        meta = self.model.meta
        record = {k: r[k] for k in FIELDS}
        p, thr, model_label = r["probability"], r["threshold"], r["model_label"]
        side = "at or above" if model_label == meta.labels[1] else "below"
        out = {**record,
               "guard_explanation": GUARD_WORDS[r["guard_verdict"]],
               "decision": f"P({meta.labels[1]}) {p:.3f} is {side} the threshold {thr:.3f}: {model_label}",
               "model": {"weights_sha256": meta.weights_sha256, "version": meta.pneumo_edge_version,
                         "file": self.model.path.name, "quantization": meta.quantization},
               "latency_ms": round(latency_ms, 2)}
        if "heatmap_png" in r:
            out["heatmap"] = {"class": r["explained_class"], "media_type": "image/png",
                              "method": r["heatmap_method"], "meaning": r["heatmap_meaning"],
                              "png_base64": base64.b64encode(r["heatmap_png"]).decode("ascii")}
        return out


def _brief(obj):
    """Metadata for people: long packed arrays replaced by their length."""
    if isinstance(obj, dict):
        return {k: _brief(v) for k, v in obj.items()}
    if isinstance(obj, str) and len(obj) > 200:
        return f"<{len(obj)} characters of packed numbers>"
    if isinstance(obj, list) and len(obj) > 16:
        return f"<{len(obj)} numbers>"
    return obj


async def read_body(request, sink, limit: int, timeout: float, shown: int | None = None) -> None:
    """The whole body into `sink`, refusing more than `limit` bytes in all (413) or slower than `timeout` s (408).

    `shown`: the limit users are told (the upload limit, without the multipart slack)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stream = request.stream().__aiter__()
    total = 0
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise Refusal(408, f"the request body did not arrive within {timeout:g} s",
                          {"Connection": "close"}) from None
        total += len(chunk)
        if total > limit:
            raise Refusal(413, f"upload larger than the limit of {_mb(shown or limit)}", {"Connection": "close"})
        if chunk:
            sink.write(chunk)


class SecurityHeaders:
    """ASGI middleware: every response says X-Content-Type-Options: nosniff, and over TLS Strict-Transport-Security."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = [(b"x-content-type-options", b"nosniff")]
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS.encode()))

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_header)


PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        **{t: {"schema": {"type": "string", "format": "binary"}}
           for t in ("image/jpeg", "image/png", "image/bmp", "image/tiff", "application/dicom")},
    },
}


def _version() -> str:
    try:
        return version("pneumo-edge")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def create_app(config: ServeConfig = ServeConfig()):
    """The FastAPI application; loads the model now, so that a bad model fails before serving."""
    from fastapi import FastAPI, Request  # the [serve] extra, only when serving
    from fastapi.responses import Response  # the [serve] extra, only when serving

    service = Service(config)

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="pneumo-edge", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Pneumonia-vs-normal paediatric chest X-ray classifier with an out-of-distribution "
                              "guard and heat maps. A decision aid for qualified readers, not a diagnosis.")
    app.state.service = service

    add_error_handlers(app)

    tokens = None
    if config.tokens:
        from .tokens import TokenStore

        tokens = TokenStore(config.tokens)
    open_paths = frozenset({*(p for p in OPEN_ROUTES if not p.endswith("*")), *PAGE_FILES})
    app.add_middleware(Gate, policy=AccessPolicy(hosts=tuple(config.allowed_hosts), per_client=config.per_client,
                                                 tokens=tokens, open_paths=open_paths))
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", tags=["service"], summary="Liveness: the model is loaded")
    async def healthz() -> dict:
        return {"status": "ok", "model": service.model.path.name, "in_flight": service.pending}

    from prometheus_client import (  # an extra ([serve]/[node]), only when run
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
    )

    registry = CollectorRegistry()  # this app's own: two apps in one process do not share counters
    registry.register(prometheus_collector(service.monitor))

    @app.get("/metrics", tags=["service"], summary="Prometheus text: rates, score distributions, drift alarm")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", tags=["model"], summary="The bundle metadata of the served model")
    async def model_info() -> dict:
        return service.model_info()

    @app.post("/v1/predict", tags=["model"], summary="Classify one chest X-ray",
              openapi_extra={"requestBody": PREDICT_BODY},
              responses={413: {"description": "upload too large"}, 415: {"description": "wrong content type"},
                         422: {"description": "not a decodable image"}, 503: {"description": "busy: retry later"}})
    async def predict(request: Request, heatmap: bool = False) -> dict:
        """One image (JPEG, PNG, BMP, TIFF or DICOM) as multipart field `file` or as the raw body.

        The answer: label (NORMAL, PNEUMONIA, or REJECTED_OOD when the guard refuses the image), the calibrated
        probability and the threshold it is compared with, the guard's score and verdict, the model's digest
        and version, the server-side latency, and with `heatmap=1` a PNG heat map (base64).
        """
        return await predict_upload(service, config, request, heatmap)

    @app.get("/v1/model.onnx", tags=["model"], summary="The served ONNX file, for the page's in-browser mode",
             response_class=Response)
    async def model_file() -> Response:
        return Response(service.model.path.read_bytes(), media_type="application/octet-stream",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/page.json", include_in_schema=False)
    async def page_config() -> dict:  # what the page's in-browser mode opens (edge/static/local/ui.js)
        return {"model": "v1/model.onnx", "file": service.model.path.name, "server": True}

    add_page_routes(app)
    return app



def add_error_handlers(app) -> None:
    """Every error, a bug included, is one JSON line {"error", "status"}: never a trace."""
    from fastapi.exceptions import (
        RequestValidationError,  # the [serve] extra, only when serving
    )
    from fastapi.responses import JSONResponse  # the [serve] extra, only when serving
    from starlette.exceptions import (
        HTTPException as StarletteHTTPException,  # the [serve] extra, only when serving
    )

    def refuse(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": reason, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(Refusal)
    async def _refusal(_req, e: Refusal):
        return refuse(e.status, e.reason, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, e: StarletteHTTPException):
        return refuse(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body"))
        return refuse(422, f"invalid {where or 'request'}: {first.get('msg', 'not understood')}")

    @app.exception_handler(Exception)
    async def _unexpected(_req, e: Exception):  # a bug: still one line, never a trace

        logging.getLogger("pneumo_edge.serve").exception("unexpected error")
        return refuse(500, f"internal error ({e.__class__.__name__})")


async def predict_upload(service: "Service", config: ServeConfig, request, heatmap: bool) -> dict:
    """POST /v1/predict: the body read within its limits and deadline, one admission slot, the answer."""
    from fastapi.responses import Response  # the [serve] extra, only when serving
    from starlette.requests import (
        ClientDisconnect,  # the [serve] extra, only when serving
    )

    t0 = time.perf_counter()
    ctype, opts = _content_type(request.headers.get("content-type"))
    form = ctype == "multipart/form-data"
    if not form and ctype not in RAW_TYPES:
        raise Refusal(415, f"unsupported content type '{ctype or 'none'}': send multipart/form-data with a "
                           "'file' field, or the image as the body with Content-Type image/jpeg, image/png, "
                           "image/bmp, image/tiff or application/dicom")
    if heatmap and not can_draw(service.model):
        raise Refusal(400, f"this model file ({service.model.path.name}) cannot make heat maps: it was exported "
                           "by an older pneumo-edge; re-export it, or ask without heatmap=1")
    if form and not opts.get("boundary"):
        raise Refusal(400, "multipart/form-data without a boundary")
    limit = config.max_upload_bytes + (MULTIPART_SLACK if form else 0)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"upload larger than the limit of {_mb(config.max_upload_bytes)}")
    upload = Upload(config.max_upload_bytes, service.private_dir)
    work = admitted = None
    try:
        reader = FormReader(opts["boundary"].encode("latin-1"), upload) if form else upload
        try:
            await read_body(request, reader, limit, config.body_timeout, config.max_upload_bytes)
        except ClientDisconnect:
            client = request.client.host if request.client else "a client"
            log.info("%s hung up during its upload (%s received)", client, _mb(upload.size))
            return Response(status_code=400)  # nobody reads it: the connection is gone
        if form:
            reader.parser.finalize()
            if not reader.found:
                raise Refusal(422, "no file in the form: send the image in a field named 'file'")
            if reader.content_type and reader.content_type not in RAW_TYPES:
                raise Refusal(415, f"unsupported file type '{reader.content_type}': "
                                   "JPEG, PNG, BMP, TIFF or DICOM")
        if upload.size == 0:
            raise Refusal(422, "empty upload (0 bytes)")
        admitted = service.admit()
        work = asyncio.get_running_loop().run_in_executor(service.executor, service.classify, upload.source(),
                                                          heatmap)
        try:
            r = await asyncio.shield(work)
        except ImageError as e:
            raise Refusal(422, f"not a usable image: {e}") from None
        except PneumoEdgeError as e:
            raise Refusal(422, str(e)) from None
        return service.answer(r, (time.perf_counter() - t0) * 1000)
    finally:
        if work is not None and not work.done():  # the client went away: the slot and the upload stay
            work.add_done_callback(lambda _: (upload.close(), service.release()))  # until the work ends
        else:
            upload.close()
            if admitted:
                service.release()



def add_page_routes(app) -> None:
    """The page's files, each with the page's CSP and isolation headers."""
    from fastapi.responses import Response  # the [serve] extra, only when serving

    def static_route(url: str, name: str, media: str):
        async def page() -> Response:
            try:
                body = (STATIC / name).read_bytes()
            except OSError:
                raise Refusal(404, f"{name} is missing from this installation") from None
            return Response(body, media_type=media, headers={"Content-Security-Policy": CSP,
                                                             "Cache-Control": "no-cache", **ISOLATION})

        app.add_api_route(url, page, methods=["GET"], include_in_schema=False)

    for url, (name, media) in PAGE_FILES.items():
        static_route(url, name, media)


def app_from_env():
    """The application for one of `serve --workers N`'s processes: settings from CONFIG_ENV."""
    from .http_protocol import (  # h11: only when this runs
        DEFAULT_HEADER_TIMEOUT,
        HEADER_TIMEOUT_ENV,
        tls_handshake_deadline,
    )

    tls_handshake_deadline(float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT)))
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def _log_config() -> dict:
    """uvicorn's logging, with this service's own lines (refusals, hang-ups) through the same handler, and access
    lines without query strings."""
    from uvicorn.config import LOGGING_CONFIG  # the [serve] extra, only when serving

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["pneumo_edge"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    cfg.setdefault("filters", {})["no_query"] = {"()": "pneumo_edge.edge.http_protocol.NoQueryString"}
    cfg["handlers"]["access"]["filters"] = ["no_query"]
    return cfg


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info", certfile: str | None = None, keyfile: str | None = None,
          insecure_http: bool = False, header_timeout: float = 10.0) -> None:
    """Run uvicorn; one process (and one onnxruntime session) per worker. An unsafe network bind is refused."""
    try:
        import uvicorn

        from .http_protocol import (
            HEADER_TIMEOUT_ENV,
            DeadlineH11Protocol,
            tls_handshake_deadline,
        )
    except ImportError:
        raise PneumoEdgeError("pneumo-edge serve needs the [serve] extra: pip install 'pneumo-edge[serve]'") from None
    if bool(certfile) != bool(keyfile):
        raise PneumoEdgeError("TLS needs both --certfile and --keyfile")
    n_tokens = None
    if config.tokens:
        from .tokens import TokenStore

        n_tokens = len(TokenStore(config.tokens).records)
    check_bind(host, tls=bool(certfile), insecure_http=insecure_http, tokens=n_tokens)
    os.environ[HEADER_TIMEOUT_ENV] = str(header_timeout)  # read by each connection, in every worker
    tls_handshake_deadline(header_timeout)  # this process; each worker of --workers N sets it in app_from_env
    net = {"host": host, "port": port, "log_level": log_level, "http": DeadlineH11Protocol, "loop": "asyncio",
           "ssl_certfile": certfile, "ssl_keyfile": keyfile, "log_config": _log_config()}
    workers = max(1, workers)
    if config.threads is None:
        from dataclasses import replace

        config = replace(config, threads=max(1, (os.cpu_count() or 1) // workers))
    if workers == 1:
        app = create_app(config)  # a bad model fails here, before the port opens
        uvicorn.run(app, **net)
        return
    create_app(config).state.service.close()  # check the model once in this process first
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    uvicorn.run("pneumo_edge.edge.serve:app_from_env", factory=True, workers=workers, **net)
