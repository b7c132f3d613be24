"""`pneumo-edge bench-node`: films through the DICOM node to a PACS, timed end to end.

    result = bench_node(NodeBenchConfig(n=200))     # writes bench/results/node.json (node-2-senders.json: senders=2)

A real chain on loopback: dcmtk's storescu sends `n` JPEG-baseline CR films (this dataset's own JPEGs,
wrapped unchanged) to `pneumo-edge listen`, running as a process of its own, which sends an SR per film
to a throw-away Orthanc. `senders` storescu processes share the films, each in one association, as that
many modalities sending at once: one association is one film at a time, each answered only once the node
has it on disk (fsynced), so one sender measures the sender's pace as much as the node's. From the node's audit log:
  - throughput: films / (last SR stored in Orthanc - first film received);
  - latency per film: from the end of its C-STORE (the spooled file's time, just before "success" goes
    back) to Orthanc's success for its SR, p50 and p95;
  - the split of that time: decode + model + guard, building and encoding the SR, the C-STORE to Orthanc,
    and the rest (waiting in the queues behind other films, spool fsyncs);
and the node's peak resident memory (the kernel's high-water mark, VmHWM).
NodeProcess and storescu are also what tests/node/test_node.py drives.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumo_edge.edge.api import resolve_model
from pneumo_edge.edge.atomic import write_json
from pneumo_edge.edge.errors import PneumoEdgeError
from pneumo_edge.edge.node import audit
from pneumo_edge.edge.progress import stage
from pneumo_edge.testing.dicomfilm import write_film
from pneumo_edge.testing.orthanc import Orthanc, free_port

ROOT = Path(__file__).resolve().parents[2]
STORESCU_FLAG = {"explicit": "-xe", "implicit": "-xi", "deflate": "-xd", "jpeg-baseline": "-xy", "rle": "-xr",
                 "jpeg-ls": "-xt", "jpeg-lossless": "-xs"}  # propose the file's own transfer syntax
TARGETS = {"instances_per_s": 30.0, "p50_ms": 250.0, "peak_rss_mb": 1024.0}


class NodeProcess:
    """`pneumo-edge listen` in a process of its own, sending to `send_to`, its spool under `folder`."""

    def __init__(self, folder: Path, send_to: str, *extra: str, port: int | None = None, ae_title: str = "PNEUMO"):
        self.port, self.ae_title = port or free_port(), ae_title
        self.spool, self.log = folder / "spool", folder / "node.log"
        self.args = [sys.executable, "-m", "pneumo_edge", "listen", "--port", str(self.port), "--ae-title", ae_title,
                     "--send-to", send_to, "--spool", str(self.spool), *extra]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0, calling: str = "MOD") -> "NodeProcess":
        from pynetdicom import AE  # the [node] extra, only when the node runs

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(self.args, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
                                     stdin=subprocess.DEVNULL)
        ae = AE(ae_title=calling)
        ae.add_requested_context("1.2.840.10008.1.1")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # C-ECHO until it answers (the model loads first)
            if self.proc.poll() is not None:
                raise PneumoEdgeError(f"the node exited at start: {self.log.read_text()[-500:]}")
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
            if assoc.is_established:
                assoc.release()
                return self
            time.sleep(0.1)
        raise PneumoEdgeError(f"the node did not answer C-ECHO within {timeout_s:.0f} s")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def peak_rss_mb(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def audit(self) -> list[dict]:
        return audit.read(self.spool / "audit.jsonl")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def storescu_args(port: int, files: list[Path], syntax: str = "explicit", calling: str = "MOD",
                  called: str = "PNEUMO") -> list[str]:
    if shutil.which("storescu") is None:
        raise PneumoEdgeError("storescu is not installed (Debian: apt-get install dcmtk)")
    return ["storescu", "-v", "-R", STORESCU_FLAG[syntax], "-aec", called, "-aet", calling, "127.0.0.1", str(port),
            *map(str, files)]


def storescu(port: int, files: list[Path], syntax: str = "explicit", calling: str = "MOD",
             timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(storescu_args(port, files, syntax, calling), capture_output=True, text=True, timeout=timeout)


def stored_ok(log: str) -> list[str]:
    """The files storescu got a C-STORE success for, from its verbose log."""
    ok, current = [], None
    for line in log.splitlines():
        if m := re.match(r"I: Sending file: (.*)", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            ok.append(current)
    return ok


def class_films(folder: str | Path, n: int) -> list[Path]:
    """n JPEG films from folder/NORMAL and folder/PNEUMONIA, alternating classes, in name order."""
    folder = Path(folder)
    normal, pneumonia = (sorted((folder / c).glob("*.jpeg")) for c in ("NORMAL", "PNEUMONIA"))
    if len(normal) < (n + 1) // 2 or len(pneumonia) < n // 2:
        raise PneumoEdgeError(f"need {n} JPEG films under {folder}/{{NORMAL,PNEUMONIA}}")
    return [(normal, pneumonia)[i % 2][i // 2] for i in range(n)]


@dataclass
class NodeBenchConfig:
    images: str  # a folder with NORMAL/ and PNEUMONIA/ JPEGs (make bench: the train split, never the test split)
    n: int = 200
    model: str | None = None  # .onnx file or bundle folder; None: the shipped one
    out: str = "bench/results"
    timeout_s: float = 300.0
    senders: int = 1  # storescu processes at once (modalities), the films dealt among them

    def __post_init__(self) -> None:
        if not 1 <= self.senders <= self.n:
            raise PneumoEdgeError(f"--senders {self.senders}: between 1 and the number of films ({self.n})")


def result_name(senders: int) -> str:
    return "node.json" if senders <= 1 else f"node-{senders}-senders.json"


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def bench_node(cfg: NodeBenchConfig) -> dict:

    films = class_films(cfg.images, cfg.n)
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        tmp = Path(tmp)
        stage("bench-node", f"writing {cfg.n} JPEG-baseline CR films")
        paths = [write_film(f, tmp / "films" / f"{i:04d}.dcm", "jpeg-baseline") for i, f in enumerate(films)]
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        with Orthanc(tmp / "orthanc") as pacs:
            extra = ["-q", *(["--model", cfg.model] if cfg.model else [])]
            node = NodeProcess(tmp, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", *extra).start()
            try:
                stage("bench-node", f"storescu: {cfg.n} films -> node -> Orthanc")
                load = os.getloadavg()
                cpu0 = node.cpu_seconds(), cpu_seconds(pacs.proc.pid)
                t0 = time.time()
                procs = [subprocess.Popen(storescu_args(node.port, paths[i::cfg.senders], "jpeg-baseline",
                                                        calling=f"MOD{i + 1}" if i else "MOD"),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                         for i in range(cfg.senders)]
                try:
                    logs = [proc.communicate(timeout=cfg.timeout_s)[0] for proc in procs]
                finally:
                    for proc in procs:  # one that timed out: none is left running
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                storescu_s = time.time() - t0
                if sum(len(stored_ok(log)) for log in logs) != cfg.n:
                    raise PneumoEdgeError(f"storescu did not store every film: {logs[0][-400:]}")
                deadline = time.monotonic() + cfg.timeout_s
                while sum(r.get("status") == "sent" for r in node.audit()) < cfg.n:
                    if time.monotonic() > deadline:
                        raise PneumoEdgeError("not every SR reached Orthanc in time")
                    time.sleep(0.2)
                peak_mb = node.peak_rss_mb()
                cpu = node.cpu_seconds() - cpu0[0], cpu_seconds(pacs.proc.pid) - cpu0[1]
                in_pacs = len(pacs.get("/instances"))
            finally:
                node.terminate()
        rows = [r for r in node.audit() if r.get("status") == "sent"]
    latency = [(r["sent_at"] - r["received_at"]) * 1000 for r in rows]
    span = max(r["sent_at"] for r in rows) - min(r["received_at"] for r in rows)
    split = {k: round(float(np.mean([r[k] for r in rows])), 2) for k in ("classify_ms", "sr_ms", "send_ms")}
    split["queues_and_spool_ms"] = round(float(np.mean(latency)) - sum(split.values()), 2)
    result = {
        "films": cfg.n, "transfer_syntax": "JPEG baseline (the dataset's JPEGs, wrapped unchanged)",
        "model_file": str(resolve_model(cfg.model)),  # what `listen` runs: its default is the fp32 file
        "film_kb_mean": round(mean_kb, 1), "sr_in_orthanc": in_pacs,
        "instances_per_s": round(cfg.n / span, 1), "storescu_seconds": round(storescu_s, 2),
        "senders": cfg.senders,
        "latency_ms": {"p50": _pct(latency, 50), "p95": _pct(latency, 95), "max": round(max(latency), 1),
                       "mean": round(float(np.mean(latency)), 1)},
        "split_mean_ms": split,
        "cpu_ms_per_instance": {"node": round(cpu[0] * 1000 / cfg.n, 1), "orthanc": round(cpu[1] * 1000 / cfg.n, 1)},
        "peak_rss_mb": round(peak_mb, 1), "targets": TARGETS,
        "met": {"instances_per_s": cfg.n / span >= TARGETS["instances_per_s"],
                "p50_ms": _pct(latency, 50) <= TARGETS["p50_ms"], "peak_rss_mb": peak_mb < TARGETS["peak_rss_mb"]},
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load]},
        "config": asdict(cfg),
    }
    write_json(Path(cfg.out) / result_name(cfg.senders), result)
    return result


def render(r: dict) -> str:
    lat, s = r["latency_ms"], r["split_mean_ms"]
    senders = r.get("senders", 1)
    return (f"{r['films']} films ({r['film_kb_mean']} KB each, JPEG baseline) from {senders} sender"
            f"{'s' if senders > 1 else ''} through the node to Orthanc: "
            f"{r['instances_per_s']} instances/s; C-STORE end -> SR stored p50 {lat['p50']} ms, p95 {lat['p95']} ms "
            f"(mean {lat['mean']}: classify {s['classify_ms']}, SR {s['sr_ms']}, send {s['send_ms']}, queues and "
            f"spool {s['queues_and_spool_ms']}); CPU per instance: node {r['cpu_ms_per_instance']['node']} ms, "
            f"Orthanc {r['cpu_ms_per_instance']['orthanc']} ms; peak node RSS {r['peak_rss_mb']} MB; "
            f"{r['machine']['cpus']} CPUs, load {r['machine']['load_average_at_start'][0]} at start")
