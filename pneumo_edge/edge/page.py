"""`pneumo-edge page --out DIR`: the web page as a self-contained folder that classifies in the browser.

    write_page("site/", model="export/model.int8.onnx")    # index.html, static/ (page, onnxruntime-web), model

The folder holds the page, its JavaScript, onnxruntime-web's WebAssembly build (vendored in
static/ort/, MIT licence beside it) and the ONNX file itself; `page.json` names the model. Any static
file server can host it; the browser reads the threshold, labels, preprocessing and guard statistics
from the ONNX file's metadata, exactly as Python does, and no X-ray leaves the reader's machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .api import resolve_model
from .errors import OutputExistsError
from .model import EdgeModel, default_model_path
from .serve import CSP, STATIC
from .targets import INT8

ORT_VERSION = "1.30.0"  # onnxruntime-web from npm, vendored in static/ort/ (see static/ort/README.md)
DICOM_PARSER_VERSION = "1.8.21"  # dicom-parser from npm, vendored in static/dicom/ (MIT)
# The page's own files, by their path in the folder (= their URL path under `serve`, less the leading /).
ASSETS = ("index.html", "static/app.js", "static/app.css", "static/local/ui.js", "static/local/runtime.js",
          "static/local/pixels.js", "static/local/maths.js", "static/local/onnx-metadata.js", "static/local/dicom.js",
          "static/dicom/dicomParser.min.js", "static/dicom/LICENSE",
          "static/ort/ort.wasm.min.mjs", "static/ort/ort-wasm-simd-threaded.mjs",
          "static/ort/ort-wasm-simd-threaded.wasm", "static/ort/LICENSE", "static/ort/README.md")


def meta_csp() -> str:
    """The policy `serve` sends as a header, for a <meta> tag (which cannot carry frame-ancestors)."""
    return "; ".join(d for d in CSP.split("; ") if not d.startswith("frame-ancestors"))


def asset_path(name: str) -> Path:
    """The packaged file behind one of ASSETS (index.html lives in static/ too)."""
    return STATIC / (name.removeprefix("static/") if name != "index.html" else name)


def default_page_model() -> Path:
    """The shipped INT8 file beside the default model, else the default model itself."""
    default = default_model_path()
    int8 = default.with_name(INT8.file)
    return int8 if int8.is_file() else default


def _index_html() -> str:
    html = asset_path("index.html").read_text("utf-8")
    tag = f'<meta http-equiv="Content-Security-Policy" content="{meta_csp()}">'
    head = '<meta charset="utf-8">'
    if head not in html:
        raise RuntimeError("index.html has no <meta charset> to place the security policy after")
    return html.replace(head, f"{head}\n{tag}", 1)


def write_page(out: str | os.PathLike, model: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Write the folder; refuses an existing `out` without `force`. Atomic: built beside `out`, then renamed.

    Returns what was written: {"out", "model", "files", "bytes"}.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' exists and is not a folder")
    if out.exists() and not force:
        raise OutputExistsError(f"output folder '{out}' exists; use --force to replace it")
    src = resolve_model(model, INT8.file) if model is not None else default_page_model()
    EdgeModel(src, threads=1)  # a model that Python cannot use is refused here, not in the browser
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name in ASSETS:
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if name == "index.html":
                dst.write_text(_index_html(), "utf-8")
            else:
                shutil.copyfile(asset_path(name), dst)
        shutil.copyfile(src, tmp / src.name)
        (tmp / "page.json").write_text(json.dumps({"model": src.name, "server": False, "onnxruntime_web": ORT_VERSION},
                                                       indent=1) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the folder from a web server's user
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "model": str(src), "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
