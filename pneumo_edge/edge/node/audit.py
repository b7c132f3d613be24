"""The node's audit log: one JSON line per instance and destination once its result is sent or dead-lettered,
and one per refusal. Lines carry UIDs, times, the result and the model digest, never a patient's name, ID or
birth date (the node never reads those into anything but the result object itself).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

# The only keys an audit line may have: a closed list, so that nothing identifying can slip in.
FIELDS = ("event", "object", "sop_instance_uid", "sop_class_uid", "modality", "calling_ae", "result", "probability",
          "threshold", "guard_verdict", "reason", "model_sha256", "result_uid", "destination", "status",
          "attempts", "received_at", "classified_at", "sent_at", "classify_ms", "sr_ms", "send_ms")


def now() -> float:
    return round(time.time(), 6)


class Audit:
    """Appends lines to `path`, flushed and fsynced one by one (a crash keeps every line written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, event: str, **fields) -> None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"audit fields not allowed: {', '.join(sorted(unknown))}")
        line = json.dumps({"event": event, "at": now(), **fields}, sort_keys=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read(path: str | os.PathLike) -> list[dict]:
    """Every complete line of an audit log (a torn last line, from a crash, is left out)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
