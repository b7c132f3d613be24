"""What every guard must refuse, for the fits and the gates that check it: films altered the ways they must
not arrive, and non-X-ray images that can be had offline.

    alterations(films)["inverted grey levels"]          # uint8 model views, altered each way
    ood_images()["text renders"]                        # [(name, grey uint8, chroma), ...]

Numpy and Pillow (with matplotlib's, scikit-image's and pydicom's sample images where installed): the head
refit on the edge install gates its guard with the same set that export's guard report measures.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pneumo_edge.edge.imaging import chroma, load_image

ORIENT_L2 = 1.0  # ridge on standardised embeddings; 0.1 gave the same validation rates


def alterations(x: np.ndarray) -> dict[str, np.ndarray]:
    """Films as they must not be submitted. Horizontal flips are not here: training augments with them."""
    return {"upside down": x[:, ::-1], "rotated 90 degrees": np.rot90(x, 1, (1, 2)),
            "rotated 270 degrees": np.rot90(x, 3, (1, 2)), "inverted grey levels": 255 - x}



def _text_page(rng: np.random.Generator, size=(640, 480)) -> np.ndarray:
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    words = ["patient", "report", "chest", "radiograph", "findings", "impression", "normal", "opacity", "consolidation", "lobe"]
    for row in range(24, size[1] - 20, 18):
        line = " ".join(rng.choice(words, 8))
        draw.text((20, row), line, fill=int(rng.integers(0, 60)))
    return np.asarray(img)


def ood_images(rng_seed: int = 0) -> dict[str, list[tuple[str, np.ndarray, float]]]:
    """Out-of-distribution images that can be had offline, by category: (name, grey uint8, chroma)."""
    rng = np.random.default_rng(rng_seed)
    cats: dict[str, list] = {k: [] for k in ("colour photos", "grey photos", "other medical images",
                                             "noise", "blank and gradient frames", "text renders")}

    def add_photo(name: str, img: Image.Image) -> None:
        rgb = img.convert("RGB")
        cats["colour photos"].append((name, np.asarray(rgb.convert("L")), chroma(rgb)))
        cats["grey photos"].append((name + " (grey)", np.asarray(rgb.convert("L")), 0.0))

    try:  # sample images of the [plots]/[train] extras: absent on the edge install
        from matplotlib import cbook
    except ImportError:
        cbook = None
    if cbook is not None:
        add_photo("grace_hopper", Image.open(cbook.get_sample_data("grace_hopper.jpg")))
    try:
        import skimage.data as sk

        for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "colorwheel", "retina", "cat"):
            try:
                add_photo(n, Image.fromarray(getattr(sk, n)()))
            except Exception:  # some images are downloaded on demand; offline they are absent
                pass
        for n in ("camera", "moon", "coins", "page", "text", "clock", "horse", "brick", "grass", "gravel",
                  "microaneurysms", "cell", "binary_blobs", "checkerboard"):
            try:
                a = getattr(sk, n)()
                a = (a * 255).astype(np.uint8) if a.dtype == bool or a.max() <= 1 else a.astype(np.uint8)
                cats["grey photos"].append((n, a, 0.0))
            except Exception:
                pass
    except ImportError:
        pass
    if cbook is not None:
        import gzip

        mri = np.frombuffer(gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)).read(), "<u2")
        mri = mri.reshape(256, 256).astype(np.float64)
        cats["other medical images"].append(("mri_s1045", (mri / mri.max() * 255).astype(np.uint8), 0.0))
    try:
        from pydicom.data import get_testdata_file

        for n in ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "rtdose_1frame.dcm", "JPEG-lossy.dcm",
                  "JPGExtended.dcm", "examples_ybr_color.dcm", "examples_rgb_color.dcm", "SC_rgb_small_odd.dcm",
                  "MR_small_RLE.dcm"):  # files bundled with pydicom: no download
            try:
                gray, colour = load_image(get_testdata_file(n))
                cats["other medical images"].append((n, gray, colour))
            except Exception:
                pass
    except ImportError:
        pass
    for i in range(10):
        cats["noise"].append((f"uniform{i}", rng.integers(0, 256, (256, 256), dtype=np.uint8), 0.0))
        g = np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8)
        cats["noise"].append((f"gaussian{i}", g, 0.0))
        sp = np.where(rng.random((256, 256)) < 0.5, 0, 255).astype(np.uint8)
        cats["noise"].append((f"salt_pepper{i}", sp, 0.0))
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    for level in (0, 64, 128, 192, 255):
        cats["blank and gradient frames"].append((f"blank{level}", np.full((256, 256), level, np.uint8), 0.0))
    for name, g in (("horizontal", xx), ("vertical", yy), ("diagonal", (xx + yy) / 2),
                    ("radial", np.clip(np.hypot(xx - 0.5, yy - 0.5) * 1.4, 0, 1)),
                    ("inverse radial", 1 - np.clip(np.hypot(xx - 0.5, yy - 0.5) * 1.4, 0, 1))):
        cats["blank and gradient frames"].append((name, (g * 255).astype(np.uint8), 0.0))
    for i in range(10):
        cats["text renders"].append((f"page{i}", _text_page(rng), 0.0))
    return {k: v for k, v in cats.items() if v}
