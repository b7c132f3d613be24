"""Progress on long work: a bar on a terminal, a one-line heartbeat every few seconds anywhere else
(a log file, CI, `nohup`), and nothing at all with `--quiet`. Always on standard error, so standard
output stays the command's result.

    with Progress(total=len(files), desc="validate") as bar:
        for f in files:
            ...
            bar.update()
    stage("export", "quantizing to INT8")
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
HEARTBEAT_S = 10.0  # between lines when standard error is not a terminal
_quiet = False


def set_quiet(quiet: bool) -> bool:
    """`--quiet`: no bars, no heartbeats, no stage lines (errors and results still print). Returns the
    previous setting, so a caller can put it back."""
    global _quiet
    before, _quiet = _quiet, quiet
    return before


def _stream():
    return sys.stderr


def stage(command: str, what: str) -> None:
    """One line naming the step a long command has reached: what a log shows between heartbeats."""
    if not _quiet:
        print(f"{command}: {what}", file=_stream(), flush=True)


class Progress:
    """A tqdm bar on a terminal; elsewhere `desc: 120/624 img (19%), 14.2 img/s, 35 s left` every HEARTBEAT_S."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", enabled: bool = True,
                 heartbeat_s: float | None = None, window_s: float | None = None):
        """window_s: the rate over the last window_s seconds (a service running for days), not since the start."""
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.t0 = self.last = time.monotonic()
        self.window_s, self._marks = window_s, deque([(self.t0, 0)])  # (time, n): the last at or before the window, then each update
        stream = _stream()
        self.mode = "off" if (_quiet or not enabled) else ("bar" if stream.isatty() else "beat")
        self.bar, self.postfix = None, ""
        if self.mode == "bar":
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.window_s is not None:
            t = time.monotonic()
            self._marks.append((t, self.n))
            while len(self._marks) > 1 and self._marks[1][0] <= t - self.window_s:
                self._marks.popleft()
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "beat" and time.monotonic() - self.last >= self.heartbeat_s:
            self.last = time.monotonic()
            print(self.line(), file=_stream(), flush=True)

    def set_postfix(self, **values: str) -> None:
        """Extra figures (a running loss): beside the bar, or at the end of each heartbeat."""
        if self.bar is not None:
            self.bar.set_postfix(**values)
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def rate(self) -> float:
        now = time.monotonic()
        if self.window_s is None or now - self.t0 <= self.window_s:
            return self.n / max(now - self.t0, 1e-9)
        start = now - self.window_s  # the count at the window's start: the last mark at or before it
        return (self.n - [n for t, n in self._marks if t <= start][-1]) / self.window_s

    def line(self) -> str:
        rate = self.rate()
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta = f", {left:.0f} s left" if left != float("inf") else ""
            text = (f"{self.desc}: {self.n}/{self.total} {self.unit} ({self.n / self.total:.0%}), "
                    f"{rate:.1f} {self.unit}/s{eta}")
        else:
            text = f"{self.desc}: {self.n} {self.unit}, {rate:.1f} {self.unit}/s"
        return text + (f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "beat" and time.monotonic() - self.t0 >= self.heartbeat_s:
            print(f"{self.desc}: done, {self.n} {self.unit} in {time.monotonic() - self.t0:.0f} s",
                  file=_stream(), flush=True)
            self.mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "img", enabled: bool = True) -> Iterator[T]:
    """Iterate with a Progress."""
    with Progress(total, desc, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update()
