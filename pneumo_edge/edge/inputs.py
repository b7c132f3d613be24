"""Finding the inputs of a run: files and folders named by the user, each reached once, odd paths as rows.

    found = find_inputs(["./xrays", "one.dcm"])
    found.files        # to classify, in a stable order
    found.problems     # (path, "error" | "skipped", why): every input gets a row, none is dropped silently

Folders are walked recursively and sorted, symlinked folders followed once; hidden entries and
files without an image extension are skipped with a reason; a FIFO or device is an error (it would
block the decoder).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .dicomdir import dicomdir_row, is_dicom_file, is_dicomdir
from .imaging import IMAGE_SUFFIXES

# ---------------------------------------------------------------- names

def display_path(p: str) -> str:
    """A printable path even when the file name is not valid UTF-8."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """Control characters escaped (\\n, \\x1b, ...) so that a file name cannot rewrite the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def identity(path: str) -> str:
    """One key per file however it is spelled (./x, /abs/x, through a symlink)."""
    return os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)


# ---------------------------------------------------------------- finding the inputs

@dataclass
class Found:
    files: list[str] = field(default_factory=list)  # to classify
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, status, message)
    n_duplicates: int = 0  # files or folders reached a second time: classified once


class _Finder:
    def __init__(self, exclude: set[str]):
        self.found = Found()
        self.exclude = exclude  # this run's own outputs
        self.seen: set[str] = set()  # identities of every file and folder already listed

    def _first_time(self, path: str) -> bool:
        key = identity(path)
        if key in self.seen:
            self.found.n_duplicates += 1
            return False
        self.seen.add(key)
        return True

    def _n_listed(self) -> int:
        return len(self.found.files) + len(self.found.problems) + self.found.n_duplicates

    def add(self, raw: str) -> None:
        if os.path.isdir(raw):
            self.folder(raw)
        elif os.path.lexists(raw):
            self.file(raw, walked=False)
        elif self._first_time(raw):
            self.found.problems.append((raw, "error", "path does not exist"))

    def folder(self, top: str) -> None:
        if identity(top) in self.seen:
            self.found.n_duplicates += 1
            return
        n_before = self._n_listed()
        for root, dirs, names in os.walk(top, followlinks=True, onerror=self._unlistable):
            if root != top and not self._first_time(root):  # a symlink loop, or a folder reached twice
                dirs[:] = []
                continue
            if root == top:
                self.seen.add(identity(top))
            for d in sorted(dirs):
                if d.startswith("."):
                    self.found.problems.append((os.path.join(root, d), "skipped", "hidden folder, not searched"))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                self.file(os.path.join(root, name), walked=True)
        if self._n_listed() == n_before:
            self.found.problems.append((top, "error", "folder contains no files"))

    def _unlistable(self, e: OSError) -> None:
        reason = (e.strerror or str(e)).lower()
        self.found.problems.append((e.filename, "error", f"cannot list folder: {reason}"))

    def file(self, path: str, walked: bool) -> None:
        if not self._first_time(path):
            return
        if is_dicomdir(path):  # a file set's index: its own row; named, its records' images (a walk finds them)
            row, images = dicomdir_row(path)
            self.found.problems.append((path, *row))
            for image in () if walked else images:
                self.file(image, walked=False)
            return
        reason = self._skip_reason(path, walked)
        if reason:
            self.found.problems.append((path, *reason))
        else:
            self.found.files.append(path)

    def _skip_reason(self, path: str, walked: bool) -> tuple[str, str] | None:
        if identity(path) in self.exclude:
            return "skipped", "an output of this run"
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None  # broken link, no permission...: decoding names the reason
        if not stat.S_ISREG(mode):  # a FIFO would block the decoder for ever
            return "error", "not a regular file"
        name = os.path.basename(path)
        if walked and name.startswith("."):
            return "skipped", "hidden file"
        if walked and Path(name).suffix.lower() not in IMAGE_SUFFIXES and not is_dicom_file(path):
            return "skipped", "not an image file extension"
        return None


def find_inputs(paths: list[str], exclude: set[str] = frozenset()) -> Found:
    """Expand folders (recursively, sorted, following symlinks once) and files; odd paths become rows."""
    finder = _Finder(set(exclude))
    for raw in paths:
        finder.add(raw)
    return finder.found
