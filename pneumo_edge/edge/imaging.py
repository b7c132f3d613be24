"""Decode any X-ray file to 8-bit grayscale and turn it into model input.

This module is the single preprocessing path: training (`data.decode_all`), evaluation, the ONNX
parity gate, `infer`, the API, the service and `validate` all decode with `load_image` (or `load_gray`),
turn the film into the model's square with `resize_gray`, and normalise with `normalize`, so an
exported model sees exactly the pixels its PyTorch twin saw. It imports no torch.

    gray, chroma = load_image("xray.dcm", size=224)            # uint8 (H, W), colour measure for the guard
    resized = resize_gray(gray, 224, "center-crop-bilinear")   # uint8 (224, 224)
    x = normalize(resized[None], PreprocessSpec())             # float32 (1, 1, 224, 224)

Accepted: DICOM (pydicom) and JPEG, PNG, BMP, TIFF (Pillow, restricted to those four
decoders, judged by content: a PNG named .jpg opens, a GIF or PostScript named .png does not).

Memory: MAX_PIXELS (64 M) bounds every decode; peak memory is MAX_PIXELS x the bytes
per pixel of the working copies, measured: ~5 B/pixel for grey 8-bit JPEG/PNG (~330 MB at
the limit), ~12 B/pixel for colour JPEG/PNG, 16-bit PNG/TIFF and plain DICOM (~0.8 GB),
~31 B/pixel for DICOM with a rescale or window (pydicom works in float64; ~2 GB).
A 3000 x 3000 film needs a seventh of that.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps
from pydicom import config
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .dicom_bounds import DEFER_BYTES, BoundedFile, check_frame, check_native_size
from .dicom_terms import BODY_PARTS, MODALITIES, UNRECOGNISED, shown
from .errors import ImageError
from .population import age_from_header

# Refuse decompression bombs as a per-file error instead of Pillow's warning.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# The one list of accepted formats. Folder scans keep files with these suffixes; the decoder
# opens only these formats, judged by content (a PNG named .jpg still opens, a GIF never does).
SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".dcm": "DICOM", ".dicom": "DICOM"}
IMAGE_SUFFIXES = frozenset(SUFFIX_FORMATS)
FORMATS = tuple(dict.fromkeys(SUFFIX_FORMATS.values()))  # JPEG, PNG, BMP, TIFF, DICOM
PIL_FORMATS = tuple(f for f in FORMATS if f != "DICOM")  # Pillow tries no other decoder
MIN_SIDE = 8  # smaller inputs carry no diagnostic content

# Refused formats named from their first bytes, so the message says what the file is.
_OTHER_FORMATS = ((0, b"GIF8", "GIF"), (8, b"WEBP", "WebP"), (0, b"%!PS", "PostScript/EPS"),
                  (0, b"\xc5\xd0\xd3\xc6", "EPS"), (0, b"8BPS", "PSD"), (0, b"\0\0\1\0", "ICO"),
                  (0, b"%PDF", "PDF"), (4, b"jP  ", "JPEG 2000"), (0, b"\xffO\xffQ", "JPEG 2000"),
                  (4, b"ftyp", "HEIF/AVIF"), (0, b"qoif", "QOI"))

# High-bit-depth inputs without a DICOM window: stretch these percentiles, as viewers do.
ROBUST_PERCENTILES = (0.5, 99.5)

# DICOM: projection radiographs (OT: secondary capture, often a scanned film) or no modality.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", ""})
_CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "LUNG")
_NOT_CHEST = frozenset(
    "HEAD SKULL BRAIN FACE JAW TMJ SINUS ORBIT NECK SPINE CSPINE TSPINE LSPINE SSPINE SACRUM COCCYX "
    "ABDOMEN PELVIS HIP SHOULDER CLAVICLE HUMERUS ARM ELBOW FOREARM WRIST HAND FINGER THUMB "
    "LEG FEMUR KNEE TIBIA FIBULA ANKLE FOOT HEEL TOE BREAST EXTREMITY KIDNEY BLADDER".split())


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded grayscale image becomes model input; stored in every bundle."""

    size: int = 224  # square input side; the image is resized (squashed) to size x size
    mean: float = 0.449  # grey-level mean of the ImageNet statistics
    std: float = 0.226
    channels: int = 1
    # center-crop: the central square, resized. Squashing the whole frame instead would keep the aspect
    # ratio in the pixels, and in this dataset width/height alone separates the classes (train AUROC 0.87).
    resize: str = "center-crop-bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(**{k: d[k] for k in ("size", "mean", "std", "channels", "resize") if k in d})


def _scale_to_uint8(a: np.ndarray, robust: bool = False) -> np.ndarray:
    """Stretch a high-bit-depth array (X-ray PNG/TIFF/DICOM use 10-16 bits) to 0..255.

    robust: stretch the ROBUST_PERCENTILES and clip beyond them, so one hot or dead pixel
    cannot squeeze the whole film into a few grey levels. Otherwise min-max, the exact
    arithmetic 8-bit DICOMs have always had.
    """
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ImageError("image has NaN or infinite pixel values")
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if robust and hi > lo:
        p_lo, p_hi = (float(v) for v in np.percentile(a, ROBUST_PERCENTILES))
        if p_hi > p_lo:  # else over 99% of pixels share one value: keep the full range
            lo, hi = p_lo, p_hi
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    a -= lo  # in place: the float32 copy is the largest buffer of a decode
    a *= 255.0 / (hi - lo)
    np.round(a, out=a)
    return np.clip(a, 0, 255, out=a).astype(np.uint8)


def _multi_frame(n: int) -> ImageError:
    return ImageError(f"multi-frame image ({n} frames): one frame per file is supported")


def _too_large(w: int, h: int) -> ImageError:
    return ImageError(f"image too large ({w}x{h} pixels, limit {MAX_PIXELS:,})")


def _header_int(ds, name: str, default: int) -> int:
    value = ds.get(name)
    try:
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError) as e:  # the value itself is not shown: a header can hold anything
        raise ImageError(f"invalid DICOM header {name} (not an integer)") from e


def _coded(attr: str, value: str, terms: frozenset[str]) -> str:
    """A coded attribute's value for a message: the defined term itself, else only the attribute's name."""
    v = shown(value, terms)
    return v if v != UNRECOGNISED else f"({attr}: {UNRECOGNISED})"


def scrub(message: str) -> str:
    """A decoder's message without what it quotes (quoted text can be header values)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", " ".join(message.split()))


def _check_dicom_header(ds) -> None:
    """Refuse, before any pixel is decoded, what is not one chest radiograph of sane size."""
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality not in RADIOGRAPH_MODALITIES:
        raise ImageError(f"DICOM modality {_coded('Modality', modality, MODALITIES)} is not a chest radiograph")
    part = str(ds.get("BodyPartExamined") or "").strip().upper()
    if set(re.findall(r"[A-Z]+", part)) & _NOT_CHEST and not any(w in part for w in _CHEST_WORDS):
        raise ImageError(f"DICOM body part {_coded('BodyPartExamined', part, BODY_PARTS)} is not a chest radiograph")
    if "PixelData" not in ds:
        raise ImageError("DICOM file has no pixel data")
    frames = _header_int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise _multi_frame(frames)
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    samples = _header_int(ds, "SamplesPerPixel", 1)
    if rows * cols * samples > MAX_PIXELS:  # pixel_array would allocate it all
        raise _too_large(cols, rows)
    uid = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    try:
        encapsulated = uid is not None and uid.is_encapsulated
    except ValueError:  # not a transfer syntax at all: _check_decoder says so
        return
    if encapsulated:
        check_frame(ds, rows, cols, MAX_PIXELS)  # a JPEG's own header can claim far more than Rows x Columns
    else:
        check_native_size(ds, rows, cols, samples)


DEFLATE_CAP = MAX_PIXELS * 4 + (16 << 20)  # what a deflated DICOM may expand to: 4 bytes a pixel, plus header room


def _check_deflated(source) -> None:
    """Refuse a deflate-compressed DICOM that would expand past DEFLATE_CAP, without holding the expansion.

    pydicom inflates the whole data set in memory before any header can be read, so a 0.5 MB file that
    declares 256 Mpx would cost a gigabyte before the size check refused it. This streams the inflation
    in bounded pieces and only counts bytes.
    """

    fp = source if hasattr(source, "read") else open(source, "rb")
    start = fp.tell()
    try:
        try:
            read_preamble(fp, False)
            deflated = _read_file_meta_info(fp).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        except Exception:  # not a well-formed file meta: pydicom's own reader reports it  # noqa: BLE001
            return
        if not deflated:
            return
        inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflate.eof and (chunk := fp.read(1 << 20)):
            while chunk and not inflate.eof:  # bytes after the end of the stream (padding) are not data
                total += len(inflate.decompress(chunk, 1 << 22))
                if total > DEFLATE_CAP:
                    raise ImageError(f"deflated DICOM expands past {DEFLATE_CAP >> 20} MB "
                                     f"(limit {MAX_PIXELS:,} pixels): refused before decoding")
                chunk = inflate.unconsumed_tail
    except zlib.error as e:
        raise ImageError(f"corrupt deflated DICOM ({e})") from None
    finally:
        if fp is source:
            fp.seek(start)
        else:
            fp.close()


def _check_decoder(ds) -> None:
    """Name the missing decoder plugin for compressed pixel data, instead of pydicom's traceback text."""
    uid = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if uid is None or not uid.is_encapsulated:
        return
    known = uid.name != str(uid)  # a registered UID has a name; anything else is not repeated
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as e:
        raise ImageError(f"DICOM transfer syntax {uid.name if known else '(' + UNRECOGNISED + ')'} "
                         "is not supported") from e
    if not decoder.is_available:
        raise ImageError(f"DICOM {uid.name} needs a decoder plugin that is not installed: "
                         + "; ".join(decoder.missing_dependencies))


def quiet_pydicom() -> None:
    """pydicom's validation warnings quote header values ("Invalid value for VR IS: 'J SMITH'"): keep them out
    of the terminal and of the application's logs. Set once, for pydicom's own modules only."""
    config.settings.reading_validation_mode = config.IGNORE  # invalid values are judged here, by attribute name
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").propagate = False


def _header_age(ds) -> float | None:
    """The patient's age from the header (edge.population), or None: a value that is not an age is ignored."""
    try:
        return age_from_header(*(ds.get(k) for k in ("PatientAge", "PatientBirthDate", "StudyDate",
                                                     "AcquisitionDate")))
    except Exception:  # noqa: BLE001 - a malformed value: no age, never a failed decode (nor its text shown)
        return None


def _load_dicom(source) -> tuple[np.ndarray, float | None]:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as e:  # pragma: no cover - pydicom is a dependency
        raise ImageError("reading DICOM needs pydicom (pip install pydicom)") from e
    quiet_pydicom()
    _check_deflated(source)
    with BoundedFile(source) as bounded:  # every read within the file; big non-pixel values never read
        try:
            ds = pydicom.dcmread(bounded, defer_size=DEFER_BYTES)
        except ImageError:
            raise
        except Exception as e:  # pydicom raises many types for a malformed file; its text can quote header values
            raise ImageError(f"not a readable DICOM file ({e.__class__.__name__}: {scrub(str(e))})") from e
        _check_dicom_header(ds)
        _check_decoder(ds)
        return _dicom_pixels(ds, apply_modality_lut, apply_voi_lut), _header_age(ds)


def _dicom_pixels(ds, apply_modality_lut, apply_voi_lut) -> np.ndarray:
    """The checked data set's pixels as uint8 grey, bone bright."""
    try:
        with warnings.catch_warnings():  # as on the plain-image path: Pillow's bomb warning is a refusal
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            arr = ds.pixel_array
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large (decompression-bomb limit): {e}") from e
    except Exception as e:  # pydicom and its plugins raise many types for bad pixel data
        why = scrub(str(e))
        if "decompression bomb" in why:  # Pillow's plugin, its bomb warning made an error above
            raise ImageError("image too large (decompression-bomb limit): the compressed frame holds more pixels "
                             f"than {MAX_PIXELS:,}") from e
        if "12-bit precision" in why:  # GDCM and Pillow lack it; the one pip decoder that has it is GPL-licensed
            raise ImageError("12-bit JPEG DICOM needs the decoder plugin pylibjpeg-libjpeg "
                             "(GPL-3.0, not installed by default: pip install pylibjpeg pylibjpeg-libjpeg)") from e
        raise ImageError(f"cannot decode DICOM pixel data ({why})") from e
    if arr.ndim == 3:  # colour DICOM (rare; multi-frame was refused above): use luminance
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    windowed = bool(ds.get("VOILUTSequence")) or ds.get("WindowCenter") is not None
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    high_bit = _header_int(ds, "BitsStored", 8) > 8
    out = _scale_to_uint8(np.asarray(arr), robust=high_bit and not windowed)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1 stores bone dark; the model was trained on bone bright
    return out


def chroma(img: Image.Image) -> float:
    """Mean (max - min) over RGB on a thumbnail, in [0, 1]: 0 for any grey image."""
    thumb = img.convert("RGB")
    thumb.thumbnail((64, 64))
    a = np.asarray(thumb, np.int16)
    return float((a.max(axis=2) - a.min(axis=2)).mean() / 255.0)


def _pil_to_gray(img: Image.Image) -> tuple[np.ndarray, float]:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _scale_to_uint8(np.asarray(img), robust=True), 0.0
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: transparent padding should read as empty background.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    colour = chroma(img) if img.mode not in ("L", "1") else 0.0
    return np.asarray(img.convert("L")), colour


def _load_pil(stream, head: bytes, size: int | None) -> tuple[np.ndarray, float]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=PIL_FORMATS) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise _too_large(w, h)
                # MPO (a JPEG with preview frames, from cameras) keeps frame 0, the image itself
                frames = getattr(img, "n_frames", 1)
                if frames > 1 and img.format != "MPO":
                    raise _multi_frame(frames)
                if size and img.format == "JPEG":
                    img.draft(img.mode, (size, size))  # DCT-domain downscale, keeps >= size
                img.load()
                return _pil_to_gray(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large (decompression-bomb limit): {e}") from e
    except Image.UnidentifiedImageError as e:
        other = next((name for at, magic, name in _OTHER_FORMATS if head[at:at + len(magic)] == magic), None)
        if other:
            raise ImageError(f"unsupported format ({other}); supported: {', '.join(FORMATS)}") from e
        raise ImageError("not an image (unrecognised format)") from e
    except PermissionError as e:
        raise ImageError("permission denied") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from e


class Film(NamedTuple):
    gray: np.ndarray  # uint8 (H, W)
    chroma: float  # colour measure of the original, for the guard
    age_years: float | None  # the patient's age from a DICOM header (edge.population); None: not stated


def load_gray(source: str | os.PathLike | bytes, size: int | None = None) -> np.ndarray:
    """Decode a file path or raw bytes to a uint8 (H, W) grayscale array."""
    return read_film(source, size).gray


def load_image(source: str | os.PathLike | bytes, size: int | None = None,
               name: str | None = None) -> tuple[np.ndarray, float]:
    """Decode to (uint8 (H, W) grayscale, chroma of the original colours): `read_film` without the header age."""
    film = read_film(source, size, name)
    return film.gray, film.chroma


def read_film(source: str | os.PathLike | bytes, size: int | None = None, name: str | None = None) -> Film:
    """Decode to a Film: grey pixels, chroma of the original colours, and a DICOM header's patient age.

    `size` lets large JPEGs decode at a reduced scale (never below `size`), which
    is several times faster and changes nothing for images already near `size`.
    `name`: for bytes, the file name they came from (a `.dcm` suffix marks DICOM, as it does for a path).
    Raises ImageError with a one-line reason for anything that is not an image.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = name or "<bytes>"
        if not data:
            raise ImageError("empty file (0 bytes)")
        stream = io.BytesIO(data)
        head = data[:132]
    else:
        path = Path(source)
        name = path.name
        if path.is_symlink() and not path.exists():
            raise ImageError("broken symbolic link")
        if not path.exists():
            raise ImageError("file does not exist")
        if path.is_dir():
            raise ImageError("is a folder, not a file")
        try:
            if path.stat().st_size == 0:
                raise ImageError("empty file (0 bytes)")
            with open(path, "rb") as f:
                head = f.read(132)
        except PermissionError as e:
            raise ImageError("permission denied") from e
        except OSError as e:
            raise ImageError(f"cannot read file ({e.strerror or e})") from e
        stream = path
    is_dicom = SUFFIX_FORMATS.get(Path(name).suffix.lower()) == "DICOM" or head[128:132] == b"DICM"
    age = None
    if is_dicom:
        (gray, age), colour = _load_dicom(stream), 0.0
    else:
        gray, colour = _load_pil(stream, head, size)
    if gray.ndim != 2:
        raise ImageError(f"unexpected pixel layout {gray.shape} in {name}")
    if min(gray.shape) < MIN_SIDE:
        raise ImageError(f"image too small ({gray.shape[1]}x{gray.shape[0]} pixels)")
    return Film(gray, colour, age)


RESIZE_RULES = ("center-crop-bilinear", "squash-bilinear")


def resize_gray(gray: np.ndarray, size: int, rule: str = "center-crop-bilinear") -> np.ndarray:
    """To size x size with Pillow's bilinear filter (uint8 in, uint8 out), by the named rule."""
    if rule not in RESIZE_RULES:
        raise ValueError(f"unknown resize rule '{rule}' (known: {', '.join(RESIZE_RULES)})")
    if gray.shape == (size, size):
        return gray
    box = input_box(gray.shape, rule)
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR, box=box))


def input_box(shape: tuple[int, int], rule: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the film region `resize_gray` turns into the model's input."""
    h, w = shape
    if rule == "center-crop-bilinear":
        side = min(h, w)
        left, top = (w - side) // 2, (h - side) // 2
        return left, top, left + side, top + side
    return 0, 0, w, h  # squash: the whole film, stretched to a square


def to_unit(resized: np.ndarray) -> np.ndarray:
    """uint8 grey levels -> float32 in [0, 1]."""
    return resized.astype(np.float32) * np.float32(1.0 / 255.0)


def standardize(x01, spec: PreprocessSpec):
    """[0, 1] grey levels -> model input, (x - mean) / std in float32.

    The one normalisation: training applies it to torch tensors (after augmentation),
    inference to numpy arrays, with the same float32 arithmetic.
    """
    return (x01 - np.float32(spec.mean)) / np.float32(spec.std)


def normalize(resized: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (..., S, S) -> float32 (..., 1, S, S) model input."""
    return standardize(to_unit(resized), spec)[..., None, :, :]


def to_input(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Decoded grayscale -> one float32 (1, S, S) model input."""
    return normalize(resize_gray(gray, spec.size, spec.resize), spec)


def pil_to_gray(img: Image.Image) -> tuple[np.ndarray, float]:
    """An image already opened with Pillow (or built from an array), decoded like a file: (grey uint8, chroma)."""
    return _pil_to_gray(img)
