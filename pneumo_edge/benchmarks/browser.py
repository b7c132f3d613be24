"""The page's in-browser runtime against the Python runtime, in headless Chromium (Playwright).

    r = run_parity(files, model="export/model.int8.onnx")        # browser vs `pneumo-edge infer`, per film
    bench_browser(BrowserBenchConfig(out="bench/results/browser.json"))   # parity + ms per film, 1 and N threads

The browser side is the real page (`pneumo-edge page --out`), hosted by a plain static file server on
loopback and given the files through its file input, as a reader would; results are read from each result
element's data-file / data-label / data-probability / data-guard attributes and the page's heat-map hook.
The Python side is `edge.infer.predict_paths` (what `pneumo-edge infer` runs) for the record of each film
(label, probability, guard verdict), and `edge.heatmap.explain_film` (the shipped occlusion map) on the same decode
for the heat map. The page draws that map with ~50 model runs per film, so heat maps are compared on a few
films (`heatmap_films`), every film for the rest. This is a runtime comparison: it reads no
metric and writes no ledger line, whatever folder the films come from.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pneumo_edge.edge.atomic import refuse_existing, write_json
from pneumo_edge.edge.decision import score_images
from pneumo_edge.edge.heatmap import explain_film
from pneumo_edge.edge.imaging import load_image, normalize, resize_gray
from pneumo_edge.edge.infer import InferConfig, predict_paths
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.outputs import Outputs
from pneumo_edge.edge.page import ORT_VERSION, write_page
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.stats import map_correlation

GOALS = {"max_abs_delta_probability": 0.01, "label_agreement": 0.99, "guard_agreement": 0.99,
         "heatmap_correlation": 0.98, "ms_per_film_one_thread": 150.0}
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu"]


def chromium_path() -> str | None:
    """Debian's chromium (what .ci/run installs), or $PNEUMO_EDGE_CHROMIUM."""
    return os.environ.get("PNEUMO_EDGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class _Handler(http.server.SimpleHTTPRequestHandler):
    isolate = False

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        if self.isolate:  # cross-origin isolation: SharedArrayBuffer, so onnxruntime-web may use threads
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def static_server(folder: str | os.PathLike, isolate: bool = False):
    """A plain static file server for `folder` on a free loopback port; yields its base URL."""
    handler = type("Handler", (_Handler,), {"isolate": isolate})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/"
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def chromium():
    """A headless Chromium driven by Playwright."""
    from playwright.sync_api import (
        sync_playwright,  # the [browser] extra, only when a browser runs
    )

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no chromium on this machine (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, offline: bool = False, timeout_ms: int = 120_000):
    """The page loaded and its in-browser model opened; `offline`: the network is cut once it has loaded.
    Returns (page, errors seen on the console)."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.evaluate("() => window.pneumoLocal.ready().then(() => true)")
    if offline:
        context.set_offline(True)
    return page, errors


HEAT_JS = """(name) => {
  const h = window.pneumoLocal.heatmap(name);
  if (h === null) return null;
  const b = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
  let s = ""; for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
  return btoa(s);
}"""


def classify_in_page(page, files: list[str], heatmaps: bool = False, timeout_ms: int = 600_000) -> dict[str, dict]:
    """Give `files` to the page's file input; one record per file name, read from the result elements."""
    names = [Path(f).name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("files must have distinct names: the page reports each by its name")
    page.locator("#heat").set_checked(heatmaps)
    page.locator("#clear").click()
    page.set_input_files("#files", [str(f) for f in files])
    page.wait_for_function(f"() => document.querySelectorAll('.card[data-label]').length === {len(files)}",
                           timeout=timeout_ms)
    rows = page.evaluate("""() => [...document.querySelectorAll('.card')].map(c => ({...c.dataset}))""")
    out = {}
    for r in rows:
        heat = page.evaluate(HEAT_JS, r["file"]) if heatmaps else None
        parts = page.evaluate("(name) => window.pneumoLocal.timing(name)", r["file"])
        heat_ms = page.evaluate("(name) => window.pneumoLocal.heatmapMs(name)", r["file"]) if heatmaps else None
        out[r["file"]] = {"label": r["label"], "probability": float(r["probability"]) if r["probability"] else None,
                          "heatmap_ms": heat_ms,
                          "guard": r.get("guard") or None,
                          "guard_score": float(r["guardScore"]) if r.get("guardScore") else None,
                          "ms": float(r["ms"]) if r.get("ms") else None, "where": r.get("where"),
                          "input_sha256": r.get("inputSha256"), "parts": parts,
                          "heat": None if heat is None else np.frombuffer(base64.b64decode(heat), np.float32)}
    return out


def with_heatmaps(page, files: list[str], heat_files: list[str]) -> dict[str, dict]:
    """Every file classified, then `heat_files` again with the heat map: their records carry it."""
    out = classify_in_page(page, files)
    if heat_files:
        for name, r in classify_in_page(page, heat_files, heatmaps=True).items():
            out[name].update(heat=r["heat"], heatmap_ms=r["heatmap_ms"])
    return out


def spaced(files: list[str], n: int | None) -> list[str]:
    """`n` of `files`, evenly spaced (all for None)."""
    if n is None or n >= len(files):
        return list(files)
    return [files[i] for i in dict.fromkeys(np.linspace(0, len(files) - 1, n).round().astype(int))] if n > 0 else []


def python_reference(files: list[str], model_path: str | os.PathLike,
                     heat_files: list[str] | None = None) -> dict[str, dict]:
    """What `pneumo-edge infer` says of each file (its rows), plus the shipped heat map of those of
    `heat_files` the guard accepts (none for None: each map is ~50 model runs)."""

    model = EdgeModel(model_path)
    with tempfile.TemporaryDirectory() as tmp:
        with Outputs(Path(tmp) / "rows.csv", Path(tmp) / "rows.jsonl") as outputs:
            predict_paths(list(files), model, outputs, InferConfig(progress=False))
        rows = [json.loads(line) for line in (Path(tmp) / "rows.jsonl").read_text().splitlines()]
    by_path = {os.path.abspath(r["path"]): r for r in rows}
    draw = {os.path.abspath(f) for f in heat_files or ()}
    out = {}
    for f in files:
        r = by_path[os.path.abspath(f)]
        heat = digest = None
        if r["status"] in ("ok", "rejected"):
            gray, chroma = load_image(f, size=model.spec.size)
            resized = resize_gray(gray, model.spec.size, model.spec.resize)
            digest = hashlib.sha256(np.ascontiguousarray(resized).tobytes()).hexdigest()
            scored = score_images(model, [(resized, chroma)], True)[0]
            if os.path.abspath(f) in draw and scored.heatmap_allowed:
                heat = explain_film(model, resized).ravel()
        out[Path(f).name] = {"label": r.get("label") or "ERROR", "probability": r.get("probability"),
                             "guard": r.get("guard_verdict"), "guard_score": r.get("guard_score"), "heat": heat,
                             "input_sha256": digest}
    return out


def compare(browser: dict[str, dict], python: dict[str, dict], worst: int = 5) -> dict:
    """Per-film agreement of the two runtimes, and the films that differ most."""
    films = []
    for name, py in python.items():
        br = browser[name]
        row = {"file": name, "python_label": py["label"], "browser_label": br["label"],
               "python_probability": py["probability"], "browser_probability": br["probability"],
               "python_guard": py["guard"], "browser_guard": br["guard"],
               "python_guard_score": py["guard_score"], "browser_guard_score": br["guard_score"],
               "same_input_pixels": py["input_sha256"] is not None and py["input_sha256"] == br.get("input_sha256")}
        if py["probability"] is not None and br["probability"] is not None:
            row["abs_delta_probability"] = abs(py["probability"] - br["probability"])
        if py["heat"] is not None and br.get("heat") is not None:  # the browser draws none for a refused film
            row["heatmap_correlation"] = map_correlation(py["heat"], br["heat"])
        films.append(row)
    return {"summary": summarise(films, worst), "films": films}


def summarise(films: list[dict], worst: int = 5) -> dict:
    """Agreement over per-film rows of `compare`, and the films that differ most."""
    n = len(films)
    deltas = [f["abs_delta_probability"] for f in films if "abs_delta_probability" in f]
    corrs = [f["heatmap_correlation"] for f in films if "heatmap_correlation" in f]
    summary = {"films": n,
               "max_abs_delta_probability": max(deltas) if deltas else None,
               "mean_abs_delta_probability": float(np.mean(deltas)) if deltas else None,
               "label_agreement": sum(f["python_label"] == f["browser_label"] for f in films) / n,
               "guard_agreement": sum(f["python_guard"] == f["browser_guard"] for f in films) / n,
               "same_input_pixels": sum(f["same_input_pixels"] for f in films),
               "films_over_0.01": sum(d > 0.01 for d in deltas),
               "heatmaps_compared": len(corrs),
               "min_heatmap_correlation": min(corrs) if corrs else None,
               "mean_heatmap_correlation": float(np.mean(corrs)) if corrs else None}
    summary["worst_probability"] = sorted((f for f in films if "abs_delta_probability" in f),
                                          key=lambda f: -f["abs_delta_probability"])[:worst]
    summary["worst_heatmap"] = sorted((f for f in films if "heatmap_correlation" in f),
                                      key=lambda f: f["heatmap_correlation"])[:worst]
    summary["disagreements"] = [f for f in films if f["python_label"] != f["browser_label"]
                                or f["python_guard"] != f["browser_guard"]]
    return summary


def native_variation(files: list[str], model_path: str | os.PathLike) -> dict:
    """The same file in native onnxruntime at two graph-optimisation levels: basic (each quantised op as
    DequantizeLinear -> float op -> QuantizeLinear) against all (what `infer` runs: fused integer kernels).

    Both are correct executions of one INT8 file; how far they differ is the rounding noise of the INT8
    kernels themselves, the yardstick for the browser's distance from `infer`.
    """

    model = EdgeModel(model_path, threads=1)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 1
    basic = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    deltas = {}
    for f in files:
        x = normalize(resize_gray(load_image(f, size=model.spec.size)[0], model.spec.size, model.spec.resize)[None],
                      model.spec)
        p_all = model.probability(model.run(x, ["logits"])["logits"])[0]
        p_basic = model.probability(basic.run(["logits"], {model.input_name: x})[0])[0]
        deltas[Path(f).name] = abs(float(p_all - p_basic))
    worst = max(deltas, key=deltas.get)
    return {"films": len(deltas), "max_abs_delta_probability": deltas[worst], "worst_file": worst,
            "mean_abs_delta_probability": float(np.mean(list(deltas.values()))),
            "films_over_0.01": sum(d > 0.01 for d in deltas.values())}


def meets_goals(summary: dict) -> dict[str, bool]:
    return {"max_abs_delta_probability": summary["max_abs_delta_probability"] <= GOALS["max_abs_delta_probability"],
            "label_agreement": summary["label_agreement"] >= GOALS["label_agreement"],
            "guard_agreement": summary["guard_agreement"] >= GOALS["guard_agreement"],
            "heatmap_correlation": (summary["min_heatmap_correlation"] or 0) >= GOALS["heatmap_correlation"]}


def timings(ms: list[float]) -> dict:
    """ms per film (decoding, preprocessing, the network and the guard), in the order classified; with the
    machine's load average, since on a shared box other jobs' load is in every number."""
    steady = ms[1:] if len(ms) > 1 else ms  # the first film also pays WebAssembly's warm-up
    return {"films": len(ms), "first_ms": ms[0] if ms else None, "p50_ms": statistics.median(steady),
            "mean_ms": statistics.fmean(steady), "p95_ms": float(np.percentile(steady, 95)),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def native_timing(files: list[str], model_path: str | os.PathLike) -> dict:
    """The same per-film work in Python on one onnxruntime thread: decode, resize, network, guard (batch 1)."""

    model = EdgeModel(model_path, threads=1)
    ms = []
    for f in files:
        t0 = time.perf_counter()
        gray, chroma = load_image(f, size=model.spec.size)
        score_images(model, [(resize_gray(gray, model.spec.size, model.spec.resize), chroma)], True)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"threads": 1, **timings(ms)}


# ---------------------------------------------------------------- the bench command

@dataclass
class BrowserBenchConfig:
    out: str = "bench/results/browser.json"
    model: str = "export/model.int8.onnx"
    images: str = "../shared/data/chest_xray/test"  # films of both classes: {NORMAL,PNEUMONIA}/
    per_class: int = 100
    examples: str = "examples/xrays"
    # Other hospitals' films in other formats (PNG, large colour JPEGs, DICOM): reported on their own,
    # for decoding; not part of the parity goals (adult films, outside the model's intended use).
    external: str | None = "../shared/data/external_cxr"
    threads: list[int] = field(default_factory=lambda: [1, 2])
    # The same films through the fp32 file, one thread: separates the page's own code (decoding, resize,
    # guard, heat map: identical in both files) from the INT8 kernels' rounding. None: skipped.
    fp32_model: str | None = "export/model.onnx"
    heatmap_films: int = 8  # per run: films whose occlusion map (~50 model runs each) is drawn and compared
    force: bool = False


def pick_films(folder: str | os.PathLike, per_class: int) -> list[str]:
    """`per_class` films of each class, evenly spaced through the sorted folder (no choice by content)."""
    films = []
    for cls in ("NORMAL", "PNEUMONIA"):
        names = sorted(p for p in (Path(folder) / cls).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        idx = np.linspace(0, len(names) - 1, min(per_class, len(names))).round().astype(int)
        films += [str(names[i]) for i in dict.fromkeys(idx)]
    return films


def run_parity(files: list[str], model: str | os.PathLike, page_dir: str | os.PathLike | None = None,
               threads: int = 1, isolate: bool = False, offline: bool = False, heatmap_films: int | None = 8) -> dict:
    """Both runtimes on `files`, heat maps on `heatmap_films` of them (evenly spaced); the browser through the
    static page (written to a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = page_dir or write_page(Path(tmp) / "page", model=model)["out"]
        with static_server(folder, isolate=isolate) as url, chromium() as browser:
            page, errors = open_page(browser, f"{url}?threads={threads}", offline=offline)
            isolated = page.evaluate("() => crossOriginIsolated")
            heat_files = spaced(files, heatmap_films)
            records = with_heatmaps(page, files, heat_files)
            version = f"Chromium {browser.version} (headless)"
    result = compare(records, python_reference(files, model, heat_files))
    heat_ms = [r["heatmap_ms"] for r in records.values() if r.get("heatmap_ms") is not None]
    ms = [r["ms"] for r in records.values() if r.get("ms") is not None]
    parts = [r["parts"] for r in records.values() if r.get("parts")][1:]
    result["timing"] = {"threads": threads, "cross_origin_isolated": isolated, **timings(ms),
                        "heatmap_films": len(heat_ms), "heatmap_ms_p50": statistics.median(heat_ms) if heat_ms else None,
                        "p50_parts_ms": {k: statistics.median(p[k] for p in parts) for k in parts[0]} if parts else None}
    result["console_errors"] = errors
    result["browser"] = version
    return result


def bench_browser(config: BrowserBenchConfig) -> dict:
    """Parity on test films and the demo examples (one thread), then ms per film with more threads."""

    refuse_existing(config.out, config.force)
    films = pick_films(config.images, config.per_class)
    examples = sorted(str(p) for p in Path(config.examples).rglob("*.jpeg"))
    external = [] if not config.external or not Path(config.external).is_dir() else sorted(
        str(p) for p in Path(config.external).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
    runs = {}
    for t in config.threads:
        stage("bench-browser", f"{t} thread{'s' if t > 1 else ''}: {len(films) + len(examples)} films")
        runs[t] = run_parity(films + examples, config.model, threads=t, isolate=t > 1,
                             heatmap_films=config.heatmap_films)
    ext = None
    if external:
        stage("bench-browser", f"external films (decoding): {len(external)}")
        rows = run_parity(external, config.model, heatmap_films=0)["films"]
        ext = {"source": config.external, **summarise(rows), "per_film": rows}
    one = runs[config.threads[0]]
    stage("bench-browser", "native onnxruntime: basic against full graph optimisation, and ms per film")
    native = native_variation(films + examples, config.model)
    native_ms = native_timing(films + examples, config.model)
    fp32 = None
    if config.fp32_model and Path(config.fp32_model).is_file():
        stage("bench-browser", f"fp32 file, 1 thread: {len(films) + len(examples)} films")
        fp32 = run_parity(films + examples, config.fp32_model, threads=1, heatmap_films=config.heatmap_films)
    demo_names = {Path(e).name for e in examples}
    result = {"model": config.model, "onnxruntime_web": ORT_VERSION,
              "browser": one["browser"], "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "films": {"test": len(films), "examples": len(examples), "source": config.images},
              "goals": GOALS, "parity": one["summary"], "goals_met": meets_goals(one["summary"]),
              "demo_examples": [f for f in one["films"] if f["file"] in demo_names],
              "per_film": one["films"],
              "timing": [runs[t]["timing"] for t in config.threads],
              "native_timing": native_ms,
              "parity_by_threads": {str(t): {k: runs[t]["summary"][k] for k in
                                             ("max_abs_delta_probability", "label_agreement", "guard_agreement",
                                              "min_heatmap_correlation")} for t in config.threads},
              "native_int8_variation": native,
              "external": ext,
              "fp32_parity": None if fp32 is None else {"model": config.fp32_model, **{
                  k: v for k, v in fp32["summary"].items() if k not in ("disagreements",)}, "timing": fp32["timing"]},
              "config": asdict(config)}
    write_json(config.out, result)
    return result



def render(result: dict) -> str:
    """A few lines for the terminal."""
    p, lines = result["parity"], []
    heat = p["min_heatmap_correlation"]
    lines.append(f"browser vs Python ({result['model']}, {p['films']} films): max |delta p| "
                 f"{p['max_abs_delta_probability']:.4f}, labels {p['label_agreement']:.2%}, guard "
                 f"{p['guard_agreement']:.2%}, heat-map correlation min "
                 f"{'-' if heat is None else f'{heat:.4f}'} on {p['heatmaps_compared']} films, "
                 f"identical input pixels {p['same_input_pixels']}/{p['films']}")
    for t in result["timing"]:
        hm = t.get("heatmap_ms_p50")
        lines.append(f"{t['threads']} thread(s), cross-origin isolated {t['cross_origin_isolated']}: "
                     f"p50 {t['p50_ms']:.1f} ms/film, p95 {t['p95_ms']:.1f} ms (load average {t['load_average_1min']})"
                     + ("" if hm is None else f"; heat map p50 {hm:.0f} ms/film"))
    n = result["native_timing"]
    lines.append(f"native Python, 1 thread: p50 {n['p50_ms']:.1f} ms/film, p95 {n['p95_ms']:.1f} ms")
    lines.append("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["goals_met"].items()))
    return "\n".join(lines)
