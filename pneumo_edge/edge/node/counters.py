"""What the node's status line counts: totals since start, and rates over a recent window (the last RATE_WINDOW_S
seconds), so a node that ran fast all night and stalled a minute ago shows the stall, not the night's average."""

from __future__ import annotations

import threading
import time
from collections import deque

RATE_WINDOW_S = 60.0


class Counters:
    """Totals and recent events per name; thread-safe. Memory: one timestamp per event of the last window."""

    NAMES = ("received", "classified", "sent", "failed", "conflicts")
    RATED = ("received", "classified", "sent")

    def __init__(self, window_s: float = RATE_WINDOW_S, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self.window_s, self.clock = window_s, clock
        self.values = dict.fromkeys(self.NAMES, 0)
        self._recent: dict[str, deque] = {name: deque() for name in self.RATED}
        self.started = clock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n
            if name in self._recent:
                t = self.clock()
                self._recent[name].extend([t] * n)
                self._trim(name, t)

    def _trim(self, name: str, t: float) -> None:
        recent = self._recent[name]
        while recent and recent[0] <= t - self.window_s:
            recent.popleft()

    def rates(self) -> dict[str, float]:
        """Events per second over the last window (over the time since start while the node is younger)."""
        with self._lock:
            t = self.clock()
            span = max(1e-9, min(self.window_s, t - self.started))
            out = {}
            for name in self.RATED:
                self._trim(name, t)
                out[f"{name}_per_s"] = round(len(self._recent[name]) / span, 3)
            return out
