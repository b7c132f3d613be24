"""The spool: received instances on disk before the sender hears "success", results waiting to go out.

    spool = Spool("/var/spool/pneumo-edge")
    spool.put_incoming(sop_uid, encoded_bytes)   # temp name, fsync, rename, fsync the folder
    for path in spool.incoming(): ...            # what a restart still has to classify

Layout under the spool folder:
    incoming/<SOP Instance UID>.dcm      received, not yet classified (deleted once its results are queued)
    outbox/<destination>/<UID>.dcm       a result waiting to be sent, with <UID>.json beside it (its state)
    dead/<destination>/<UID>.dcm         gave up after the last attempt, with <UID>.reason.txt beside it
    failed/<SOP Instance UID>.dcm        a received file no result object could be made for, with its reason
    audit.jsonl                          one line per instance and destination (edge.node.audit)
A write is durable once put_* returns: a crash before leaves no file under the final name (temporary
names start with "." and are removed at start), a crash after leaves the whole file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .uids import valid_uid

INCOMING, OUTBOX, DEAD, FAILED = "incoming", "outbox", "dead", "failed"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes, sync: bool = True, sync_dir: bool = True) -> None:
    """Write `data` to `path` so that after a crash `path` holds all of it or does not exist.

    sync=False: atomic (whole or absent) but not forced to disk, for what a crash may cost (retry state).
    sync_dir=False: the caller fsyncs the folder once for several files (`sync_dir`).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
        for sub in (INCOMING, OUTBOX, DEAD, FAILED):
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

    def put_incoming(self, sop_uid: str, data: bytes) -> Path:
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
