"""The outbox: results leave the spool for their destinations, with retries, backoff and a dead-letter folder.

One Sender thread per destination, sending over `links` associations at once (a C-STORE destination: each
object waits for the PACS to store it before its answer comes, so one association at a time leaves the
node waiting on the PACS's disk). A destination that cannot be reached (no association, no HTTP answer,
no C-STORE answer within `timeout_s`, a TLS certificate that fails verification, HTTP 429/502/503/504) is
backed off as a whole and every result waits, however long the outage: the objects are not at fault. The
outage and its end are one log line and one audit line each ("destination-down" with the cause,
"destination-up" with how long it lasted). A result the destination answers with a failure, or whose transfer
breaks off, counts an attempt; after `max_attempts` it moves to dead/<destination>/ with <UID>.reason.txt
beside it. A result leaves the outbox only after the destination confirmed it, so a crash in between sends it
again (same UIDs: replaced, not doubled).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from .audit import Audit, now
from .spool import Spool, durable_move, durable_write
from .tcp import no_delay

log = logging.getLogger("pneumo_edge.node")
BACKOFF_CAP_S = 30.0  # longest wait between two tries of one destination or one result
LINKS = 3  # associations per C-STORE destination (DICOMweb: one client, one request at a time)
SR_CONTEXTS = ("1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
               "1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture (heat-map overlays)


class Unreachable(Exception):
    """The destination did not answer: back off, count no attempt. The message is the cause, for log and audit."""


def tls_cause(e: BaseException) -> str:
    """What a TLS failure was, from the exception chain (requests wraps urllib3 wraps ssl): a certificate that
    failed verification is named as such, with the verifier's reason."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({x.verify_message or x.reason})"
        if isinstance(x, BaseException):
            todo += [x.__cause__, x.__context__, getattr(x, "reason", None), *x.args]
    return "TLS handshake failed"


@dataclass(frozen=True)
class Destination:
    """`AET@HOST:PORT` (DIMSE C-STORE) or an `https://` / `http://` DICOMweb base URL (STOW-RS)."""

    text: str
    ae_title: str = ""
    host: str = ""
    port: int = 0

    @property
    def is_web(self) -> bool:
        return self.text.startswith(("https://", "http://"))

    @classmethod
    def parse(cls, text: str) -> "Destination":
        if re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
            return cls(text.rstrip("/"))
        m = re.fullmatch(r"([^@\s\\]{1,16})@([^:\s]+):(\d{1,5})", text)
        if not m or not 0 < int(m.group(3)) < 65536:
            raise ValueError(f"--send-to '{text}': expected AET@HOST:PORT (AE title of at most 16 characters) "
                             "or a DICOMweb base URL https://host/path")
        return cls(text, m.group(1), m.group(2), int(m.group(3)))


class DimseLink:
    """One association at a time to a C-STORE destination, opened on demand and kept while work flows."""

    def __init__(self, dest: Destination, calling_ae: str, timeout_s: float = 30.0):
        from pynetdicom import AE  # the [node] extra, only when the node runs

        self.dest, self.timeout_s = dest, timeout_s
        self.ae = AE(ae_title=calling_ae)
        for uid in SR_CONTEXTS:  # one context per syntax: the files are explicit VR, a PACS may take implicit only
            self.ae.add_requested_context(uid, "1.2.840.10008.1.2.1")
            self.ae.add_requested_context(uid, "1.2.840.10008.1.2")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self.ae.connection_timeout = timeout_s
        self.assoc = None

    def _associate(self) -> None:
        t0 = time.monotonic()
        assoc = self.ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if not assoc.is_established:
            if assoc.is_rejected:
                why = "the destination rejected the association"
            elif time.monotonic() - t0 >= 0.9 * self.timeout_s:
                why = f"no answer within {self.timeout_s:g} s"
            elif assoc.is_aborted:
                why = "the destination aborted the association"
            else:
                why = "connection refused or closed"
            raise Unreachable(f"no association: {why}")
        no_delay(assoc)
        self.assoc = assoc

    def send(self, path: Path) -> None:
        """Raises Unreachable, or RuntimeError with the destination's answer when it refused the object."""
        from pynetdicom import _config  # the [node] extra, only when the node runs

        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are: no decode, no re-encode
        if self.assoc is None or not self.assoc.is_established:
            self._associate()
        t0 = time.monotonic()
        try:
            status = self.assoc.send_c_store(path)
        except ValueError:  # only implicit VR accepted: pynetdicom converts a decoded copy
            status = self.assoc.send_c_store(pydicom.dcmread(path))
        if not status or "Status" not in status:
            stalled = time.monotonic() - t0 >= 0.9 * self.timeout_s
            self.abort()
            if stalled:  # a PACS that takes the object and never answers: down, not the object's fault
                raise Unreachable(f"no C-STORE answer within {self.timeout_s:g} s")
            raise RuntimeError("transfer broke off (no C-STORE response)")
        code = int(status.Status)
        if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or success with a warning
            raise RuntimeError(f"C-STORE refused with status 0x{code:04X}")

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def abort(self) -> None:
        """Drop the association without waiting (a stalled peer would hold a release): in a thread of its own."""
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            threading.Thread(target=assoc.abort, name="abort", daemon=True).start()


BUSY = (429, 502, 503, 504)  # HTTP answers that say the server is not taking work now: an outage, not a refusal


class StowLink:
    """A DICOMweb destination: each result is one STOW-RS request (dicomweb-client) to `<base URL>/studies`,
    with a connect and read timeout and no retries of its own (the sender backs off)."""

    def __init__(self, dest: Destination, timeout_s: float = 30.0):
        from dicomweb_client.api import (
            DICOMwebClient,  # the [node] extra, only when run
        )

        self.dest, self.timeout_s = dest, timeout_s
        self.client = DICOMwebClient(url=dest.text, timeout=(timeout_s, timeout_s))
        self.client.set_http_retry_params(retry=False)

    def send(self, path: Path) -> None:
        import requests  # requests: only when this runs

        try:
            answer = self.client.store_instances([pydicom.dcmread(path)])
        except requests.exceptions.HTTPError as e:
            code = e.response.status_code
            if code in BUSY:
                raise Unreachable(f"answered HTTP {code}") from None
            raise RuntimeError(f"STOW-RS refused with HTTP {code}") from None
        except requests.exceptions.SSLError as e:
            raise Unreachable(tls_cause(e)) from None
        except requests.exceptions.Timeout:
            raise Unreachable(f"no answer within {self.timeout_s:g} s") from None
        except requests.exceptions.RequestException as e:  # no answer at all: connection refused, reset
            raise Unreachable(f"no answer ({e.__class__.__name__})") from None
        if answer.get("FailedSOPSequence"):
            reason = answer.FailedSOPSequence[0].get("FailureReason")
            raise RuntimeError(f"STOW-RS refused the instance (failure reason {reason})")

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.client._session.close()  # a request in progress ends with a connection error


class Sender(threading.Thread):
    """Sends what the worker queues for one destination until stopped; `flush` is one last pass."""

    def __init__(self, dest: Destination, spool: Spool, audit: Audit, calling_ae: str, max_attempts: int = 5,
                 retry_after_s: float = 1.0, counters=None, links: int = LINKS, timeout_s: float = 30.0):
        super().__init__(name=f"send {dest.text}", daemon=True)
        self.dest, self.spool, self.audit = dest, spool, audit
        self.folder, self.dead = spool.outbox_dir(dest.text), spool.dead_dir(dest.text)
        self.links = ([StowLink(dest, timeout_s)] if dest.is_web
                      else [DimseLink(dest, calling_ae, timeout_s) for _ in range(max(1, links))])
        self.down_since: float | None = None  # the outage in progress: since when, and its cause
        self.down_cause = ""
        self._until: float | None = None  # at shutdown: no send starts after this (monotonic)
        self._lock = threading.Lock()  # the states and the backoff, shared by the links' threads
        self._resting: dict[int, float] = {}  # further links the destination refused, until when
        self.errors = 0  # passes that raised (shown in the node's status line); the thread carries on
        self.max_attempts, self.retry_after_s = max_attempts, retry_after_s
        self.counters = counters
        self.wake, self.stopping = threading.Event(), threading.Event()
        self._dest_wait_s, self._dest_next = 0.0, 0.0
        self._states: dict[str, dict] = {}

    def _state(self, path: Path) -> dict:
        key = path.name
        if key not in self._states:
            try:
                self._states[key] = json.loads(path.with_suffix(".json").read_text())
            except (OSError, ValueError):
                self._states[key] = {}
        return self._states[key]

    def due(self) -> list[Path]:
        t = time.time()
        files = sorted(self.folder.glob("*.dcm"), key=lambda p: p.stat().st_mtime)
        return [p for p in files if self._state(p).get("next_at", 0) <= t]

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                idle = time.time() < self._dest_next or not self.pass_once()
            except Exception as e:  # noqa: BLE001 - a full disk, an audit write: the sender must not die of it
                self.errors += 1
                log.error("sending to %s failed (%s); retrying in %.0f s", self.dest.text, e.__class__.__name__,
                          BACKOFF_CAP_S)
                self.wake.wait(BACKOFF_CAP_S)
                self.wake.clear()
                continue
            if idle:
                self.wake.wait(0.2)
                self.wake.clear()

    def pass_once(self) -> bool:
        """Try every result that is due, spread over the links; False when there was none, or when the
        destination is down. The first result goes over the first link alone: whether that association
        opens is what says the destination is reachable. A further link the destination refuses (a PACS
        may cap associations per caller) rests for a while; its share waits for the next pass."""
        due = self.due()
        if not due:
            for link in self.links:
                link.close()  # idle: do not hold associations open
            return False
        if not self._send_one(self.links[0], due[0], primary=True):
            return False
        t = time.time()
        links = [self.links[0]] + [link for link in self.links[1:] if self._resting.get(id(link), 0) <= t]
        shares = [(link, due[1 + i::len(links)], i == 0) for i, link in enumerate(links)]
        shares = [share for share in shares if share[1]]
        if len(shares) <= 1:
            for share in shares:
                self._send_share(*share)
            return True
        errors: list[BaseException] = []

        def work(link, paths, primary) -> None:
            try:
                self._send_share(link, paths, primary)
            except BaseException as e:  # noqa: BLE001 - raised again below, in the sender's own thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=share, name=f"{self.name} link {i}", daemon=True)
                   for i, share in enumerate(shares)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return True

    def _send_share(self, link, paths: list[Path], primary: bool = True) -> None:
        for path in paths:
            if self.stopping.is_set() and not self._flushing:
                return
            if self._until is not None and time.monotonic() > self._until:
                return
            if not self._send_one(link, path, primary):
                return  # not reachable over this link: the rest waits for the next pass

    _flushing = False

    def flush(self, deadline: float | None = None) -> None:
        """At shutdown: one pass over everything due, ending by `deadline` (monotonic) when given; what is not
        sent by then stays queued on disk for the next start (a send cut short is aborted, never confirmed)."""
        self.stopping.set()
        self.wake.set()

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        self.join(left())
        if self.is_alive():  # a send in hand past the deadline
            self._abort_links()
            return
        if self.down_since is not None:  # a destination known to be down would only spend the time left
            return
        self._flushing, self._dest_next, self._until = True, 0.0, deadline
        last = threading.Thread(target=self._last_pass, name=f"{self.name} last pass", daemon=True)
        last.start()
        last.join(left())
        if last.is_alive():
            self._abort_links()
            return
        for link in self.links:
            link.close()

    def _last_pass(self) -> None:
        try:
            self.pass_once()
        except Exception as e:  # noqa: BLE001 - what is not sent stays queued
            log.error("last pass to %s failed (%s); the rest stays queued", self.dest.text, e.__class__.__name__)

    def _abort_links(self) -> None:
        for link in self.links:
            link.abort()

    def _send_one(self, link, path: Path, primary: bool = True) -> bool:
        """False when the destination did not answer over `link`: on the first link the destination backs
        off as a whole (once per pass); a further link rests instead and counts against nothing."""
        with self._lock:
            state = self._state(path)
        t0 = time.perf_counter()
        try:
            link.send(path)
        except Unreachable as e:
            with self._lock:
                if primary:
                    self._dest_wait_s = min(BACKOFF_CAP_S, max(self.retry_after_s, self._dest_wait_s * 2))
                    self._dest_next = time.time() + self._dest_wait_s
                    state["last_error"] = str(e)
                else:
                    self._resting[id(link)] = time.time() + BACKOFF_CAP_S
            if primary:
                self._went_down(str(e))
            return False
        except Exception as e:  # noqa: BLE001 - the destination refused it, or the transfer broke off
            link.close()
            self._failed(path, state, f"{e.__class__.__name__}: {e}" if not isinstance(e, RuntimeError) else str(e))
            return True
        if primary:
            with self._lock:
                self._dest_wait_s = 0.0
            self._came_up()
        self._sent(path, state, time.perf_counter() - t0)
        return True

    def _went_down(self, cause: str) -> None:
        """The first failure to reach the destination: one log line, one audit line, until it answers again."""
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since, self.down_cause = time.time(), cause
        log.warning("%s is unreachable: %s; results wait in the outbox and are tried again (every %.0f s at most)",
                    self.dest.text, cause, BACKOFF_CAP_S)
        self._audit_line("destination-down", reason=cause, status="unreachable")

    def _came_up(self) -> None:
        with self._lock:
            if self.down_since is None:
                return
            down_s, self.down_since, self.down_cause = time.time() - self.down_since, None, ""
        queued = sum(1 for _ in self.folder.glob("*.dcm"))
        log.warning("%s answers again, after %.0f s unreachable; %d results queued", self.dest.text, down_s, queued)
        self._audit_line("destination-up", status="reachable", down_s=round(down_s, 1))

    def _audit_line(self, event: str, **fields) -> None:
        try:
            self.audit.write(event, destination=self.dest.text, **fields)
        except OSError as e:
            log.error("audit line '%s' not written (%s)", event, e.__class__.__name__)

    def _record(self, state: dict, status: str, **more) -> None:
        fields = {k: v for k, v in state.items() if k not in ("next_at", "last_error", "attempts")}
        self.audit.write("result", **{**fields, "destination": self.dest.text, "status": status,
                                      "attempts": state.get("attempts", 0) + (status == "sent"), **more})

    def _sent(self, path: Path, state: dict, seconds: float) -> None:
        self._record(state, "sent", sent_at=now(), send_ms=round(seconds * 1000, 2))
        path.unlink(missing_ok=True)  # not fsynced: a removal a crash undoes only sends the same UIDs again
        path.with_suffix(".json").unlink(missing_ok=True)
        self._states.pop(path.name, None)
        if self.counters is not None:
            self.counters.add("sent")

    def _failed(self, path: Path, state: dict, why: str) -> None:
        state["attempts"] = attempts = state.get("attempts", 0) + 1
        state["last_error"] = why
        if attempts >= self.max_attempts:
            reason = f"{attempts} attempts to {self.dest.text} failed; last: {why}"
            log.error("result %s moved to the dead-letter folder: %s", path.stem, reason)
            durable_write(self.dead / f"{path.stem}.reason.txt", (reason + "\n").encode())
            durable_move(path, self.dead / path.name)
            path.with_suffix(".json").unlink(missing_ok=True)
            self._states.pop(path.name, None)
            self._record(state, "dead-letter", reason=reason)
            if self.counters is not None:
                self.counters.add("failed")
            return
        log.warning("result %s not taken by %s (attempt %d of %d): %s", path.stem, self.dest.text, attempts,
                    self.max_attempts, why)
        state["next_at"] = time.time() + min(BACKOFF_CAP_S, self.retry_after_s * 2 ** (attempts - 1))
        durable_write(path.with_suffix(".json"), json.dumps(state).encode(), sync=False)
