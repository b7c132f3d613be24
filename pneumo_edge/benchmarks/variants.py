"""Latency, throughput and accuracy of every runtime variant, measured in one run.

    results = run_benchmark(BenchConfig(bundle="export"))

Variants: PyTorch eager fp32 (channels_last), onnxruntime fp32, onnxruntime INT8,
each at batch 1 and 16 with 1 and 2 threads, on real test images. Beside each
speed: that variant's ROC-AUC and accuracy on the same images, its size, the
speed-up over PyTorch eager, and how far it is from the machine's compute floor.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from pneumo_edge.edge.atomic import write_json, write_text
from pneumo_edge.edge.errors import BenchError
from pneumo_edge.edge.imaging import normalize
from pneumo_edge.edge.infer import InferConfig, predict_paths
from pneumo_edge.edge.meta import META_KEY, read_meta
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.outputs import Outputs
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.targets import FP32, INT8, TARGETS, WEIGHTS
from pneumo_edge.site.metrics import binary_metrics, prob_from_logits
from pneumo_edge.site.plots import latency_plot
from pneumo_edge.train.data import LABELS, Sample, decode_all, load_splits


@dataclass
class BenchConfig:
    bundle: str = "export"  # folder with model.onnx, model.int8.onnx, model.safetensors + config.json
    data: str | None = None  # local dataset root or hub id whose test split is timed; None: fallback_images
    fallback_images: str = "examples/xrays"  # committed X-rays when no dataset is present
    out: str = "bench/results"
    iters: int = 200  # timed batch-1 calls per variant
    batch_iters: int = 25  # timed batch-16 calls per variant
    warmup: int = 10
    threads: tuple[int, ...] = (1, 2)
    batches: tuple[int, ...] = (1, 16)
    end_to_end: bool = True
    min_auroc: float | None = None
    max_p50_ms: float | None = None  # applies to the INT8 batch-1 row at the most threads
    ledger: str | None = "test_ledger.jsonl"  # the test split's labels are read (ROC-AUC beside the timings)


# ---------------------------------------------------------------- environment

def cpu_info() -> dict:
    model, flags, mhz = platform.processor() or "unknown", set(), 0.0
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
        mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", text).group(1))
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # fp32 FLOPs per cycle per core: two FMA units of 16 (AVX-512) or 8 (AVX2) lanes, 2 FLOPs each.
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    int8_factor = 4 if flags & {"avx512_vnni", "avx_vnni"} else 2
    return {"model": model, "cores": cores, "mhz": mhz, "isa": "avx512" if lanes == 16 else "avx2" if lanes == 8 else "sse",
            "vnni": int8_factor == 4, "peak_fp32_gflops_per_core": 2 * 2 * lanes * mhz / 1000,
            "int8_factor": int8_factor}


def env_slug(cpu: dict) -> str:
    try:
        import torch

        tv = torch.__version__.split("+")[0]
    except ImportError:
        tv = "none"
    name = re.sub(r"[^a-z0-9]+", "-", cpu["model"].lower()).strip("-")
    name = re.sub(r"-?(r|tm|processor|cpu)-", "-", f"-{name}-").strip("-")
    return f"{name}-{cpu['cores']}c-ort{onnxruntime.__version__}-torch{tv}"


def count_macs(model, size: int, channels: int = 1) -> int:
    """Multiply-accumulates of one forward pass: convolutions and linear layers."""
    import torch  # torch: training side only, kept off the light install
    from torch import nn  # torch: training side only, kept off the light install

    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


# ---------------------------------------------------------------- timing

def time_calls(fn, x: np.ndarray, iters: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn(x)
    out = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        fn(x)
        out[i] = time.perf_counter() - t
    return out * 1000.0


def _torch_runner(model, threads: int):
    import torch  # torch: training side only, kept off the light install

    def run(x):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    return run


def _ort_runner(path: Path, threads: int):
    m = EdgeModel(path, threads=threads)
    return lambda x: m.run(x)["logits"]


def load_images(cfg: BenchConfig, size: int, rule: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Real test images and labels; the committed X-rays (labels from folder names) when no data is named."""
    if cfg.data:  # a folder or a hub id, like every other --data
        x, y, _ = decode_all(load_splits(cfg.data).test, size, progress=False, rule=rule)
        if cfg.ledger:  # a read of the test split (labels included): recorded as soon as it is made
            from pneumo_edge.train.evaluate import append_ledger  # torch: the training side, only when it runs

            append_ledger(cfg.ledger, {"kind": "latency benchmark", "data": str(cfg.data), "n_test": len(x),
                                       "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                       "note": "timings; ROC-AUC and accuracy reported beside them; nothing chosen"})
        return x, y, f"test split of {cfg.data} ({len(x)} images)"
    files = sorted(p for p in Path(cfg.fallback_images).rglob("*") if p.is_file() and not p.name.endswith(".md"))
    if not files:
        raise BenchError(f"no images: neither dataset '{cfg.data}' nor '{cfg.fallback_images}' exists")
    labels = [LABELS.index(p.parent.name) if p.parent.name in LABELS else 0 for p in files]
    samples = [Sample(name=p.name, label=lab, path=str(p)) for p, lab in zip(files, labels)]
    x, y, _ = decode_all(samples, size, progress=False, rule=rule)
    has_labels = all(p.parent.name in LABELS for p in files)
    return x, (y if has_labels else None), f"{len(x)} committed X-rays in {cfg.fallback_images}"


def run_benchmark(cfg: BenchConfig) -> dict:
    from pneumo_edge.train.checkpoint import (
        load_checkpoint,  # torch: training side only, kept off the light install
    )

    bundle = Path(cfg.bundle)
    model, config = load_checkpoint(bundle)
    import torch  # torch: training side only, kept off the light install

    model = model.to(memory_format=torch.channels_last).eval()
    meta = read_meta(bundle / FP32.file)  # the decision rule travels in the ONNX file
    spec, threshold, temperature = meta.preprocess, meta.threshold, meta.temperature
    resized, y, source = load_images(cfg, spec.size, spec.resize)
    x_all = normalize(resized, spec)
    print(f"images: {source}")

    cpu = cpu_info()
    macs = count_macs(model, spec.size, spec.channels)
    variants = {"pytorch-eager-fp32": ("torch", bundle / WEIGHTS),
                **{f"onnxruntime-{t.name}": ("ort", bundle / t.file) for t in TARGETS}}
    rows = []
    for name, (kind, path) in variants.items():
        if not path.is_file():
            print(f"skipping {name}: {path} missing")
            continue
        stage("bench", f"{name}: accuracy on {len(x_all)} images, then timing")
        # Accuracy of this variant on the same images (batched, all threads).
        runner = _torch_runner(model, cpu["cores"]) if kind == "torch" else _ort_runner(path, cpu["cores"])
        logits = np.concatenate([runner(x_all[i:i + 32]) for i in range(0, len(x_all), 32)])
        p = prob_from_logits(logits, temperature)
        acc = binary_metrics(y, p, threshold) if y is not None and len(np.unique(y)) == 2 else None
        size_mb = path.stat().st_size / 1e6
        for threads in cfg.threads:
            runner = _torch_runner(model, threads) if kind == "torch" else _ort_runner(path, threads)
            for batch in cfg.batches:
                x = np.ascontiguousarray(np.resize(x_all, (batch, *x_all.shape[1:])))
                iters = cfg.iters if batch == 1 else cfg.batch_iters
                ms = time_calls(runner, x, iters, cfg.warmup)
                peak = cpu["peak_fp32_gflops_per_core"] * threads * (cpu["int8_factor"] if "int8" in name else 1)
                floor_ms = 2 * macs * batch / (peak * 1e9) * 1000
                rows.append({
                    "variant": name, "threads": threads, "batch": batch, "iters": iters,
                    "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                    "p99_ms": float(np.percentile(ms, 99)), "images_per_s": batch * 1000 / float(np.median(ms)),
                    "size_mb": round(size_mb, 2), "roc_auc": acc["roc_auc"] if acc else None,
                    "accuracy": acc["accuracy"] if acc else None, "floor_ms": floor_ms,
                    "x_floor": float(np.percentile(ms, 50)) / floor_ms,
                })
                print(_row_line(rows[-1]))
    for r in rows:  # speed-up against PyTorch eager with the same threads and batch, same run
        ref = next((q for q in rows if q["variant"] == "pytorch-eager-fp32" and q["threads"] == r["threads"]
                    and q["batch"] == r["batch"]), None)
        r["speedup_vs_eager"] = ref["p50_ms"] / r["p50_ms"] if ref else None

    extra = extras(cfg, bundle, x_all, resized, cpu)

    result = {"env": {**cpu, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                      "python": platform.python_version()},
              "images": source, "model": config["model"], "input_size": spec.size, "macs": macs,
              "rows": rows, **extra}
    slug = env_slug(cpu)
    out = Path(cfg.out)
    write_json(out / f"{slug}.json", result)
    write_text(out / f"{slug}.md", render_table(result))
    _plot(result, out / f"{slug}.png")
    print(render_table(result))
    _check_minimums(cfg, rows)
    return result


def extras(cfg: BenchConfig, bundle: Path, x_all: np.ndarray, resized: np.ndarray, cpu: dict) -> dict:
    """What the table's rows leave out: the features output's cost, the guard's, and infer end to end."""

    extra: dict = {}
    if (bundle / FP32.file).is_file():
        extra["features_output"] = features_output_cost(bundle / FP32.file, x_all[:1], cfg, cpu["cores"])
        print(_features_line(extra["features_output"]))
    int8 = EdgeModel(bundle / INT8.file) if (bundle / INT8.file).is_file() else None
    guard_model = int8 or EdgeModel(bundle / FP32.file)
    if guard_model.guard is not None:  # the OOD guard's own cost per image
        emb = guard_model.run(x_all[:16])["embedding"]
        ms = time_calls(lambda _: guard_model.guard.scores(resized[:1], emb[:1]), None, cfg.iters, cfg.warmup)
        extra["ood_guard_p50_ms_per_image"] = float(np.percentile(ms, 50))
    if cfg.end_to_end and cfg.data and Path(cfg.data).is_dir():
        import tempfile

        folder = Path(cfg.data) / "test"
        for name in (t.file for t in reversed(TARGETS)):  # the fastest first
            if (bundle / name).is_file():
                stage("bench", f"end to end: pneumo-edge infer over {folder} with {name}")
                with tempfile.TemporaryDirectory() as tmp, Outputs(Path(tmp) / "p.csv") as out:
                    s = predict_paths([str(folder)], EdgeModel(bundle / name), out, InferConfig(progress=False))
                extra[f"end_to_end_{name}"] = {"images": s.n_files, "seconds": s.seconds,
                                               "images_per_s": s.images_per_s}
                print(f"end to end infer with {name}: {s.n_files} files at {s.images_per_s:.1f} images/s")

    return extra


def features_output_cost(path: Path, x: np.ndarray, cfg: BenchConfig, threads: int, rounds: int = 5) -> dict:
    """Batch-1 fp32 latency of the graph with its heat-map output 'features' vs the same graph without it.

    Three ways, timed in alternating rounds on one input: the graph without the output (as exported before
    heat maps), the graph with it when only logits and embedding are fetched (plain inference), and when
    the feature map is fetched too (heat maps).
    """

    import onnx  # the [train] extra (onnx), only when this runs


    proto = onnx.load(str(path))
    if "features" not in [o.name for o in proto.graph.output]:
        return {"available": False, "reason": f"{path.name} has no 'features' output"}
    keep = [o for o in proto.graph.output if o.name != "features"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    for prop in proto.metadata_props:  # the metadata of a file without heat maps
        if prop.key == META_KEY:
            meta = json.loads(prop.value)
            meta.pop("cam", None)
            meta.get("outputs", {}).pop("features", None)
            prop.value = json.dumps(meta, sort_keys=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(proto, str(Path(tmp) / "without.onnx"))
        without, with_ = EdgeModel(Path(tmp) / "without.onnx", threads=threads), EdgeModel(path, threads=threads)
    runs = {"without_output": lambda a: without.run(a),
            "with_output_not_fetched": lambda a: with_.run(a, with_.predict_outputs),
            "with_output_fetched": lambda a: with_.run(a)}
    times: dict[str, list] = {k: [] for k in runs}
    per_round = max(1, cfg.iters // rounds)
    for _ in range(rounds):  # alternate, so that drift in machine load hits every variant alike
        for k, fn in runs.items():
            times[k].append(time_calls(fn, x, per_round, max(1, cfg.warmup // rounds)))
    p50 = {k: float(np.percentile(np.concatenate(v), 50)) for k, v in times.items()}
    base = p50["without_output"]
    return {"available": True, "threads": threads, "batch": 1, "iters": per_round * rounds,
            "p50_ms": p50, "ratio_not_fetched": p50["with_output_not_fetched"] / base,
            "ratio_fetched": p50["with_output_fetched"] / base, "goal_max_ratio": 1.05}


def _features_line(f: dict) -> str:
    if not f.get("available"):
        return f"Heat-map output cost: not measured ({f.get('reason', 'no features output')})."
    p = f["p50_ms"]
    verdict = "met" if f["ratio_not_fetched"] <= f["goal_max_ratio"] else "**missed**"
    return (f"Heat-map output 'features' (fp32, batch 1, {f['threads']} threads, p50): graph without it "
            f"{p['without_output']:.2f} ms, with it {p['with_output_not_fetched']:.2f} ms "
            f"(x{f['ratio_not_fetched']:.3f}; goal <= x{f['goal_max_ratio']:.2f}: {verdict}), "
            f"with the feature map fetched for heat maps {p['with_output_fetched']:.2f} ms (x{f['ratio_fetched']:.3f}).")


def _row_line(r: dict) -> str:
    auc = f"{r['roc_auc']:.4f}" if r["roc_auc"] is not None else "  -   "
    return (f"{r['variant']:<20} t={r['threads']} b={r['batch']:<3} p50 {r['p50_ms']:8.2f} ms  "
            f"p95 {r['p95_ms']:8.2f}  {r['images_per_s']:8.1f} img/s  AUROC {auc}")


def render_table(res: dict) -> str:
    e = res["env"]
    lines = [f"Benchmark: {res['model']} @ {res['input_size']} px on {e['model']} ({e['cores']} cores, {e['isa']}"
             f"{', VNNI' if e['vnni'] else ''}), onnxruntime {e['onnxruntime']}, torch {e['torch']}.",
             f"Images: {res['images']}. {res['macs'] / 1e6:.0f} M multiply-accumulates per image.", "",
             "| variant | threads | batch | p50 ms | p95 ms | p99 ms | images/s | speed-up vs eager | size MB | ROC-AUC | accuracy | compute floor ms | x floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
    for r in res["rows"]:
        lines.append(f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['images_per_s']:.1f} | {f(r['speedup_vs_eager'], '.2f')}x | "
                     f"{r['size_mb']:.1f} | {f(r['roc_auc'], '.4f')} | {f(r['accuracy'], '.4f')} | "
                     f"{r['floor_ms']:.2f} | {r['x_floor']:.1f} |")
    for k, v in res.items():
        if k.startswith("end_to_end_"):
            lines.append(f"\nEnd to end `pneumo-edge infer` with {k[11:]}: {v['images']} files in "
                         f"{v['seconds']:.2f} s = {v['images_per_s']:.1f} images/s (decode included).")
    lines += _goals(res)
    if res.get("features_output", {}).get("available"):
        lines.append("\n" + _features_line(res["features_output"]))
    if "ood_guard_p50_ms_per_image" in res:
        lines.append(f"\nOOD guard cost: {res['ood_guard_p50_ms_per_image']:.3f} ms per image (p50, numpy).")
    return "\n".join(lines) + "\n"


def _goals(res: dict) -> list[str]:
    """The project's speed goals, checked against this run (batch 1, most threads)."""
    rows = res["rows"]
    if not rows:
        return []
    t = max(r["threads"] for r in rows)
    p50 = {r["variant"]: r["p50_ms"] for r in rows if r["batch"] == 1 and r["threads"] == t}
    auc = {r["variant"]: r["roc_auc"] for r in rows if r["batch"] == 1 and r["threads"] == t}
    out = ["", f"Goals (batch 1, {t} threads):"]
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    if {"pytorch-eager-fp32", "onnxruntime-fp32"} <= set(p50):
        r = p50["onnxruntime-fp32"] / p50["pytorch-eager-fp32"]
        out.append(f"- onnxruntime fp32 p50 / PyTorch eager p50 = {r:.2f} (goal <= 0.33): {verdict(r <= 1 / 3)}")
    if {"onnxruntime-fp32", "onnxruntime-int8"} <= set(p50):
        r = p50["onnxruntime-int8"] / p50["onnxruntime-fp32"]
        out.append(f"- INT8 p50 / fp32 p50 = {r:.2f} (goal <= 0.60): {verdict(r <= 0.6)}")
        if auc["onnxruntime-int8"] is not None:
            d = auc["onnxruntime-int8"] - auc["onnxruntime-fp32"]
            out.append(f"- INT8 ROC-AUC - fp32 ROC-AUC = {d:+.4f} (goal within 0.005): {verdict(abs(d) <= 0.005)}")
    e2e = res.get("end_to_end_model.int8.onnx")
    if e2e:
        out.append(f"- end-to-end infer with INT8 = {e2e['images_per_s']:.0f} images/s (goal >= 150): "
                   f"{verdict(e2e['images_per_s'] >= 150)}")
    return out


def _plot(res: dict, path: Path) -> Path:
    return latency_plot(res["rows"], path, f"{res['model']} @ {res['input_size']} px, {res['env']['model']} "
                                           f"({res['env']['cores']} cores)")


def replot(result_json: str | Path) -> Path:
    """Redraw a stored benchmark's chart (the .png beside its .json) without timing anything again."""
    path = Path(result_json)
    return _plot(json.loads(path.read_text()), path.with_suffix(".png"))


def _check_minimums(cfg: BenchConfig, rows: list[dict]) -> None:
    failures = []
    if cfg.min_auroc is not None:
        for r in rows:
            if r["roc_auc"] is not None and r["roc_auc"] < cfg.min_auroc:
                failures.append(f"{r['variant']}: ROC-AUC {r['roc_auc']:.4f} < {cfg.min_auroc}")
    if cfg.max_p50_ms is not None:
        cand = [r for r in rows if r["variant"] == "onnxruntime-int8" and r["batch"] == 1]
        if cand:
            r = max(cand, key=lambda q: q["threads"])
            if r["p50_ms"] > cfg.max_p50_ms:
                failures.append(f"INT8 batch-1 p50 {r['p50_ms']:.2f} ms > {cfg.max_p50_ms} ms")
    if failures:
        raise BenchError("benchmark minimums not met: " + "; ".join(sorted(set(failures))))

