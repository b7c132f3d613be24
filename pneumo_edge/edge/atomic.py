"""Atomic file writes: write to a temporary name in the same folder, then rename.

A crash or Ctrl-C mid-write leaves the previous file (or nothing), never half a file.
Files that one run appends to for a long time (predictions) are held under an exclusive
lock instead, so that two runs can never interleave their rows in one file.
"""

from __future__ import annotations

import fcntl  # POSIX: the edge boxes run Linux
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError, OutputExistsError


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make artefacts private to their writer
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomic write for libraries that want a file name (safetensors, onnx, matplotlib)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def prepare_out_dir(out: str | os.PathLike, force: bool) -> Path:
    """Refuse a non-empty output folder unless `force`: never clobber silently."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"output folder '{out}' exists and is not empty; use --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def refuse_existing(path: str | os.PathLike, force: bool) -> None:
    """An output file that exists is overwritten only with --force."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"output '{path}' is a folder, not a file")
    if path.exists() and not force:
        raise OutputExistsError(f"'{path}' exists; use --force to overwrite it")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst`: readers see the old `dst` or the whole copy, never a partial one."""
    write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


# ---------------------------------------------------------------- files written by one run at a time

CREATE, UPDATE, REPLACE = "create", "update", "replace"


def open_locked(path: Path, how: str, ours: tuple[str, ...] = (), empty: bool = True) -> BinaryIO:
    """Open `path` read-write under an exclusive lock; a second writer is refused, never waited for.

    CREATE: the file must not exist (O_EXCL: the existence check and the open are one step).
    UPDATE: open or create it, content kept. REPLACE: the content is emptied only once the lock
    is held, so a refused second writer never empties the first one's file, and only if the file is
    empty or begins as one of this project's outputs does (`ours`: their first lines), so that --force
    cannot empty an input or any other file. A symbolic link is never followed (O_NOFOLLOW).
    empty=False: REPLACE checks and locks but leaves the emptying to the caller (several outputs are all
    checked before any is emptied).
    """
    refuse_existing(path, force=True)  # a folder
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if how == CREATE else 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise OutputExistsError(f"'{path}' exists; use --resume to continue it or --force to overwrite") from None
    except OSError as e:
        if os.path.islink(path):
            raise OutputError(f"'{path}' is a symbolic link; outputs are never written through one: "
                              "give the real path") from None
        raise OutputError(f"cannot open '{path}': {e.strerror or e}") from e
    f = os.fdopen(fd, "r+b")
    try:
        _lock(f, path)
        if how == REPLACE:
            _refuse_foreign(f, path, ours)
            if empty:
                f.truncate(0)
    except BaseException:
        f.close()
        raise
    return f


def _refuse_foreign(f: BinaryIO, path: Path, ours: tuple[str, ...]) -> None:
    """--force empties only an empty file or one that begins as one of this project's outputs."""
    if not ours:
        return
    head = f.read(max(len(s) for s in ours)).decode("utf-8", "replace")
    f.seek(0)
    if head and not any(head.startswith(s) or (len(head) < len(s) and s.startswith(head)) for s in ours):
        raise OutputError(f"'{path}' is not a pneumo-edge output, so --force will not overwrite it: "
                          "choose another path, or remove that file yourself")


def replace_locked(path: Path, content: bytes) -> BinaryIO:
    """Atomically replace `path` by `content`; returns the new file, open at its end and already locked.

    The lock is taken before the rename, so no other writer can slip in between; the caller then
    closes its old handle (the old, now nameless file).
    """
    f = None
    try:
        with atomic_path(path) as tmp:
            f = open(tmp, "r+b")
            _lock(f, tmp)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if f is not None:
            f.close()
        raise
    return f


def _lock(f: BinaryIO, path: Path) -> None:
    busy = OutputError(f"'{path}' is being written by another run (it is locked); "
                           "wait for that run or choose another output")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise busy from None
    st, now = os.fstat(f.fileno()), path.stat()
    if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):  # replaced (by a --resume) while we opened it
        raise busy
