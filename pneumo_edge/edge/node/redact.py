"""What the node's log may hold: its own lines, library lines without what they quote, and warnings and
tracebacks without their text.

Libraries quote header values in what they say: highdicom's warning about a person name without a caret
repeats the name, pydicom's about an invalid value repeats the value, an exception's message the date it could
not parse, and a traceback prints that message. `install()` (what `pneumo-edge listen` runs) routes all of it:
- log records: the node's own loggers (`pneumo_edge.*`, which never format a header value) as they are; any
  other logger's message with its quoted text removed; an exception as its class and where it was raised
  (`describe`), never its message or the traceback text;
- warnings: one line per place in the code that warns, naming the category and that place, never the text;
- a thread or the main program ending in an exception: one line with `describe`, never the traceback;
- pynetdicom's own log: critical only (each refused or failed connection would be a line, and a failing
  destination one per retry: the node names each cause once, in its own words).
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings

from ..imaging import scrub

OWN = "pneumo_edge"
log = logging.getLogger("pneumo_edge.node")
_warned: set = set()


def _short(filename: str) -> str:
    """A source file as `package/module.py`, without the machine's folders."""
    for marker in ("site-packages/", "dist-packages/", "/pneumo_edge/"):
        if marker in filename:
            return ("pneumo_edge/" if marker == "/pneumo_edge/" else "") + filename.rsplit(marker, 1)[1]
    return filename.rsplit("/", 1)[-1]


def describe(exc: BaseException) -> str:
    """`ValueError in highdicom/sr/templates.py:123`: the exception's class and the last line of a library or of
    this package that it passed (not the standard library's `enum.py` a bad value ends in), never its message
    (messages quote values)."""
    tb, last = exc.__traceback__, None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if last is None or any(m in name for m in ("site-packages/", "dist-packages/", "/pneumo_edge/")):
            last = tb
        tb = tb.tb_next
    where = f" in {_short(last.tb_frame.f_code.co_filename)}:{last.tb_lineno}" if last is not None else ""
    return f"{type(exc).__name__}{where}"


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if not record.name.startswith(OWN):
            msg = scrub(msg)
        if record.exc_info and record.exc_info[1] is not None:
            msg += f" [{describe(record.exc_info[1])}]"
        # not super().format(): it would append the traceback, and the traceback the exception's message
        return f"{self.formatTime(record, '%Y-%m-%d %H:%M:%S')} {record.levelname.lower()} {record.name}: {msg}"


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning: the category and the place, once per place; the text is withheld."""
    key = (filename, lineno, category)
    if key in _warned:
        return
    _warned.add(key)
    logging.getLogger(f"{OWN}.warnings").warning(
        "%s at %s:%d (its text is withheld: a library's warning can quote header values)", category.__name__,
        _short(str(filename)), lineno)


def _thread_died(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    log.critical("%s ended on an error: %s", name, describe(args.exc_value))


def _main_died(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    why = describe(exc.with_traceback(tb))
    if isinstance(exc, OSError) and exc.strerror:  # the system's words and a path of the node's: no header text
        why += f": {exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    log.critical("stopped on an unexpected error: %s", why)


def install(stream=None, level: int = logging.INFO) -> logging.Handler:
    """Route this process's logging, warnings and uncaught exceptions through the redaction above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger(OWN).setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    warnings.showwarning = show_warning
    threading.excepthook = _thread_died
    sys.excepthook = _main_died
    return handler
