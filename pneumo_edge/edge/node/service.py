"""`pneumo-edge listen`: receive images by C-STORE, classify each, send an SR per image, lose nothing.

    node = Node(NodeConfig(port=11112, ae_title="PNEUMO", destinations=["PACS@10.0.0.5:104"], spool="spool"))
    node.run(stop)          # until `stop` (a threading.Event) is set; SIGTERM sets it in the CLI

Three stages joined by the spool (edge.node.spool), so a crash anywhere loses nothing:
  receive   (pynetdicom threads) instance -> spool/incoming, fsynced, then C-STORE success;
  classify  (one thread) incoming -> decode + model + guard -> SR -> spool/outbox per destination,
            and only then the incoming file is removed;
  send      (a thread per destination, edge.node.outbox) outbox -> destination, removed once confirmed.
On start, whatever a previous run left in incoming/ and outbox/ is picked up first.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..model import EdgeModel
from ..monitor import Monitor, prometheus_collector
from .audit import Audit, now
from .classify import classify
from .outbox import LINKS, Destination, Sender
from .receiver import make_ae, store_handler
from .spool import Spool, sync_dir
from .tcp import no_delay
from .sc import build_sc
from .sr import Algorithm, build_sr

BATCH = 8  # instances classified per model call when they queue up


METRICS_FILE = "metrics.prom"  # in the spool: rates and drift for a Prometheus textfile collector


@dataclass
class NodeConfig:
    port: int
    ae_title: str
    destinations: list[str]
    spool: str | Path
    model: str | None = None  # an .onnx file, bundle folder or hub id (edge.api.resolve_model)
    host: str = "127.0.0.1"
    calling_aes: tuple[str, ...] = ()  # when given, only these callers may associate
    guard: bool = True
    max_attempts: int = 5  # per result, before the dead-letter folder
    retry_after_s: float = 1.0  # first wait after a failure; doubles per failure, capped
    grace_s: float = 30.0  # at shutdown: how long open associations may take to finish
    threads: int | None = None  # onnxruntime threads (default: all cores)
    heatmaps: bool = False  # also a Secondary Capture of the heat-map overlay per assessed image
    links: int = LINKS  # associations at once per C-STORE destination
    parsed: list[Destination] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        from ..errors import PneumoEdgeError

        if not self.destinations:
            raise PneumoEdgeError("give at least one --send-to destination")
        try:
            self.parsed = [Destination.parse(d) for d in self.destinations]
        except ValueError as e:
            raise PneumoEdgeError(str(e)) from None
        if not 0 < len(self.ae_title.strip()) <= 16:
            raise PneumoEdgeError(f"--ae-title '{self.ae_title}': 1 to 16 characters")
        if not 1 <= self.links <= 16:
            raise PneumoEdgeError(f"--links {self.links}: 1 to 16 associations per destination")


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Counters:
    """What the status line shows; thread-safe."""

    NAMES = ("received", "classified", "sent", "failed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n


class Node:
    def __init__(self, cfg: NodeConfig, model: EdgeModel | None = None):
        from ..api import resolve_model

        self.cfg = cfg
        self.model = model or EdgeModel(resolve_model(cfg.model), threads=cfg.threads)
        self.model_sha256 = self.model.sha256  # of the ONNX file: the result UIDs derive from it
        if cfg.heatmaps:  # a model that cannot draw the shipped map is refused at start, not per image
            from ..heatmap import FOLDER, method_for

            method_for(self.model, FOLDER)
        self.algo = Algorithm.of(self.model)  # name, the model's own version and digest, threshold
        self.spool = Spool(cfg.spool)
        self.audit = Audit(self.spool.root / "audit.jsonl")
        self.counters = Counters()
        # Rates and drift over a rolling window (edge.monitor), against the reference in the model file;
        # written as Prometheus text to the spool's metrics.prom (a node_exporter textfile) after each batch.
        self.monitor = Monitor.for_model(self.model)
        self.todo: queue.Queue[Path] = queue.Queue()
        for path in self.spool.incoming():  # left by a previous run: classified first
            self.todo.put(path)
        self.senders = [Sender(d, self.spool, self.audit, cfg.ae_title, cfg.max_attempts, cfg.retry_after_s,
                               self.counters, cfg.links) for d in cfg.parsed]
        self._stop_worker = threading.Event()
        import highdicom  # noqa: F401 - seconds of import: paid at start, not by the first image

    # ---- receiving
    def _stored(self, path: Path) -> None:
        self.counters.add("received")
        self.todo.put(path)

    def _refused(self, event, why: str) -> None:
        self.audit.write("refused", sop_instance_uid=str(event.request.AffectedSOPInstanceUID or "")[:64],
                         calling_ae=event.assoc.requestor.ae_title, reason=why, status="refused")

    def _association_rejected(self, event) -> None:
        self.audit.write("association-refused", calling_ae=event.assoc.requestor.ae_title,
                         reason="calling AE title not allowed", status="refused")

    # ---- classifying
    def _take_batch(self) -> list[Path]:
        try:
            batch = [self.todo.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < BATCH:
            try:
                batch.append(self.todo.get_nowait())
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch:
                self.process(batch)
            elif self._stop_worker.is_set():
                return

    def process(self, paths: list[Path]) -> None:
        """Classify spooled instances and queue their SRs; an instance leaves incoming/ only once queued."""
        import pydicom

        items = []
        for path in paths:
            try:
                data = path.read_bytes()
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                _ = header.SOPInstanceUID, header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPClassUID
            except FileNotFoundError:
                continue  # queued twice (start-up scan and a receive): already done
            except Exception as e:  # noqa: BLE001 - no header, no report: kept aside with the reason
                why = f"no result can be filed: the header is unreadable ({e.__class__.__name__}: {e})"
                self.spool.put_failed(path, why)
                self.audit.write("result", sop_instance_uid=path.stem, status="failed", reason=why,
                                 model_sha256=self.model_sha256)
                self.counters.add("failed")
                continue
            items.append((path, data, header))
        if not items:
            return
        findings, overlays, seconds = classify(self.model, [d for _, d, _ in items], self.cfg.guard,
                                               self.cfg.heatmaps)
        classified_at = now()
        per_image_ms = round(seconds * 1000 / len(items), 2)
        for finding in findings:
            if finding.guard_verdict != "not run":  # scored: accepted, or refused by the guard (label None)
                self.monitor.observe(finding.probability, finding.guard_score, finding.label or "",
                                     finding.guard_verdict == "rejected")
        write_metrics(self.monitor, self.spool.root / METRICS_FILE)
        for (path, _, header), finding, overlay in zip(items, findings, overlays):
            t0 = time.perf_counter()
            results = [("SR", build_sr(header, finding, self.algo))]
            if overlay is not None:
                results.append(("SC", build_sc(header, overlay, self.algo)))
            encoded = [(kind, ds, _encode(ds)) for kind, ds in results]
            state = {"sop_instance_uid": str(header.SOPInstanceUID), "sop_class_uid": str(header.SOPClassUID),
                     "modality": str(header.get("Modality", "")), "result": finding.label or "NOT_ASSESSED",
                     "probability": finding.probability, "threshold": self.algo.threshold,
                     "guard_verdict": finding.guard_verdict, "reason": finding.reason,
                     "model_sha256": self.model_sha256, "received_at": round(path.stat().st_mtime, 6),
                     "classified_at": classified_at, "classify_ms": per_image_ms,
                     "sr_ms": round((time.perf_counter() - t0) * 1000, 2)}
            for sender in self.senders:
                for kind, ds, data in encoded:
                    uid = str(ds.SOPInstanceUID)
                    self.spool.put_result(sender.dest.text, uid, data, {**state, "object": kind, "result_uid": uid})
        for sender in self.senders:  # the batch's results are on disk: only then may its instances go
            sync_dir(sender.folder)
            sender.wake.set()
        for path, _, _ in items:
            # not fsynced: should a crash undo the removal, the instance is classified again, same UIDs
            path.unlink(missing_ok=True)
            self.counters.add("classified")

    # ---- the whole node
    def run(self, stop: threading.Event, on_tick=None) -> None:
        """Serve until `stop` is set; then stop accepting, finish what is in hand, flush, return."""
        from pynetdicom import evt

        ae = make_ae(self.cfg.ae_title, self.cfg.calling_aes)
        handlers = [(evt.EVT_C_STORE, store_handler(self.spool, self._stored, self._refused)),
                    (evt.EVT_REJECTED, self._association_rejected),
                    (evt.EVT_CONN_OPEN, lambda event: no_delay(event.assoc))]
        worker = threading.Thread(target=self._work, name="classify", daemon=True)
        worker.start()
        for s in self.senders:
            s.start()
        server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        try:
            while not stop.wait(0.5):
                if on_tick:
                    on_tick(self.status())
        finally:
            server.shutdown()  # no new associations from here on
            deadline = time.monotonic() + self.cfg.grace_s
            while any(a.is_established for a in ae.active_associations) and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in ae.active_associations:  # past the grace time, or never associated: the sender retries
                assoc.abort()
            self._stop_worker.set()
            worker.join()
            for s in self.senders:
                s.flush()
            self.audit.close()
            if on_tick:
                on_tick(self.status())

    def status(self) -> dict:
        return {**self.counters.values, "queued": self.spool.n_queued(), "waiting": self.todo.qsize(),
                "drift_alarm": self.monitor.alarm, "send_errors": sum(x.errors for x in self.senders)}


def write_metrics(monitor: Monitor, path: Path) -> bool:
    """The monitor as Prometheus text in `path` (written whole, then renamed); False without prometheus-client."""
    try:
        from prometheus_client import CollectorRegistry, write_to_textfile  # optional: the node runs without it
    except ImportError:
        return False
    registry = CollectorRegistry()
    registry.register(prometheus_collector(monitor))
    write_to_textfile(str(path), registry)
    return True


def status_text(st: dict) -> str:
    return (f"received {st['received']}, classified {st['classified']}, sent {st['sent']}, "
            f"queued {st['queued']}, failed {st['failed']}" + ("; DRIFT ALARM" if st.get("drift_alarm") else "")
            + (f"; SEND ERRORS {st['send_errors']} (see the log)" if st.get("send_errors") else ""))


def listen(cfg: NodeConfig, progress: bool = True) -> dict:
    """Run a node in this process until SIGTERM or Ctrl-C, with a status line on the progress layer."""
    import signal

    from ..progress import Progress, stage

    node = Node(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stage("listen", f"{cfg.ae_title} on {cfg.host}:{cfg.port}, sending to {', '.join(cfg.destinations)}, "
                    f"spool {cfg.spool}, model sha256 {node.model_sha256[:12]}")
    with Progress(None, "listen", unit="received", enabled=progress) as bar:
        def tick(st: dict) -> None:
            bar.set_postfix(**{k: str(st[k]) for k in ("classified", "sent", "queued", "failed")})
            bar.update(st["received"] - bar.n)

        node.run(stop, on_tick=tick)
    final = node.status()
    stage("listen", f"stopped: {status_text(final)}")
    return final
