"""The node's audit log: one JSON line per instance and destination once its result is sent or dead-lettered,
one per refusal (refusals of one peer for one reason: at most one line a minute, `repeats` counting the rest),
one per instance quarantined in failed/ or found in conflict, and one when a destination goes down or comes
back. Lines carry UIDs, times, the result and the model digest, never a patient's name, ID or birth date (the
node never reads those into anything but the result object itself).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

# The only keys an audit line may have: a closed list, so that nothing identifying can slip in.
FIELDS = ("event", "object", "sop_instance_uid", "sop_class_uid", "modality", "calling_ae", "peer", "result",
          "probability", "threshold", "guard_verdict", "reason", "model_sha256", "result_uid", "destination", "status",
          "attempts", "stage", "repeats", "down_s", "received_at", "classified_at", "sent_at", "classify_ms", "sr_ms",
          "send_ms")


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


class Throttle:
    """At most one line per key every `every_s` (a peer hammering the node must not fill the disk with refusals)."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict = {}
        self._held: dict = {}

    def allow(self, key) -> int | None:
        """None: hold this one back; else the number held back since the last line for `key`."""
        t = time.monotonic()
        with self._lock:
            if t - self._last.get(key, -1e18) < self.every_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = t
            return self._held.pop(key, 0)
