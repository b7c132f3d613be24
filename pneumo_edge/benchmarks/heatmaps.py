"""Cost of each edge heat-map method per film, one film at a time (as `explain`, the API and `serve` draw them).

    pneumo-edge bench-heatmaps --bundle export --images examples/xrays   # -> bench/results/heatmaps.json
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pneumo_edge.benchmarks.variants import cpu_info
from pneumo_edge.edge.atomic import write_json
from pneumo_edge.edge.heatmap import FOLDER, METHODS, SHIPPED
from pneumo_edge.edge.imaging import load_image, resize_gray
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.progress import track
from pneumo_edge.edge.targets import FP32, INT8

FILES = (INT8.file, FP32.file)


def film_set(images: str | Path, size: int, rule: str, n: int) -> np.ndarray:
    paths = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    if not paths:
        from pneumo_edge.edge.errors import DataError

        raise DataError(f"no JPEG or PNG films under '{images}'")
    return np.stack([resize_gray(load_image(p, size=size)[0], size, rule) for p in paths])


def bench_heatmaps(bundle: str | Path = "export", images: str | Path = "examples/xrays",
                   out: str | Path = "bench/results/heatmaps.json", n_films: int = 16, rounds: int = 2,
                   threads: int = 2, progress: bool = True) -> dict:
    """p50 / p95 ms per film of every edge method on each model file; the first call per method is warm-up."""

    rows = []
    for fname in FILES:
        model = EdgeModel(Path(bundle) / fname, threads=threads)
        films = film_set(images, model.spec.size, model.spec.resize, n_films)
        for name, m in track(METHODS.items(), len(METHODS), f"heat maps {fname}", unit="method", enabled=progress):
            if m.needs_features and model.cam is None:
                continue
            m.film_map(model, films[0])  # warm-up
            times = []
            for _ in range(rounds):
                for f in films:
                    t0 = time.perf_counter()
                    m.film_map(model, f)
                    times.append((time.perf_counter() - t0) * 1000)
            rows.append({"file": fname, "method": name, "passes": m.passes, "threads": threads, "films": len(films),
                         "p50_ms": round(float(np.median(times)), 1),
                         "p95_ms": round(float(np.quantile(times, 0.95)), 1)})
    result = {"cpu": cpu_info(), "images": str(images), "shipped": SHIPPED, "folder": FOLDER, "rows": rows}
    write_json(out, result)
    return result


def render(result: dict) -> str:
    """Markdown lines for README: each method's cost per film on INT8 and fp32."""
    by = {(r["method"], r["file"]): r for r in result["rows"]}
    lines = [f"Cost per film, one film at a time, {result['rows'][0]['threads']} threads "
             f"({result['cpu'].get('model', 'CPU')}, `make bench`, `bench/results/heatmaps.json`):", "",
             "| method | passes | INT8 p50 ms | INT8 p95 ms | fp32 p50 ms |", "|---|---|---|---|---|"]
    for name in METHODS:
        q, f = by.get((name, FILES[0])), by.get((name, FILES[1]))
        if q is None:
            continue
        mark = " (shipped)" if name == result["shipped"] else ""
        lines.append(f"| {name}{mark} | {q['passes']} | {q['p50_ms']} | {q['p95_ms']} | {f['p50_ms'] if f else '-'} |")
    return "\n".join(lines)
