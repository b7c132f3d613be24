"""The classify-and-report stage: spooled instances -> results queued per destination, one image never stopping
another.

Per instance, in order: its header (edge.node.header: bounded, checked), its classification (in a batch with
others), its results (SR, and SC with --heatmaps: edge.node.sr, edge.node.sc) written to each destination's
outbox, and only then its removal from incoming/. What can go wrong, and what follows:
  - a header no result can be filed under (unreadable, invalid UIDs, not the instance the C-STORE command
    named, over the size limit): failed/<UID>.dcm with the reason, at once;
  - an error while classifying or making the results (a library refusing a header value, say): the try is
    counted in the spool (attempts/) BEFORE it runs, so a crash counts as well; the instance is tried again
    alone, and on its second failed try of the same stage it goes to failed/ with the reason. On start, an
    instance whose stage was begun MAX_TRIES times without finishing is quarantined unread;
  - the spool's disk full (ENOSPC and kin): nothing counts against the instance; it stays in incoming/ and is
    tried again after a wait that doubles up to BACKOFF_CAP_S, without a restart. The disk filling and having
    room again are one log line and one audit line each;
  - the same SOP Instance UID as an instance classified before (edge.node.spool seen/) with other content:
    a conflict, in failed/ with the reason, the audit and the status line; the earlier results stand (its
    result UIDs are the ones this instance would get: sending again would claim a result the PACS may not keep).
Reasons in the log and the audit name the stage and the exception's class and place (edge.node.redact.describe),
never its message; the reason file beside the quarantined instance adds the message with quoted text removed.
"""

from __future__ import annotations

import errno
import heapq
import io
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..decision import NOT_RUN
from ..dicom_terms import MODALITIES, shown
from ..imaging import scrub
from ..population import without_age
from .audit import now
from .classify import classify
from .header import HeaderError, read_header
from .redact import describe
from .sc import build_sc
from .spool import sync_dir
from .sr import build_sr

log = logging.getLogger("pneumo_edge.node")
BATCH = 8  # instances classified per model call when they queue up
MAX_TRIES = 2  # tries of one stage before an instance is quarantined in failed/
BACKOFF_CAP_S = 30.0
TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}
STAGES = {"header": "reading the header", "classify": "classifying", "report": "making the results",
          "conflict": "checking for an earlier instance"}


def transient(e: BaseException) -> bool:
    """A full disk or exhausted handles: the node's trouble, not the image's."""
    return isinstance(e, OSError) and e.errno in TRANSIENT


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Item:
    path: Path
    uid: str
    header: object
    finding: object = None
    overlay: object = None
    digest: str = ""
    file_id: tuple = ()  # (inode, mtime) when read: the same UID received again meanwhile is a new file


def _file_id(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


class Worker:
    """The stage's queue and its work; `node` supplies model, spool, audit, counters, monitor, senders, config."""

    def __init__(self, node):
        self.node = node
        self.todo: queue.Queue[Path] = queue.Queue()
        self._later: list = []  # heap of (due, n, path): instances waiting to be tried again
        self._n = itertools.count()
        self._alone: set[str] = set()  # file names to classify in a batch of their own
        self.in_hand: list[str] = []  # UIDs of the batch being worked on
        self.disk_full_since: float | None = None
        self._disk_wait = 0.0
        self.stop = threading.Event()

    # ---- the queue
    def recover(self, paths: list[Path]) -> None:
        """Instances a previous run left: quarantined if a stage was begun MAX_TRIES times, else queued (alone if
        a stage was begun before)."""
        for path in paths:
            record = self.node.spool.attempts(path.stem)
            if record.get("count", 0) >= MAX_TRIES:
                self.quarantine(path, record["stage"], f"{STAGES.get(record['stage'], record['stage'])} did not "
                                f"finish in {record['count']} tries (last: {record.get('error') or 'the node stopped'})")
                continue
            if record.get("count"):
                self._alone.add(path.name)
            self.todo.put(path)

    def later(self, path: Path, delay_s: float) -> None:
        heapq.heappush(self._later, (time.monotonic() + delay_s, next(self._n), path))

    def waiting(self) -> int:
        return self.todo.qsize() + len(self._later)

    def take_batch(self) -> list[Path]:
        batch: list[Path] = []
        t = time.monotonic()
        while self._later and self._later[0][0] <= t and len(batch) < BATCH:
            batch.append(heapq.heappop(self._later)[2])
        if not batch:
            try:
                batch.append(self.todo.get(timeout=0.2))
            except queue.Empty:
                return []
        while len(batch) < BATCH:
            try:
                batch.append(self.todo.get_nowait())
            except queue.Empty:
                break
        return batch

    def run(self) -> None:
        """Until `stop`: after it, the batch in hand is finished and the rest stays in incoming/."""
        while not self.stop.is_set():
            batch = self.take_batch()
            if batch:
                self.process(batch)

    # ---- one batch
    def process(self, paths: list[Path]) -> None:
        """Classify spooled instances and queue their results; an instance leaves incoming/ only once queued."""
        items = [item for item in map(self._read, paths) if item is not None]
        self.in_hand = [item.uid for item in items]
        t0 = time.perf_counter()
        alone = [item for item in items if item.path.name in self._alone]
        for group in [[item] for item in alone] + [[item for item in items if item not in alone]]:
            if group:
                self._classify(group)
        ms = round((time.perf_counter() - t0) * 1000 / max(1, len(items)), 2)
        classified_at = now()
        done = [item for item in items if item.finding is not None and self._report(item, classified_at, ms)]
        if done:
            self._finish(done)
        self.in_hand = []

    def _read(self, path: Path) -> Item | None:
        try:
            file_id = _file_id(path)
            header = read_header(path, self.node.max_instance_bytes)
        except FileNotFoundError:
            return None  # queued twice (start-up scan and a receive): already done
        except HeaderError as e:
            self.quarantine(path, "header", f"no result can be filed: {e}")
            return None
        except Exception as e:  # noqa: BLE001 - a full disk, or what the header reader did not foresee
            self._failed_try(Item(path, path.stem, None), "header", e, count=False)
            return None
        return Item(path, str(header.SOPInstanceUID), header, file_id=file_id)

    def _classify(self, group: list[Item]) -> None:
        spool = self.node.spool
        for item in group:
            spool.begin(item.uid, "classify")
        try:
            findings, overlays, digests, _ = classify(self.node.model, [item.path for item in group],
                                                      self.node.cfg.guard, self.node.cfg.heatmaps)
        except Exception as e:  # noqa: BLE001 - one image may have done it: each is tried alone
            if len(group) > 1:
                for item in group:
                    self._classify([item])
            else:
                self._failed_try(group[0], "classify", e)
            return
        for item, finding, overlay, digest in zip(group, findings, overlays, digests):
            item.finding, item.overlay, item.digest = finding, overlay, digest

    def _report(self, item: Item, classified_at: float, classify_ms: float) -> bool:
        """The item's results in every destination's outbox (and its content record); False: not this time."""

        node, t0 = self.node, time.perf_counter()
        try:
            earlier = node.spool.seen(item.uid)
            if earlier and earlier.get("digest") != item.digest:
                self._conflict(item, earlier)
                return False
            node.spool.begin(item.uid, "report")
            results = [("SR", build_sr(item.header, item.finding, node.algo))]
            if item.overlay is not None:
                results.append(("SC", build_sc(item.header, item.overlay, node.algo)))
            encoded = [(kind, str(ds.SOPInstanceUID), _encode(ds)) for kind, ds in results]
            state = self._state(item, classified_at, classify_ms, t0)
            for sender in node.senders:
                for kind, uid, data in encoded:
                    node.spool.put_result(sender.dest.text, uid, data, {**state, "object": kind, "result_uid": uid})
            node.spool.remember(item.uid, {"digest": item.digest, "result_uids": [uid for _, uid, _ in encoded],
                                           "result": state["result"], "at": classified_at})
        except Exception as e:  # noqa: BLE001 - whatever the header holds, this image alone pays for it
            self._failed_try(item, "report", e)
            return False
        return True

    def _state(self, item: Item, classified_at: float, classify_ms: float, t0: float) -> dict:
        """The audit fields that travel with each result (no header text: the modality only as a defined term)."""
        f, h = item.finding, item.header
        return {"sop_instance_uid": item.uid, "sop_class_uid": str(h.SOPClassUID),
                "modality": shown(h.get("Modality", ""), MODALITIES), "result": f.label or "NOT_ASSESSED",
                "probability": f.probability, "threshold": self.node.algo.threshold,
                "guard_verdict": f.guard_verdict, "reason": without_age(f.reason), "model_sha256": self.node.model_sha256,
                "received_at": round(item.path.stat().st_mtime, 6), "classified_at": classified_at,
                "classify_ms": classify_ms, "sr_ms": round((time.perf_counter() - t0) * 1000, 2)}

    def _finish(self, done: list[Item]) -> None:
        """The batch's results are on disk: only then may its instances go."""
        node = self.node
        for sender in node.senders:
            sync_dir(sender.folder)
            sender.wake.set()
        for item in done:
            # not fsynced: should a crash undo the removal, the instance is classified again, same UIDs.
            # Received again while in hand (a new file under the same name, queued again): that one stays.
            try:
                if _file_id(item.path) == item.file_id:
                    item.path.unlink()
            except FileNotFoundError:
                pass
            node.spool.clear_attempts(item.uid)
            self._alone.discard(item.path.name)
            node.counters.add("classified")
            f = item.finding
            if f.guard_verdict != NOT_RUN:  # scored: accepted, or refused by the guard (label None)
                node.monitor.observe(f.probability, f.guard_score, f.label or "", f.guard_verdict == "rejected")
        node.wrote_results()
        self._disk_ok()

    # ---- what went wrong
    def _failed_try(self, item: Item, stage: str, e: BaseException, count: bool = True) -> None:
        spool, why = self.node.spool, f"{STAGES[stage]} failed: {describe(e)}"
        if transient(e):
            self._disk_trouble(e)
            if count:
                spool.note_error(item.uid, why, uncount=True)
            self.later(item.path, self._disk_wait)
            return
        tries = spool.attempts(item.uid).get("count", 1) if count else MAX_TRIES
        if tries >= MAX_TRIES:
            self.quarantine(item.path, stage, f"{why} ({tries} tries)", detail=str(e))
            return
        spool.note_error(item.uid, why)
        self._alone.add(item.path.name)
        log.warning("instance %s: %s; it is tried again, alone", item.uid, why)
        self.later(item.path, self.node.cfg.retry_after_s)

    def quarantine(self, path: Path, stage: str, why: str, detail: str = "", status: str = "failed") -> None:
        """The instance to failed/ with its reason; the audit and the log say so (without `detail`)."""
        uid = path.stem
        text = why + (f"\nmessage (quoted text removed): {scrub(detail)}" if detail else "")
        try:
            self.node.spool.put_failed(path, text)
        except FileNotFoundError:
            return
        except OSError as e:
            if not transient(e):
                raise
            self._disk_trouble(e)
            self.later(path, self._disk_wait)
            return
        self.node.audit_safe("result" if status == "failed" else status, sop_instance_uid=uid, status=status,
                             stage=stage, reason=why, model_sha256=self.node.model_sha256)
        self.node.counters.add("failed" if status == "failed" else "conflicts")
        self._alone.discard(path.name)
        log.warning("instance %s kept in failed/: %s", uid, why)

    def _conflict(self, item: Item, earlier: dict) -> None:
        why = (f"conflict: an instance with this SOP Instance UID and other content was classified before; its "
               f"results ({', '.join(earlier.get('result_uids', []))}) stand and this one gets none")
        self.quarantine(item.path, "conflict", why, status="conflict")

    def _disk_trouble(self, e: OSError) -> None:
        self._disk_wait = min(BACKOFF_CAP_S, max(self.node.cfg.retry_after_s, self._disk_wait * 2))
        if self.disk_full_since is not None:
            return
        self.disk_full_since = time.monotonic()
        why = f"the spool's disk refuses writes ({errno.errorcode.get(e.errno, e.errno)})"
        log.error("%s: instances wait in incoming/ and are tried again (every %.0f s at most); results already "
                  "queued are still sent", why, BACKOFF_CAP_S)
        self.node.audit_safe("spool-full", reason=why, status="waiting")

    def _disk_ok(self) -> None:
        if self.disk_full_since is None:
            return
        waited = time.monotonic() - self.disk_full_since
        self.disk_full_since, self._disk_wait = None, 0.0
        log.warning("the spool's disk takes writes again, after %.0f s", waited)
        self.node.audit_safe("spool-ok", reason=f"the spool's disk takes writes again after {waited:.0f} s",
                             status="ok", down_s=round(waited, 1))
