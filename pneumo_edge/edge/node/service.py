"""`pneumo-edge listen`: receive images by C-STORE, classify each, send an SR per image, lose nothing.

    node = Node(NodeConfig(port=11112, ae_title="PNEUMO", destinations=["PACS@10.0.0.5:104"], spool="spool"))
    node.run(stop)          # until `stop` (a threading.Event) is set; SIGTERM sets it in the CLI

Three stages joined by the spool (edge.node.spool), so a crash anywhere loses nothing:
  receive   (pynetdicom threads, behind edge.node.gate's bounds) instance -> spool/incoming, fsynced, then
            C-STORE success;
  classify  (one thread, edge.node.worker) incoming -> header + decode + model + guard -> SR -> spool/outbox
            per destination, and only then the incoming file is removed; one image's failure is its own;
  send      (a thread per destination, edge.node.outbox) outbox -> destination, removed once confirmed.
On start, whatever a previous run left in incoming/ and outbox/ is picked up first. A stage thread that ends
stops the node: the status line says which and why, and `listen` exits non-zero. SIGTERM stops within
`stop_timeout_s`: open associations get part of it, the batch in hand and a last pass of the senders the rest;
what is not done stays spooled for the next start.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..api import resolve_model
from ..errors import PneumoEdgeError
from ..model import EdgeModel
from ..monitor import Monitor, prometheus_collector
from ..progress import Progress, stage
from .audit import Audit, Throttle
from .counters import RATE_WINDOW_S, Counters
from .gate import Limits, start_server
from .outbox import LINKS, Destination, Sender
from .receiver import make_ae, store_handler
from .redact import describe, install
from .spool import Spool, durable_write
from .sr import Algorithm
from .tcp import no_delay
from .worker import Worker

log = logging.getLogger("pneumo_edge.node")
METRICS_FILE = "metrics.prom"  # in the spool: rates and drift for a Prometheus textfile collector
STATUS_FILE = "status.json"  # in the spool: the status line's figures and the node's state, rewritten every few s


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
    max_attempts: int = 5  # per result, before the dead-letter folder (a destination that does not answer: none)
    retry_after_s: float = 1.0  # first wait after a failure; doubles per failure, capped
    stop_timeout_s: float = 10.0  # SIGTERM to exit, at most (plus a send that ignores its own timeout)
    threads: int | None = None  # onnxruntime threads (default: all cores)
    heatmaps: bool = False  # also a Secondary Capture of the heat-map overlay per assessed image
    links: int = LINKS  # associations at once per C-STORE destination
    max_associations: int = 10  # open at once, all callers together
    max_per_peer: int = 4  # open at once from one IP address
    request_timeout_s: float = 10.0  # for a caller's whole A-ASSOCIATE-RQ, from the connection opening
    max_instance_mb: float = 256.0  # one received data set, at most
    send_timeout_s: float = 30.0  # a destination's answer: past it the destination counts as not answering
    parsed: list[Destination] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not self.destinations:
            raise PneumoEdgeError("give at least one --send-to destination")
        try:
            self.parsed = [Destination.parse(d) for d in self.destinations]
        except ValueError as e:
            raise PneumoEdgeError(str(e)) from None
        if not 0 < len(self.ae_title.strip()) <= 16:
            raise PneumoEdgeError(f"--ae-title '{self.ae_title}': 1 to 16 characters")
        checks = (("--links", self.links, 1, 16), ("--max-associations", self.max_associations, 1, 1000),
                  ("--max-per-peer", self.max_per_peer, 1, 1000), ("--request-timeout", self.request_timeout_s, 0.5, 600),
                  ("--max-instance-mb", self.max_instance_mb, 1, 4096), ("--send-timeout", self.send_timeout_s, 1, 600),
                  ("--stop-timeout", self.stop_timeout_s, 1, 600))
        for name, value, lo, hi in checks:
            if not lo <= value <= hi:
                raise PneumoEdgeError(f"{name} {value}: between {lo} and {hi}")

    def limits(self) -> Limits:
        return Limits(max_associations=self.max_associations, per_peer=self.max_per_peer,
                      request_timeout_s=self.request_timeout_s, max_instance_bytes=int(self.max_instance_mb * 2**20))


class NodeStopped(PneumoEdgeError):
    """A stage of the node ended: the node stopped rather than go on answering C-STORE with nobody classifying."""

    exit_code = 3


class Node:
    def __init__(self, cfg: NodeConfig, model: EdgeModel | None = None):
        self.cfg = cfg
        self.model = model or EdgeModel(resolve_model(cfg.model), threads=cfg.threads)
        self.model_sha256 = self.model.sha256  # of the ONNX file: the result UIDs derive from it
        if cfg.heatmaps:  # a model that cannot draw the shipped map is refused at start, not per image
            from ..heatmap import FOLDER, method_for

            method_for(self.model, FOLDER)
        self.algo = Algorithm.of(self.model)  # name, the model's own version and digest, threshold
        self.max_instance_bytes = int(cfg.max_instance_mb * 2**20)
        self.spool = Spool(cfg.spool)
        self.spool.forget_old()
        self.audit = Audit(self.spool.root / "audit.jsonl")
        self.counters = Counters()
        self._refusals = Throttle()
        # Rates and drift over a rolling window (edge.monitor), against the reference in the model file;
        # written as Prometheus text to the spool's metrics.prom (a node_exporter textfile) after each batch.
        self.monitor = Monitor.for_model(self.model)
        self.senders = [Sender(d, self.spool, self.audit, cfg.ae_title, cfg.max_attempts, cfg.retry_after_s,
                               self.counters, cfg.links, cfg.send_timeout_s) for d in cfg.parsed]
        self.worker = Worker(self)
        self.worker.recover(self.spool.incoming())  # left by a previous run: classified first
        self.state, self.failure = "starting", None
        import highdicom  # noqa: F401 - seconds of import: paid at start, not by the first image

    # ---- receiving
    def _stored(self, path: Path) -> None:
        self.counters.add("received")
        self.worker.todo.put(path)

    def _refused(self, event, why: str) -> None:
        self.audit_safe("refused", sop_instance_uid=str(event.request.AffectedSOPInstanceUID or "")[:64],
                        calling_ae=event.assoc.requestor.ae_title, peer=event.assoc.requestor.address,
                        reason=why, status="refused")

    def _association_rejected(self, event) -> None:
        calling = str(event.assoc.requestor.ae_title or "").strip()
        allowed = [a.strip() for a in self.cfg.calling_aes]
        why = "calling AE title not allowed" if allowed and calling not in allowed else "association limit reached"
        self._peer_refused(event.assoc.requestor.address, why, calling_ae=calling)

    def _peer_refused(self, peer: str, why: str, **more) -> None:
        """A connection refused or cut off (edge.node.gate): audited and logged, once a minute per peer and reason."""
        repeats = self._refusals.allow((peer, why))
        if repeats is None:
            return
        log.warning("refused %s: %s%s", peer, why, f" ({repeats} more since the last line)" if repeats else "")
        self.audit_safe("association-refused", peer=peer, reason=why, status="refused", repeats=repeats, **more)

    def audit_safe(self, event: str, **fields) -> None:
        """An audit line that a full disk must not turn into a dead stage: the failure is logged instead."""
        try:
            self.audit.write(event, **fields)
        except OSError as e:
            log.error("audit line '%s' not written: %s", event, describe(e))

    # ---- classifying (edge.node.worker)
    def process(self, paths: list[Path]) -> None:
        self.worker.process(paths)

    def wrote_results(self) -> None:
        write_metrics(self.monitor, self.spool.root / METRICS_FILE)

    def _work(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # noqa: BLE001 - the stage is gone: say so, and stop the node
            self.failure = f"the classify stage ended on an error: {describe(e)}"
            log.critical("%s; the node stops", self.failure)

    # ---- the whole node
    def run(self, stop: threading.Event, on_tick=None) -> None:
        """Serve until `stop` is set or a stage ends; then stop accepting, finish what is in hand within
        stop_timeout_s, and return (`failure` says why, when a stage ended)."""
        from pynetdicom import evt  # the [node] extra, only when the node runs

        ae = make_ae(self.cfg.ae_title, self.cfg.calling_aes)
        handlers = [(evt.EVT_C_STORE, store_handler(self.spool, self._stored, self._refused, self.max_instance_bytes)),
                    (evt.EVT_REJECTED, self._association_rejected),
                    (evt.EVT_CONN_OPEN, lambda event: no_delay(event.assoc))]
        try:
            server = start_server(ae, (self.cfg.host, self.cfg.port), handlers, self.cfg.limits(), self._peer_refused,
                                  lambda name: log.error("a connection ended on an error: %s", name))
        except OSError as e:
            raise PneumoEdgeError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e.strerror or e}") from None
        worker = threading.Thread(target=self._work, name="classify", daemon=True)
        worker.start()
        for s in self.senders:
            s.start()
        self.state, last_file = "running", 0.0
        try:
            while not stop.wait(0.5):
                self.failure = self.failure or self._ended_stage(worker)
                if self.failure:
                    break
                if on_tick:
                    on_tick(self.status())
                if time.monotonic() - last_file >= 2.0:
                    self.write_status()
                    last_file = time.monotonic()
        finally:
            self._shutdown(ae, server, worker)
            if on_tick:
                on_tick(self.status())

    def _ended_stage(self, worker: threading.Thread) -> str | None:
        if not worker.is_alive():
            return "the classify stage ended"
        for s in self.senders:
            if not s.is_alive():
                return f"the sender to {s.dest.text} ended"
        return None

    def _shutdown(self, ae, server, worker: threading.Thread) -> None:
        """Within stop_timeout_s: 40% for open associations, then the batch in hand, then the senders' last pass."""
        t0, budget = time.monotonic(), self.cfg.stop_timeout_s
        self.state = "stopping"
        server.shutdown()  # no new associations from here on
        while any(a.is_established for a in ae.active_associations) and time.monotonic() < t0 + 0.4 * budget:
            time.sleep(0.05)
        for assoc in ae.active_associations:  # past their share, or never associated: the sender retries
            threading.Thread(target=assoc.abort, name="abort", daemon=True).start()
        self.worker.stop.set()
        worker.join(max(0.0, t0 + 0.7 * budget - time.monotonic()))
        if worker.is_alive():
            log.warning("stopping with a batch in hand: its %d instances stay in incoming/ for the next start",
                        len(self.worker.in_hand))
            for uid in self.worker.in_hand:  # the stop cut this try short: it does not count against the image
                self.spool.note_error(uid, "the node stopped during it", uncount=True)
        for s in self.senders:
            s.stopping.set()
            s.wake.set()
        for s in self.senders:
            s.flush(t0 + 0.95 * budget)
        self.state = f"stopped: {self.failure}" if self.failure else "stopped"
        self.write_status()
        if not worker.is_alive() and not any(s.is_alive() for s in self.senders):
            self.audit.close()

    def status(self) -> dict:
        return {**self.counters.values, **self.counters.rates(), "queued": self.spool.n_queued(),
                "waiting": self.worker.waiting(), "drift_alarm": self.monitor.alarm,
                "send_errors": sum(x.errors for x in self.senders),
                "unreachable": {s.dest.text: s.down_cause for s in self.senders if s.down_since is not None},
                "disk_full": self.worker.disk_full_since is not None, "state": self.state, "failure": self.failure}

    def write_status(self) -> None:
        """The status as JSON in the spool (what a health check reads); a write the disk refuses is skipped."""
        try:
            durable_write(self.spool.root / STATUS_FILE, json.dumps({**self.status(), "at": time.time()}).encode(),
                          sync=False)
        except OSError:
            pass


def write_metrics(monitor: Monitor, path: Path) -> bool:
    """The monitor as Prometheus text in `path` (written whole, then renamed); False without prometheus-client."""
    try:
        from prometheus_client import (  # optional: the node runs without it
            CollectorRegistry,
            write_to_textfile,
        )
    except ImportError:
        return False
    registry = CollectorRegistry()
    registry.register(prometheus_collector(monitor))
    write_to_textfile(str(path), registry)
    return True


def status_text(st: dict) -> str:
    rates = ", ".join(f"{st.get(k + '_per_s', 0):.2f} {k}/s" for k in Counters.RATED)
    text = (f"received {st['received']}, classified {st['classified']}, sent {st['sent']}, "
            f"queued {st['queued']}, failed {st['failed']} (last {RATE_WINDOW_S:.0f} s: {rates})")
    if st.get("conflicts"):
        text += f"; CONFLICTS {st['conflicts']} (see the audit)"
    for dest, cause in (st.get("unreachable") or {}).items():
        text += f"; {dest} UNREACHABLE ({cause})"
    if st.get("disk_full"):
        text += "; SPOOL DISK FULL"
    if st.get("drift_alarm"):
        text += "; DRIFT ALARM"
    if st.get("send_errors"):
        text += f"; SEND ERRORS {st['send_errors']} (see the log)"
    if st.get("failure"):
        text += f"; STOPPED: {st['failure']}"
    return text


def listen(cfg: NodeConfig, progress: bool = True) -> dict:
    """Run a node in this process until SIGTERM or Ctrl-C, with a status line on the progress layer; the log,
    warnings and tracebacks through edge.node.redact. Raises NodeStopped when a stage ended."""

    install()
    node = Node(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stage("listen", f"{cfg.ae_title} on {cfg.host}:{cfg.port}, sending to {', '.join(cfg.destinations)}, "
                    f"spool {cfg.spool}, model sha256 {node.model_sha256[:12]}")
    with Progress(None, "listen", unit="received", enabled=progress, window_s=RATE_WINDOW_S) as bar:
        def tick(st: dict) -> None:
            bar.set_postfix(**{k: str(st[k]) for k in ("classified", "sent", "queued", "failed")},
                            **({"conflicts": str(st["conflicts"])} if st["conflicts"] else {}),
                            **({"unreachable": ", ".join(st["unreachable"])} if st["unreachable"] else {}))
            bar.update(st["received"] - bar.n)

        node.run(stop, on_tick=tick)
    final = node.status()
    stage("listen", f"stopped: {status_text(final)}")
    if node.failure:
        raise NodeStopped(f"the node stopped: {node.failure}")
    return final
