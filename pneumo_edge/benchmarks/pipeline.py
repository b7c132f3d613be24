"""The whole `pneumo-edge infer` process against a bare onnxruntime session over the same images.

    r = bench_pipeline(PipelineConfig(images="../shared/data/chest_xray/test"))
    r["throughput_ratio"]      # bare seconds / infer seconds: 1.0 would mean decoding, the guard, rows and
                               # start-up cost nothing on top of the model itself

All run as whole processes (interpreter start, imports and model load included), in turn, so drift
on a shared machine hits each; the best round of each is reported. A bare session runs the INT8 file
at batch `batch_size` on a fixed random input of the model's shape and fetches the logits only: what
no pipeline can beat. The yardstick uses the session options `infer` uses (`edge.runtime`: idle
threads sleep); onnxruntime's defaults (idle threads spin) are timed too, for the record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pneumo_edge.edge.atomic import write_json, write_text
from pneumo_edge.edge.errors import BenchError
from pneumo_edge.edge.inputs import find_inputs

BARE = """
import math, os, sys
import numpy as np, onnxruntime as ort
path, n, batch, spin = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
opts = ort.SessionOptions()
opts.intra_op_num_threads = os.cpu_count() or 1
opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal((batch, *i.shape[1:])).astype(np.float32)
for k in range(math.ceil(n / batch)):
    s.run(["logits"], {i.name: x[:min(batch, n - k * batch)]})
"""
GOAL = 0.75  # infer's throughput as a share of the bare session's


@dataclass
class PipelineConfig:
    images: str  # a folder of X-rays
    model: str  # the ONNX file both run (the INT8 target)
    out: str = "bench/results"
    rounds: int = 3
    batch_size: int = 16


def _seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:4])} ... failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def bench_pipeline(cfg: PipelineConfig) -> dict:
    if not Path(cfg.images).is_dir():
        raise BenchError(f"--images '{cfg.images}' is not a folder")
    n = len(find_inputs([cfg.images]).files)
    if n == 0:
        raise BenchError(f"no image files under '{cfg.images}'")
    bare = [sys.executable, "-c", BARE, cfg.model, str(n), str(cfg.batch_size)]
    load = os.getloadavg()  # the box is shared: what else ran is part of the result
    runs: dict[str, list[float]] = {"bare_session": [], "bare_session_spinning": [], "infer": []}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"bare_session": [*bare, "0"], "bare_session_spinning": [*bare, "1"],
                    "infer": [sys.executable, "-m", "pneumo_edge", "infer", cfg.images, "--model", cfg.model,
                              "--out", str(Path(tmp) / "rows.csv"), "--force", "--batch-size", str(cfg.batch_size),
                              "-q"]}
        for _ in range(cfg.rounds):
            for name, cmd in commands.items():
                runs[name].append(_seconds(cmd))
    best = {k: min(v) for k, v in runs.items()}
    ratio = best["bare_session"] / best["infer"]
    result = {"config": asdict(cfg), "images": n, "seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
              "best_seconds": {k: round(v, 3) for k, v in best.items()},
              "images_per_s": {k: round(n / v, 1) for k, v in best.items()},
              "throughput_ratio": round(ratio, 3), "goal": GOAL, "met": ratio >= GOAL,
              "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load]}}
    out = Path(cfg.out)
    write_json(out / "pipeline.json", result)
    write_text(out / "pipeline.md", render(result) + "\n")
    return result


def render(r: dict) -> str:
    b, ips = r["best_seconds"], r["images_per_s"]
    return (f"Whole processes over {r['images']} images, best of {r['config']['rounds']} alternating rounds: "
            f"`pneumo-edge infer` {b['infer']:.2f} s ({ips['infer']} images/s, decoding, guard and rows included) "
            f"against a bare INT8 onnxruntime session at batch {r['config']['batch_size']} {b['bare_session']:.2f} s "
            f"({ips['bare_session']} images/s, idle threads sleeping as in infer; "
            f"{b['bare_session_spinning']:.2f} s with onnxruntime's default spinning): infer reaches "
            f"{r['throughput_ratio']:.2f} of the bare session's throughput (goal >= {r['goal']}: "
            f"{'met' if r['met'] else 'missed'}; {r['machine']['cpus']} CPUs, load average "
            f"{r['machine']['load_average_at_start'][0]} at the start).")
