"""Reading a DICOM bounded by the file, not by what its header declares.

pydicom believes every declared length: it reads each element's value whole before anything can be checked, so
a small file that declares a 1 GiB element, or a sparse one that holds it as a hole, costs a gigabyte; an
encapsulated frame is decoded at whatever size its own JPEG header states, whatever Rows and Columns say.
Here:
- `BoundedFile` is what pydicom reads through: a read or a seek that would pass the end of the file by more
  than a tag's worth is an ImageError before anything is read;
- `DEFER_BYTES`: values larger than this are left on disk (pydicom's defer_size) and read only if asked for;
  the decoder asks only for the pixel data, whose declared size must match Rows x Columns (`check_native_size`);
- `check_frame`: the first encapsulated frame's own width and height (JPEG, JPEG-LS and JPEG 2000 headers) must
  be Rows x Columns and within the pixel limit, before any decoder sees it.
"""

from __future__ import annotations

import io
import os
import struct
from itertools import islice

from pydicom.encaps import generate_fragments

from .errors import ImageError

DEFER_BYTES = 1 << 20  # values above 1 MB stay on disk unless needed (only the pixel data is)
OVERREAD_SLACK = 1024  # reads this far past the end are pydicom probing for the next tag, not a declared value
PIXEL_SLACK = 1 << 16  # native pixel data may carry this much padding beyond Rows x Columns


class BoundedFile(io.RawIOBase):
    """A read-only view of a file or bytes that refuses reads and seeks past its end."""

    def __init__(self, source):
        super().__init__()
        if isinstance(source, (bytes, bytearray)):
            self._f, self._own = io.BytesIO(source), True
            self.size = len(source)
        elif hasattr(source, "read"):
            self._f, self._own = source, False
            here = source.tell()
            self.size = source.seek(0, os.SEEK_END)
            source.seek(here)
        else:
            self._f, self._own = open(source, "rb"), True
            self.size = os.fstat(self._f.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: 0, os.SEEK_CUR: self._f.tell(), os.SEEK_END: self.size}[whence] + offset
        if target > self.size + OVERREAD_SLACK:
            raise _past_end(target - self._f.tell(), self.size - self._f.tell())
        return self._f.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._f.tell()
        if n is not None and n > left + OVERREAD_SLACK:
            raise _past_end(n, left)
        return self._f.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._own and not self._f.closed:
            self._f.close()
        super().close()


def _past_end(declared: int, left: int) -> ImageError:
    return ImageError(f"DICOM element declares {declared:,} bytes but the file has {max(0, left):,} left: "
                      "refused before reading")


def check_native_size(ds, rows: int, cols: int, samples: int) -> None:
    """Uncompressed pixel data may not be larger than Rows x Columns needs (it would all be read)."""
    try:
        raw = ds.get_item("PixelData")
    except KeyError:
        return
    length = getattr(raw, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return
    bits = int(ds.get("BitsAllocated") or 8)
    needed = rows * cols * samples * max(1, bits // 8) if bits >= 8 else (rows * cols * samples + 7) // 8
    if length > needed + PIXEL_SLACK:
        raise ImageError(f"DICOM PixelData holds {length:,} bytes but Rows x Columns need {needed:,}")


# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic) and JPEG-LS's SOF55
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def frame_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG, JPEG-LS or JPEG 2000 codestream declares, or None for other data (RLE)."""
    if frame[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(frame):
            if frame[i] != 0xFF:
                return None
            marker = frame[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (seg,) = struct.unpack(">H", frame[i + 2:i + 4])
            if marker in _SOF:
                h, w = struct.unpack(">HH", frame[i + 5:i + 9])
                return w, h
            i += 2 + seg
        return None
    at = frame.find(b"\xff\x4f\xff\x51")  # J2K SOC + SIZ, bare or inside a JP2 box
    if 0 <= at < 4096 and at + 24 <= len(frame):
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", frame[at + 8:at + 24])
        return xsiz - xo, ysiz - yo
    return None


def check_frame(ds, rows: int, cols: int, max_pixels: int) -> None:
    """The first encapsulated frame's declared size must be the header's, and within the limit."""
    try:  # items: the basic offset table, then the first frame's first fragment (where its header is)
        items = list(islice(generate_fragments(ds.PixelData), 2))
    except Exception:  # noqa: BLE001 - malformed fragments: the decoder reports them
        return
    if len(items) < 2:
        return
    first = items[1]
    size = frame_size(first)
    if size is None:
        return
    w, h = size
    if w * h > max_pixels:
        raise ImageError(f"DICOM's compressed frame declares {w}x{h} pixels (limit {max_pixels:,}): "
                         "refused before decoding")
    if (w, h) != (cols, rows):
        raise ImageError(f"DICOM's compressed frame declares {w}x{h} pixels but Rows x Columns say "
                         f"{cols}x{rows}: refused before decoding")
