"""Heat maps on the edge: class-activation maps from the ONNX file alone (numpy + Pillow, no torch).

    model = EdgeModel("export/model.onnx")
    out = model.run(x)                                        # logits, embedding, features
    heat = model.require_cam().maps(out["features"], classes, size)   # (N, S, S) in [0, 1]
    png = overlay_png(resized[0], heat[0])                    # bytes of an RGB PNG

The graph outputs `features` (N, K, h, w): the activated last feature map that global average pooling
turns into the embedding. The metadata field `cam` holds the classifier's weights W (C, K) and bias b.
For this pooled linear head, logit_c = mean_ij sum_k W[c,k] A_k(i,j) + b_c, so the gradient Grad-CAM
averages at that layer is W[c,k] / (h w) at every position, and Grad-CAM there *is* CAM (Zhou et al. 2016):

    map_c = ReLU(sum_k W[c,k] A_k), bilinearly upsampled to the input size (half-pixel centres, torch's
    align_corners=False), then min-max scaled to [0, 1] per image (an all-zero map stays zero).

Explained class: the same target as the twin's Grad-CAM (`pneumo_edge.bundle.gradcam`): the logit of the class the
bundle decides (calibrated threshold), or an explicit target. Not the logit difference W[c] - W[other] that
drives the softmax: with two classes that map is the other class's map negated, and it would no longer
match the twin's Grad-CAM.

This module holds the CAM maths and the pictures (overlays, captions, contact sheets, file names); which map
the outputs ship, and `explain` with onnxruntime, live in `edge.heatmap`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path
from .errors import ModelError
from .metafields import Fields

OUTPUT = "features"  # the graph output CAM reads
MAX_CHANNELS = 65536  # feature channels a head may have
METHOD = "CAM = Grad-CAM at the pooled feature map; map of the decided class's logit"
ALPHA = 0.45  # heat-map opacity over the grey image (as the twin's overlays)
PNG_LEVEL = 1  # zlib level: a 224 px overlay in ~2 ms instead of ~12 ms at level 6, for ~25% more bytes

# matplotlib's "jet" (its segment data), so that edge overlays look like the twin's
_JET = {"r": ((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
        "g": ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
        "b": ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0))}


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


@dataclass(frozen=True)
class CamHead:
    """The classifier weights that turn the `features` output into one map per class."""

    weights: np.ndarray  # (C, K) float32
    bias: np.ndarray  # (C,) float32; not used by the map, kept so that the head is complete

    @classmethod
    def from_linear(cls, weight, bias) -> "CamHead":
        return cls(np.asarray(weight, np.float32), np.asarray(bias, np.float32))

    def to_meta(self) -> dict:
        c, k = self.weights.shape
        return {"output": OUTPUT, "shape": [int(c), int(k)], "weights": _pack(self.weights),
                "bias": _pack(self.bias), "method": METHOD}

    @classmethod
    def from_meta(cls, m: dict, source: str = "model", n_classes: int = 2) -> "CamHead":
        f = Fields(m, "cam", source)
        shape = f.get("shape")
        if (not isinstance(shape, list) or len(shape) != 2 or shape[0] != n_classes
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_CHANNELS for v in shape)):
            raise f.bad("shape", f"must be [{n_classes}, channels], got {shape!r:.60}")
        if f.get("output", OUTPUT) != OUTPUT:
            raise f.bad("output", f"must be '{OUTPUT}', got {f.get('output')!r:.60}")
        f.get("bias")  # named when missing, before the weights' size is checked
        return cls(f.packed("weights", tuple(shape)).astype(np.float32), f.packed("bias", (n_classes,)).astype(np.float32))

    def check_features(self, shape, source: str) -> None:
        """The graph's `features` output must have the head's channel count."""
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != self.weights.shape[1]):
            raise ModelError(f"'{source}': output '{OUTPUT}' has shape {shape}, the metadata's head expects "
                             f"(N, {self.weights.shape[1]}, h, w)")

    def raw(self, features: np.ndarray, classes) -> np.ndarray:
        """ReLU(sum_k W[c,k] A_k) at the feature map's resolution: (N, h, w) float32."""
        features = np.asarray(features, np.float32)
        w = self.weights[np.asarray(classes, np.int64)]  # (N, K)
        return np.maximum(np.einsum("nk,nkhw->nhw", w, features), 0.0)

    def maps(self, features: np.ndarray, classes, size: int | tuple[int, int]) -> np.ndarray:
        """Heat maps (N, H, W) in [0, 1] for the given class per image, upsampled to `size`."""
        h, w = (size, size) if isinstance(size, int) else size
        return unit_scale(upsample_bilinear(self.raw(features, classes), h, w))


# ---------------------------------------------------------------- the maths the twin's Grad-CAM uses

def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation with half-pixel centres, edges clamped (align_corners=False)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def upsample_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, h0, w0) -> (N, h, w), as torch.nn.functional.interpolate(mode="bilinear", align_corners=False)."""
    a = np.asarray(a, np.float32)
    ry = _interp_matrix(a.shape[-2], h).astype(np.float32)
    rx = _interp_matrix(a.shape[-1], w).astype(np.float32)
    return (ry @ a @ rx.T).astype(np.float32)  # two small matrix products per image


def unit_scale(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] per image; a constant map becomes 0."""
    if a.size == 0:
        return a.astype(np.float32)
    flat = a.reshape(len(a), -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return ((flat - lo) / np.maximum(hi - lo, 1e-12)).reshape(a.shape).astype(np.float32)


# ---------------------------------------------------------------- pictures

_LEVELS = np.linspace(0, 1, 256)
_JET_LUT = np.stack([np.interp(_LEVELS, *zip(*_JET[c])) for c in "rgb"], axis=-1).astype(np.float32)  # (256, 3)


def jet(heat: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB float32 in [0, 1] by matplotlib's jet colour map (its 256-entry table, as matplotlib)."""
    idx = np.clip(np.asarray(heat, np.float32) * 255.0, 0, 255).astype(np.uint8)
    return _JET_LUT[idx]


def overlay_rgb(gray: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """A [0, 1] heat map blended over a uint8 grey image: uint8 (H, W, 3)."""
    grey = (np.asarray(gray, np.float32) * np.float32((1 - alpha) / 255.0))[..., None]
    rgb = np.clip(grey + np.float32(alpha) * jet(heat), 0, 1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1, or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay_image(gray: np.ndarray, heat: np.ndarray, caption: list[str] | tuple[str, ...] = (), scale: int = 1):
    """The overlay as a PIL image, `scale` times the input size, with optional caption lines beneath."""
    img = Image.fromarray(overlay_rgb(gray, heat), "RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.BILINEAR)
    if not caption:
        return img
    line, font = 13, _font(11)
    caption = [part for text in caption for part in _wrap(text, font, img.width - 8)]
    sheet = Image.new("RGB", (img.width, img.height + line * len(caption) + 6), (20, 20, 20))
    sheet.paste(img, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(caption):
        draw.text((4, img.height + 3 + i * line), text, fill=(235, 235, 235), font=font)
    return sheet


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels: a caption must be read whole, not cut at the picture's edge."""
    lines, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}".strip()
        if cur and font.getlength(trial) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + [cur]


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def overlay_png(gray: np.ndarray, heat: np.ndarray, caption: list[str] | tuple[str, ...] = (),
                scale: int = 1) -> bytes:
    return png_bytes(overlay_image(gray, heat, caption, scale))


def write_png(path: str | os.PathLike, data: bytes) -> Path:
    """Atomic: a reader never sees half a PNG."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def caption_for(label: str, probability: float, threshold: float, meaning: str) -> list[str]:
    """The decision, then what the map means (`edge.heatmap.caption`)."""
    return [f"P(pneumonia) {probability:.3f} (threshold {threshold:.3f}) -> {label}", meaning]


def contact_sheet(images: list, cols: int = 3, pad: int = 6):
    """Overlays (PIL images) tiled in a grid."""
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    cw, ch = max(i.width for i in images), max(i.height for i in images)
    sheet = Image.new("RGB", (cols * (cw + pad) + pad, rows * (ch + pad) + pad), (255, 255, 255))
    for n, img in enumerate(images):
        r, c = divmod(n, cols)
        sheet.paste(img, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return sheet


# ---------------------------------------------------------------- file names

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def heatmap_name(path: str | os.PathLike) -> str:
    """A safe PNG name for one input: its cleaned stem plus a hash of its real path.

    Only [A-Za-z0-9._-], no leading dot, at most ~90 characters: never a separator, never '..', never
    hidden. Distinct files (by real path) get distinct names; the same file always gets the same name.
    """
    raw = os.fspath(path)
    key = os.path.realpath(raw) if os.path.exists(raw) else os.path.abspath(raw)
    digest = hashlib.sha1(os.fsencode(key)).hexdigest()[:12]
    stem = _UNSAFE.sub("_", Path(raw).stem).strip("._-")[:60] or "image"
    return f"{stem}-{digest}.heatmap.png"


def heatmap_path(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    folder = Path(folder)
    out = folder / heatmap_name(path)
    assert out.parent == folder  # by construction: the name has no separator
    return out


def overlay_names(images: list[str], suffix: str = ".gradcam.png") -> list[str]:
    """One PNG name per input for `explain`: the file stem, plus a short hash of the path where stems collide."""
    stems = [Path(src).stem for src in images]
    shared = Counter(s.casefold() for s in stems)  # case-insensitive file systems collide too
    names, used = [], set()
    for i, (src, stem) in enumerate(zip(images, stems)):
        if shared[stem.casefold()] > 1:
            stem += "-" + hashlib.sha1(os.fsencode(os.path.abspath(src))).hexdigest()[:8]
        if stem.casefold() in used:  # the same path given twice
            stem += f"-{i}"
        used.add(stem.casefold())
        names.append(f"{stem}{suffix}")
    return names


# ---------------------------------------------------------------- helpers for explain (edge.heatmap, gradcam)

def rejected_record(src, scored) -> dict:
    """The record of an image the guard refused: no heat map, the check that refused it."""
    return {"path": str(src), **scored.fields(), "error": None}


def target_index(labels: list[str], target: str | None) -> int | None:
    """The class `--target` names (any case), or None: explain the class the bundle decides."""
    if target is None:
        return None
    if target.upper() not in labels:
        raise ModelError(f"--target must be one of {', '.join(labels)}")
    return labels.index(target.upper())
