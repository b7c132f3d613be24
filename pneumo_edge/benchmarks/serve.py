"""Load test of `pneumo-edge serve` on loopback: throughput, latency percentiles, errors, memory growth.

    result = load_test(LoadConfig(model="export/model.int8.onnx", images="../shared/data/chest_xray/test"))

Starts the server as its own process (the command users run), sends `requests` real X-rays from `clients`
concurrent clients (each waits for its answer before sending the next), and records every status code.
Memory: the resident set of the server (all its processes) after a warm-up, and at the end.

With `slow_clients` N, the question is instead whether slow clients can starve a normal one: N connections
that each send one byte a second (half still in their headers, half in a body that never ends; each from its own
127.x address, reconnecting whenever the server cuts them off) stay open while one normal client sends its
`requests` X-rays one after the other; the result records each answer's latency and how many came within 2 s.
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

from pneumo_edge.benchmarks.variants import cpu_info
from pneumo_edge.edge.atomic import write_json
from pneumo_edge.edge.errors import BenchError
from pneumo_edge.edge.imaging import IMAGE_SUFFIXES


@dataclass
class LoadConfig:
    model: str  # what the server under test runs: an .onnx file or bundle folder
    images: str  # a folder of X-rays, sent round-robin
    requests: int = 2000
    clients: int = 8
    warmup: int = 100  # requests before the first memory reading (not timed)
    heatmap: bool = False  # ask every request for a heat map
    workers: int = 1
    threads: int | None = None
    queue: int = 16
    out: str = "bench/results"
    max_images: int = 64  # distinct files held in memory and cycled
    slow_clients: int = 0  # > 0: measure a normal client's latency while this many slow clients are connected


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
           "--port", str(port), "--workers", str(cfg.workers), "--queue", str(cfg.queue),
           # the bench's clients share one loopback address: the per-address cap would refuse all but 4 of them
           "--per-client", str(max(cfg.clients, 1))]
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx  # the [test] extra

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
    import httpx  # the [test] extra

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


SLOW_BYTE_EVERY_S = 1.0


async def _slow_client(port: int, source: str, in_headers: bool, live: list, stop: asyncio.Event) -> None:
    """One byte a second, for ever: its headers never end, or its body never does; reconnects when cut off."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(SLOW_BYTE_EVERY_S)
            continue
        live[0] += 1
        try:
            dribble = head  # headers that never end; or, once sent whole, a body that never does
            if not in_headers:
                writer.write(head + b"Content-Length: 10000000\r\n\r\n")
                dribble = b"\0" * 10_000
            for i in range(10**9):
                if stop.is_set() or reader.at_eof():
                    break
                writer.write(dribble[i % len(dribble):i % len(dribble) + 1])
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(4096), SLOW_BYTE_EVERY_S) == b"":
                        break  # the server cut it off
                    break  # it answered (408/429): the connection is over
                except asyncio.TimeoutError:
                    pass
        except OSError:
            pass
        finally:
            live[0] -= 1
            writer.close()


async def _probe_with_slow_clients(port: int, images, n: int, slow: int) -> dict:
    import httpx  # the [test] extra

    stop, live = asyncio.Event(), [0]
    tasks = [asyncio.create_task(_slow_client(port, f"127.0.{1 + i // 250}.{1 + i % 250}", i % 2 == 0, live, stop))
             for i in range(slow)]
    await asyncio.sleep(3 * SLOW_BYTE_EVERY_S)  # all connected and dribbling
    latencies, statuses, connected = [], [], []
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1")) as client:
        for i in range(n):
            name, data = images[i % len(images)]
            connected.append(live[0])
            t = time.perf_counter()
            try:
                r = await client.post(f"http://127.0.0.1:{port}/v1/predict", timeout=60,
                                      files={"file": (name, data, "application/octet-stream")})
                statuses.append(r.status_code)
            except httpx.HTTPError:
                statuses.append(-1)
            latencies.append((time.perf_counter() - t) * 1000)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = np.array(latencies)
    return {"slow_clients": slow, "slow_connected_min": min(connected), "slow_connected_median": float(np.median(connected)),
            "normal_requests": n, "status_codes": {str(c): statuses.count(c) for c in sorted(set(statuses))},
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                           "max": float(lat.max())},
            "answered_within_2s": int(sum(1 for x, c in zip(latencies, statuses) if c == 200 and x < 2000))}


def load_test(cfg: LoadConfig) -> dict:
    images = _images(cfg)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(cfg, port)
    if cfg.slow_clients:
        try:
            asyncio.run(_wait_ready(base, proc))
            probe = asyncio.run(_probe_with_slow_clients(port, images, cfg.requests, cfg.slow_clients))
        finally:
            _stop(proc)
        cpu = cpu_info()
        result = {"config": asdict(cfg), "images": f"{len(images)} files from {cfg.images}",
                  "env": {"cpu": cpu["model"], "cores": cpu["cores"], "python": platform.python_version()}, **probe}
        write_json(Path(cfg.out) / f"serve-slow{cfg.slow_clients}-{Path(cfg.model).stem.replace('.', '-')}.json", result)
        return result
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
        _stop(proc)
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


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def render(r: dict) -> str:
    lat = r["latency_ms"]
    if "slow_clients" in r:
        return (f"{r['normal_requests']} requests from a normal client while {r['slow_clients']} slow clients were "
                f"connected (at least {r['slow_connected_min']} at each request): p50 {lat['p50']:.1f} ms, "
                f"max {lat['max']:.1f} ms, {r['answered_within_2s']} answered within 2 s; "
                f"status codes {r['status_codes']}")
    return (f"{r['requests']} requests from {r['clients']} clients in {r['seconds']:.1f} s: {r['throughput_rps']:.1f} req/s, "
            f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms; status codes {r['status_codes']}; "
            f"RSS {r['rss_mb']['after_warmup']:.0f} -> {r['rss_mb']['end']:.0f} MB "
            f"({r['rss_mb']['growth_after_warmup']:+.1f} MB after warm-up)")

