"""The spool: received instances on disk before the sender hears "success", results waiting to go out.

    spool = Spool("/var/spool/pneumo-edge")
    spool.put_incoming(sop_uid, encoded_bytes)   # temp name, fsync, rename, fsync the folder
    for path in spool.incoming(): ...            # what a restart still has to classify

Layout under the spool folder:
    incoming/<SOP Instance UID>.dcm      received, not yet classified (deleted once its results are queued)
    outbox/<destination>/<UID>.dcm       a result waiting to be sent, with <UID>.json beside it (its state)
    dead/<destination>/<UID>.dcm         gave up after the last attempt, with <UID>.reason.txt beside it
    failed/<SOP Instance UID>.dcm        a received file no result object could be made for, with its reason
    attempts/<SOP Instance UID>.json     the stage an instance is in and how often it was begun (a stage begun
                                         twice without finishing, crash or error, quarantines it in failed/)
    seen/<SOP Instance UID>.json         the digest of what an instance's results were made from (SEEN_DAYS):
                                         the same UID with other content later is a conflict, not a new result
    audit.jsonl                          one line per instance and destination (edge.node.audit)
A write is durable once put_* returns: a crash before leaves no file under the final name (temporary
names start with "." and are removed at start), a crash after leaves the whole file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

from .uids import valid_uid

INCOMING, OUTBOX, DEAD, FAILED, ATTEMPTS, SEEN = "incoming", "outbox", "dead", "failed", "attempts", "seen"
SEEN_DAYS = 30.0  # how long the content digest of a classified instance is kept (conflict detection)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes | list, sync: bool = True, sync_dir: bool = True) -> None:
    """Write `data` (bytes, or a list of byte-like parts written one after the other: no joined copy) to `path`
    so that after a crash `path` holds all of it or does not exist.

    sync=False: atomic (whole or absent) but not forced to disk, for what a crash may cost (retry state).
    sync_dir=False: the caller fsyncs the folder once for several files (`sync_dir`).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in data if isinstance(data, list) else [data]:
                f.write(part)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync and sync_dir:
        _fsync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    """Make the renames done in `folder` durable."""
    _fsync_dir(folder)


def durable_move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    if src.parent != dst.parent:
        _fsync_dir(src.parent)


def destination_folder(name: str) -> str:
    """A folder name for a destination ("PACS@10.0.0.5:104", "https://pacs/dicom-web"): readable, safe."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._") or "destination"


class Spool:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for sub in (INCOMING, OUTBOX, DEAD, FAILED, ATTEMPTS, SEEN):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        """Temporary files of writes a crash interrupted: never acknowledged, so never needed."""
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # ---- received instances
    def incoming_path(self, sop_uid: str) -> Path:
        if not valid_uid(sop_uid):
            raise ValueError(f"not a valid SOP Instance UID: {sop_uid[:70]!r}")
        return self.root / INCOMING / f"{sop_uid}.dcm"

    def put_incoming(self, sop_uid: str, data: bytes | list) -> Path:
        path = self.incoming_path(sop_uid)
        durable_write(path, data)
        return path

    def incoming(self) -> list[Path]:
        """Instances waiting to be classified, oldest first."""
        files = [p for p in (self.root / INCOMING).glob("*.dcm")]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    def put_failed(self, path: Path, reason: str) -> None:
        dst = self.root / FAILED / path.name
        durable_write(dst.with_suffix(".reason.txt"), (reason + "\n").encode())
        durable_move(path, dst)
        self.clear_attempts(path.stem)

    # ---- attempts: a stage begun is counted before it runs, so a crash in it counts too
    def _attempts_path(self, sop_uid: str) -> Path:
        return self.root / ATTEMPTS / f"{sop_uid}.json"

    def attempts(self, sop_uid: str) -> dict:
        """{"stage": the stage begun last, "count": times it was begun, "counts": per stage, "error": last error},
        or {} (never begun, or finished)."""
        try:
            record = json.loads(self._attempts_path(sop_uid).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or not isinstance(record.get("counts"), dict):
            return {}
        return {**record, "count": record["counts"].get(record.get("stage"), 0)}

    def begin(self, sop_uid: str, stage: str) -> int:
        """Count one more try of `stage` (atomic, not fsynced: a crash may cost a count, never a file); returns
        how often it has been begun."""
        record = self.attempts(sop_uid)
        counts = record.get("counts", {})
        counts[stage] = counts.get(stage, 0) + 1
        self._put_attempts(sop_uid, {"stage": stage, "counts": counts, "error": record.get("error", "")})
        return counts[stage]

    def note_error(self, sop_uid: str, error: str, uncount: bool = False) -> None:
        """Keep the error of the try in hand; uncount: the try does not count (the disk was full, not the image)."""
        record = self.attempts(sop_uid)
        if record:
            if uncount:
                record["counts"][record["stage"]] = max(0, record["count"] - 1)
            self._put_attempts(sop_uid, {"stage": record["stage"], "counts": record["counts"], "error": error})

    def _put_attempts(self, sop_uid: str, record: dict) -> None:
        durable_write(self._attempts_path(sop_uid), json.dumps(record).encode(), sync=False)

    def clear_attempts(self, sop_uid: str) -> None:
        self._attempts_path(sop_uid).unlink(missing_ok=True)

    # ---- what each classified instance's results were made from
    def seen(self, sop_uid: str) -> dict:
        try:
            record = json.loads((self.root / SEEN / f"{sop_uid}.json").read_text())
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def remember(self, sop_uid: str, record: dict) -> None:
        durable_write(self.root / SEEN / f"{sop_uid}.json", json.dumps(record).encode(), sync=False)

    def forget_old(self, days: float = SEEN_DAYS) -> int:
        """Remove content records older than `days`; returns how many."""
        cutoff, n = time.time() - days * 86400, 0
        for p in (self.root / SEEN).glob("*.json"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except OSError:
                continue
        return n

    # ---- results
    def outbox_dir(self, destination: str) -> Path:
        folder = self.root / OUTBOX / destination_folder(destination)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def dead_dir(self, destination: str) -> Path:
        folder = self.root / DEAD / destination_folder(destination)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def put_result(self, destination: str, uid: str, data: bytes, state: dict) -> Path:
        """Queue one result object for one destination: its state, then the object (what the sender lists).

        The object is fsynced, its folder is not: the caller calls `sync_dir` once per batch, before it removes
        the incoming files. The state (audit fields, retry count) is not forced to disk: a crash can cost
        it, never the result (the sender reads a missing state as a first attempt).
        """
        folder = self.outbox_dir(destination)
        durable_write(folder / f"{uid}.json", json.dumps(state).encode(), sync=False)
        path = folder / f"{uid}.dcm"
        durable_write(path, data, sync_dir=False)
        return path

    def n_queued(self) -> int:
        return sum(1 for _ in (self.root / OUTBOX).glob("*/*.dcm"))
