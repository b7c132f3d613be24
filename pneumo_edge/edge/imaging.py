"""Decode any X-ray file to 8-bit grayscale and turn it into model input.

This module is the single preprocessing path: training, evaluation, the ONNX
parity gate and `pneumo-edge infer` all call `load_gray` then `to_input`, so an
exported model sees exactly the pixels its PyTorch twin saw. It imports no torch.

    gray = load_gray("xray.dcm", size=224)      # uint8 (H, W)
    x = to_input(gray, PreprocessSpec())        # float32 (1, 224, 224)
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

# Refuse decompression bombs as a per-file error instead of Pillow's warning.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
MIN_SIDE = 8  # smaller inputs carry no diagnostic content


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


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Min-max a high-bit-depth array to 0..255 (X-ray PNG/TIFF/DICOM use 10-16 bits)."""
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _load_dicom(source) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as e:  # pragma: no cover - pydicom is a dependency
        raise ImageError("reading DICOM needs pydicom (pip install pydicom)") from e
    try:
        ds = pydicom.dcmread(source)
    except Exception as e:
        raise ImageError(f"not a readable DICOM file ({e.__class__.__name__}: {e})") from e
    if "PixelData" not in ds:
        raise ImageError("DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ImageError(f"cannot decode DICOM pixel data ({e})") from e
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM (rare): use luminance
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)
    out = _scale_to_uint8(np.asarray(arr))
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
        return _scale_to_uint8(np.asarray(img)), 0.0
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: transparent padding should read as empty background.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    colour = chroma(img) if img.mode not in ("L", "1") else 0.0
    return np.asarray(img.convert("L")), colour


def load_gray(source: str | os.PathLike | bytes, size: int | None = None) -> np.ndarray:
    """Decode a file path or raw bytes to a uint8 (H, W) grayscale array."""
    return load_image(source, size)[0]


def load_image(source: str | os.PathLike | bytes, size: int | None = None) -> tuple[np.ndarray, float]:
    """Decode to (uint8 (H, W) grayscale, chroma of the original colours).

    `size` lets large JPEGs decode at a reduced scale (never below `size`), which
    is several times faster and changes nothing for images already near `size`.
    Raises ImageError with a one-line reason for anything that is not an image.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = "<bytes>"
        if not data:
            raise ImageError("empty file (0 bytes)")
        stream = io.BytesIO(data)
        is_dicom = len(data) > 132 and data[128:132] == b"DICM"
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
        is_dicom = path.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM"

    colour = 0.0
    if is_dicom:
        gray = _load_dicom(stream)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(stream) as img:
                    w, h = img.size
                    if w * h > MAX_PIXELS:
                        raise ImageError(f"image too large ({w}x{h} pixels, limit {MAX_PIXELS:,})")
                    if size and img.format == "JPEG":
                        img.draft(img.mode, (size, size))  # DCT-domain downscale, keeps >= size
                    img.load()
                    gray, colour = _pil_to_gray(img)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large (decompression-bomb limit): {e}") from e
        except Image.UnidentifiedImageError as e:
            raise ImageError("not an image (unrecognised format)") from e
        except PermissionError as e:
            raise ImageError("permission denied") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"corrupt or truncated image ({e})") from e
    if gray.ndim != 2:
        raise ImageError(f"unexpected pixel layout {gray.shape} in {name}")
    if min(gray.shape) < MIN_SIDE:
        raise ImageError(f"image too small ({gray.shape[1]}x{gray.shape[0]} pixels)")
    return gray, colour


RESIZE_RULES = ("center-crop-bilinear", "squash-bilinear")


def resize_gray(gray: np.ndarray, size: int, rule: str = "center-crop-bilinear") -> np.ndarray:
    """To size x size with Pillow's bilinear filter (uint8 in, uint8 out), by the named rule."""
    if rule not in RESIZE_RULES:
        raise ValueError(f"unknown resize rule '{rule}' (known: {', '.join(RESIZE_RULES)})")
    if gray.shape == (size, size):
        return gray
    h, w = gray.shape
    box = None
    if rule == "center-crop-bilinear":
        side = min(h, w)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR, box=box))


def normalize(resized: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (..., S, S) -> float32 (..., 1, S, S) with the spec's mean/std."""
    x = resized.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    return x[..., None, :, :]


def to_input(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Decoded grayscale -> one float32 (1, S, S) model input."""
    return normalize(resize_gray(gray, spec.size, spec.resize), spec)
