"""A spooled instance's header, read within bounds and checked before anything is made from it.

    header = read_header(path, max_bytes)     # a pydicom Dataset without pixels; HeaderError: why not

Read the way `infer` reads a DICOM (edge.imaging): pydicom's validation set to ignore invalid values and its
warnings kept out of the log (`quiet_pydicom`: the character set, dates and names are judged later, by the
report, never here), every read within the file (`BoundedFile`), and values above DEFER_BYTES left on disk and
then dropped (the report copies patient and study attributes, never a megabyte private element). A deflated
data set is inflated only as far as its header: at most HEADER_BYTES, however far the stream would expand (the
pixels, and a deflate bomb, are the decoder's business: `infer`'s own bounded inflation refuses a bomb there).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import (
    _at_pixel_data,
    _read_file_meta_info,
    read_dataset,
    read_preamble,
)

from ..dicom_bounds import DEFER_BYTES, BoundedFile
from ..errors import PneumoEdgeError
from ..imaging import quiet_pydicom, scrub
from .uids import valid_uid

HEADER_BYTES = 16 << 20  # of a deflated data set, inflated to find its header (real headers: a few kB)
DEFLATED = "1.2.840.10008.1.2.1.99"
# the UIDs a result is filed and referenced under: each must be a valid UID, or no result can be made
UID_ATTRIBUTES = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


class HeaderError(PneumoEdgeError):
    """No result can be filed for this instance; the message names attributes, never their values."""


def read_header(path: Path, max_bytes: int):
    """The header of the spooled instance at `path`, checked (`check_header`); HeaderError when unusable."""

    quiet_pydicom()
    size = path.stat().st_size
    if size > max_bytes:
        raise HeaderError(f"the instance holds {size:,} bytes, over the limit of {max_bytes:,}")
    try:
        with BoundedFile(path) as f:
            read_preamble(f, False)
            meta = _read_file_meta_info(f)
            if meta.get("TransferSyntaxUID") == DEFLATED:
                ds = _deflated_header(f, meta)
            else:
                f.seek(0)
                ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=DEFER_BYTES)
    except HeaderError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types; its text can quote header values
        raise HeaderError(f"the header is unreadable ({e.__class__.__name__}: {scrub(str(e))})") from None
    _drop_deferred(ds)
    check_header(ds)
    return ds


def _deflated_header(f, meta):
    """The data set of a deflated file up to its pixel data, from at most HEADER_BYTES of inflated stream."""

    inflate, out = zlib.decompressobj(-zlib.MAX_WBITS), bytearray()
    while len(out) < HEADER_BYTES and not inflate.eof:
        chunk = inflate.unconsumed_tail or f.read(min(1 << 16, f.size - f.tell()))
        if not chunk:
            break
        out += inflate.decompress(chunk, HEADER_BYTES - len(out))
    truncated = len(out) >= HEADER_BYTES and not inflate.eof
    try:
        ds = read_dataset(DicomBytesIO(bytes(out)), False, True, stop_when=_at_pixel_data, defer_size=DEFER_BYTES)
    except Exception:  # a header cut off by the bound, or a corrupt stream
        if truncated:
            raise HeaderError(f"the deflated header is larger than {HEADER_BYTES >> 20} MB") from None
        raise
    ds.file_meta = meta
    return ds


def _drop_deferred(ds) -> None:
    """Values left on disk (over DEFER_BYTES) point into a file that is closed now: not part of the header."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if getattr(elem, "value", b"") is None and getattr(elem, "length", 0):
            del ds[tag]


def _raw_uid(ds, name: str) -> str:
    """A UID as stored, only its NUL padding removed: pydicom strips trailing spaces and newlines on reading, so
    "1.2.3\\n" would read as a valid "1.2.3" that is not the value the file carries."""
    raw = ds.get_item(name).value
    if isinstance(raw, bytes):
        return raw.rstrip(b"\0").decode("ascii", "replace")
    return str(raw or "")


def check_header(ds) -> None:
    """The UIDs a result needs are valid, and the data set is the instance it was sent as (the C-STORE command's
    SOP Class and Instance UIDs, kept in the spooled file's meta)."""
    for name in UID_ATTRIBUTES:
        if name not in ds:
            raise HeaderError(f"the header has no {name}")
        if not valid_uid(_raw_uid(ds, name)):
            raise HeaderError(f"the header's {name} is not a valid UID")
    meta = getattr(ds, "file_meta", None) or {}
    for name, sent in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if sent in meta and str(meta[sent].value) != str(ds.get(name)):
            raise HeaderError(f"the data set's {name} differs from the one it was sent as (the C-STORE command's)")
