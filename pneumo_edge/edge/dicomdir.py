"""DICOM media (PS3.10): files without a suffix, recognised by their preamble, and DICOMDIR file sets.

A CD or USB export from a PACS holds a DICOMDIR (the file set's index) and files with 8-character names
and no suffix. `infer` recognises such a file by the 128-byte preamble followed by b"DICM" (the PS3.10
file format itself, not guessing from content), and follows a DICOMDIR's records to the images it lists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from .errors import ImageError

PREAMBLE = 128
MAGIC = b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a PS3.10 file: 128 bytes of preamble, then "DICM"."""
    try:
        with open(path, "rb") as f:
            head = f.read(PREAMBLE + len(MAGIC))
    except OSError:
        return False
    return head[PREAMBLE:] == MAGIC


def is_dicomdir(path: str | os.PathLike) -> bool:
    return os.path.basename(path).upper() == "DICOMDIR" and is_dicom_file(path)


def file_set_images(path: str | os.PathLike) -> list[str]:
    """The files a DICOMDIR's IMAGE records name, as paths beside it (in record order)."""
    root = Path(path).parent
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        records = ds.DirectoryRecordSequence
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a malformed file
        raise ImageError(f"unreadable DICOMDIR ({e.__class__.__name__}: {e})") from None
    out = []
    for rec in records:
        if str(rec.get("DirectoryRecordType", "")).upper() != "IMAGE" or "ReferencedFileID" not in rec:
            continue
        parts = rec.ReferencedFileID
        parts = [parts] if isinstance(parts, str) else list(parts)
        if any(p in ("", ".", "..") or "/" in p for p in parts):  # a record must not point outside the file set
            continue
        out.append(str(root.joinpath(*parts)))
    return out


def dicomdir_row(path: str | os.PathLike) -> tuple[tuple[str, str], list[str]]:
    """A DICOMDIR's own row (status, message) for `infer`, and the images its records name."""
    try:
        images = file_set_images(path)
    except ImageError as e:
        return ("error", str(e)), []
    return ("skipped", f"DICOMDIR: the index of a DICOM file set ({len(images)} images, each read from its own "
                       "file)"), images
