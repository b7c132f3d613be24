"""The two inference engines side by side, and what a cluster run of an archive would take.

    result = bench_engines(EnginesConfig(folder="../shared/data/chest_xray/test", model="export/model.int8.onnx"))

Measured here: `infer` with the local engine and with `--engine ray` in local mode over the same
folder (alternating, so drift on a shared machine hits both), Ray's start-up until the first rows,
and the per-image cost of the parts that set a cluster's rate: decoding (the test JPEGs and the
real DICOMs in ../shared/data/external_cxr) and one onnxruntime thread classifying a batch.
Estimated from those: how long a 10-million-image archive takes on N cores. The estimate is
labelled as one in every output.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumo_edge.edge.atomic import write_json, write_text
from pneumo_edge.edge.cluster import (
    ClusterConfig,
    ParquetOutputs,
    predict_cluster,
    start_ray,
)
from pneumo_edge.edge.errors import BenchError
from pneumo_edge.edge.imaging import SUFFIX_FORMATS, load_image
from pneumo_edge.edge.infer import InferConfig, predict_paths
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.outputs import Outputs
from pneumo_edge.edge.progress import stage


@dataclass
class EnginesConfig:
    folder: str  # the X-rays both engines classify
    model: str  # the ONNX file both run
    dicoms: str = "../shared/data/external_cxr"  # real DICOMs for the decode cost; skipped if absent
    out: str = "bench/results"
    rounds: int = 2  # local, ray, local, ray, ...
    archive: int = 10_000_000  # images in the worked estimate
    cores: tuple[int, ...] = (16, 64, 256)


def _per_image_ms(fn, items: list, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best * 1000


def decode_costs(folder: str, dicoms: str, size: int) -> dict:

    films = sorted(p for p in Path(folder).rglob("*") if SUFFIX_FORMATS.get(p.suffix.lower()) not in (None, "DICOM"))
    films = films[:100]
    if not films:
        raise BenchError(f"no image files (other than DICOM) under '{folder}'")
    out = {"folder": {"files": len(films), "mean_bytes": int(np.mean([p.stat().st_size for p in films])),
                      "ms_per_image": round(_per_image_ms(lambda p: load_image(p, size=size), films), 3),
                      "note": "the first 100 images of the benchmarked folder"}}
    real = [p for p in sorted(Path(dicoms).glob("*.dcm"))] if Path(dicoms).is_dir() else []
    if real:
        out["dicom"] = {"files": len(real), "mean_bytes": int(np.mean([p.stat().st_size for p in real])),
                        "ms_per_image": round(_per_image_ms(lambda p: load_image(p, size=size), real), 3),
                        "note": "the real (JPEG-compressed) DICOMs of external_cxr"}
    return out


def classify_cost(model_path: str) -> dict:
    """ms per image for one onnxruntime thread on batches of 16: one actor's rate."""
    m = EdgeModel(model_path, threads=1)
    s = m.spec
    x = np.random.default_rng(0).normal(0, 1, (16, s.channels, s.size, s.size)).astype(np.float32)
    m.run(x)
    ms = _per_image_ms(lambda _: m.run(x), [0] * 10) / 16
    return {"threads": 1, "batch": 16, "ms_per_image": round(ms, 3)}


def _run_local(folder: str, model, tmp: Path, n: int) -> dict:

    with Outputs(tmp / f"local{n}.csv") as out:
        s = predict_paths([folder], model, out, InferConfig(progress=False))
    return {"files": s.n_files, "seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_s, 1)}


def _run_ray(folder: str, model_path: str, tmp: Path, n: int) -> dict:
    with ParquetOutputs(tmp / f"ray{n}.parquet") as out:
        s = predict_cluster([folder], model_path, out, ClusterConfig(), progress=False)
    return {"files": s.n_files, "seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_s, 1),
            "first_rows_after_s": round(s.first_result_seconds or 0.0, 2)}


def bench_engines(cfg: EnginesConfig) -> dict:

    model = EdgeModel(cfg.model)
    cores = os.cpu_count() or 1
    t = time.perf_counter()
    ray = start_ray(None)
    ray_start = time.perf_counter() - t
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(cfg.rounds):
            stage("bench-engines", f"round {n + 1}/{cfg.rounds}: local engine, then Ray in local mode")
            runs["local"].append(_run_local(cfg.folder, model, Path(tmp), n))
            runs["ray"].append(_run_ray(cfg.folder, cfg.model, Path(tmp), n))
    stage("bench-engines", "decode and classify costs per image")
    result = {"config": asdict(cfg), "cores": cores, "ray_version": ray.__version__,
              "ray_cpus": ray.cluster_resources().get("CPU"), "ray_init_seconds": round(ray_start, 2),
              "runs": runs, "decode": decode_costs(cfg.folder, cfg.dicoms, model.spec.size),
              "classify": classify_cost(cfg.model)}
    result["estimate"] = estimate(result, cfg)
    out = Path(cfg.out)
    write_json(out / "engines.json", result)
    write_text(out / "engines.md", render(result))
    return result


def estimate(r: dict, cfg: EnginesConfig) -> dict:
    """Hours for the archive on N cores: one core decodes and classifies one image at a time (ESTIMATE)."""
    classify = r["classify"]["ms_per_image"]
    per_core = {kind: 1000 / (d["ms_per_image"] + classify) for kind, d in r["decode"].items()}
    hours = {kind: {str(c): round(cfg.archive / (rate * c) / 3600, 2) for c in cfg.cores} for kind, rate in per_core.items()}
    return {"kind": "estimate, not measured", "archive_images": cfg.archive,
            "images_per_s_per_core": {k: round(v, 1) for k, v in per_core.items()}, "hours_by_cores": hours,
            "assumes": "throughput grows linearly with cores (independent images, no shared state) until storage "
                       "reads bind: bytes per image x images/s must stay under the store's bandwidth"}


def render(r: dict) -> str:
    best = {k: max(v, key=lambda x: x["images_per_s"]) for k, v in r["runs"].items()}
    lo, ra = best["local"], best["ray"]
    lines = [f"Engines on {lo['files']} files ({r['config']['folder']}), {r['config']['model']}, {r['cores']} cores "
             f"(measured, best of {r['config']['rounds']} alternating rounds):", "",
             "| engine | seconds | images/s | first rows after |", "|---|---|---|---|",
             f"| local (threads) | {lo['seconds']:.2f} | {lo['images_per_s']:.1f} | - |",
             f"| ray, local mode ({r['ray_cpus']:.0f} CPUs) | {ra['seconds']:.2f} | {ra['images_per_s']:.1f} | "
             f"{ra['first_rows_after_s']:.2f} s |", "",
             f"Ray on one node: {ra['images_per_s'] / lo['images_per_s']:.2f}x the local engine's rate; Ray itself "
             f"started in {r['ray_init_seconds']:.1f} s (not in the table).", ""]
    for kind, d in r["decode"].items():
        lines.append(f"Decode {kind} ({d['files']} files, mean {d['mean_bytes'] / 1e3:.0f} kB): "
                     f"{d['ms_per_image']:.2f} ms per image (measured, one thread).")
    lines.append(f"Classify: {r['classify']['ms_per_image']:.2f} ms per image (measured, one onnxruntime thread, "
                 "batch 16).")
    e = r["estimate"]
    lines += ["", f"ESTIMATE for {e['archive_images']:,} images ({e['assumes']}):", "",
              "| input | images/s per core | " + " | ".join(f"hours on {c} cores" for c in r["config"]["cores"]) + " |",
              "|---|---|" + "---|" * len(r["config"]["cores"])]
    for kind, hours in e["hours_by_cores"].items():
        lines.append(f"| {kind} | {e['images_per_s_per_core'][kind]:.1f} | " + " | ".join(f"{h:.1f}" for h in hours.values())
                     + " |")
    return "\n".join(lines) + "\n"
