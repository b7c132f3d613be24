"""Load test of `pneumo-edge serve` on loopback: throughput, latency percentiles, errors, memory growth.

    result = load_test(LoadConfig(model="export/model.int8.onnx", images="../shared/data/chest_xray/test"))

Starts the server as its own process (the command users run), sends `requests` real X-rays from `clients`
concurrent clients (each waits for its answer before sending the next), and records every status code.
Memory: the resident set of the server (all its processes) after a warm-up, and at the end.
"""

from __future__ import annotations

import asyncio
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .edge.atomic import write_json
from .edge.errors import BenchError
from .edge.imaging import IMAGE_SUFFIXES


@dataclass
class LoadConfig:
    model: str = "export/model.int8.onnx"
    images: str = "../shared/data/chest_xray/test"  # a folder of X-rays, sent round-robin
    requests: int = 2000
    clients: int = 8
    warmup: int = 100  # requests before the first memory reading (not timed)
    heatmap: bool = False  # ask every request for a heat map
    workers: int = 1
    threads: int | None = None
    queue: int = 16
    out: str = "bench/results"
    max_images: int = 64  # distinct files held in memory and cycled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), MB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _images(cfg: LoadConfig) -> list[tuple[str, bytes]]:
    files = sorted(p for p in Path(cfg.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BenchError(f"no images under '{cfg.images}'")
    step = max(1, len(files) // cfg.max_images)
    return [(p.name, p.read_bytes()) for p in files[::step][:cfg.max_images]]


def _start(cfg: LoadConfig, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from pneumo_edge.cli import main; main()", "serve", "--model", cfg.model,
           "--port", str(port), "--workers", str(cfg.workers), "--queue", str(cfg.queue)]
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the server exited: {proc.stderr.read()[-500:]}")
            try:
                if (await client.get(f"{base}/healthz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the server did not become ready")
            await asyncio.sleep(0.25)


async def _drive(base: str, images, n: int, clients: int, heatmap: bool, offset: int = 0) -> tuple[list, list]:
    import httpx

    url = f"{base}/v1/predict" + ("?heatmap=1" if heatmap else "")
    latencies: list[float] = []
    statuses: list[int] = []
    counter = iter(range(n))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in counter:
            name, data = images[(i + offset) % len(images)]
            t = time.perf_counter()
            try:
                r = await client.post(url, files={"file": (name, data, "application/octet-stream")}, timeout=120)
                status = r.status_code
                if status == 200:
                    r.json()
            except httpx.HTTPError:
                status = -1
            latencies.append((time.perf_counter() - t) * 1000)
            statuses.append(status)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return latencies, statuses


def load_test(cfg: LoadConfig) -> dict:
    from .bench import cpu_info

    images = _images(cfg)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(cfg, port)
    try:
        asyncio.run(_wait_ready(base, proc))
        rss_start = rss_mb(proc.pid)
        _, warm = asyncio.run(_drive(base, images, cfg.warmup, cfg.clients, cfg.heatmap))
        rss_warm = rss_mb(proc.pid)
        t0 = time.perf_counter()
        lat, statuses = asyncio.run(_drive(base, images, cfg.requests, cfg.clients, cfg.heatmap, cfg.warmup))
        seconds = time.perf_counter() - t0
        rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat_a = np.array(lat)
    codes = {str(c): statuses.count(c) for c in sorted(set(statuses))}
    cpu = cpu_info()
    result = {
        "config": asdict(cfg), "images": f"{len(images)} files from {cfg.images}",
        "env": {"cpu": cpu["model"], "cores": cpu["cores"], "python": platform.python_version()},
        "requests": len(statuses), "clients": cfg.clients, "seconds": seconds,
        "throughput_rps": len(statuses) / seconds,
        "latency_ms": {"p50": float(np.percentile(lat_a, 50)), "p95": float(np.percentile(lat_a, 95)),
                       "p99": float(np.percentile(lat_a, 99)), "max": float(lat_a.max())},
        "status_codes": codes, "errors": len(statuses) - statuses.count(200),
        "warmup_errors": len(warm) - warm.count(200),
        "rss_mb": {"after_start": rss_start, "after_warmup": rss_warm, "end": rss_end,
                   "growth_after_warmup": rss_end - rss_warm},
    }
    name = f"serve-{'heatmap-' if cfg.heatmap else ''}{Path(cfg.model).stem.replace('.', '-')}-w{cfg.workers}-c{cfg.clients}"
    write_json(Path(cfg.out) / f"{name}.json", result)
    return result


def render(r: dict) -> str:
    lat = r["latency_ms"]
    return (f"{r['requests']} requests from {r['clients']} clients in {r['seconds']:.1f} s: {r['throughput_rps']:.1f} req/s, "
            f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms; status codes {r['status_codes']}; "
            f"RSS {r['rss_mb']['after_warmup']:.0f} -> {r['rss_mb']['end']:.0f} MB "
            f"({r['rss_mb']['growth_after_warmup']:+.1f} MB after warm-up)")

