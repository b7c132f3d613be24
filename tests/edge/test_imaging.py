import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import EXTERNAL, needs_external
from pneumo_edge.edge.errors import ImageError
from pneumo_edge.edge.imaging import PreprocessSpec, load_gray, load_image, normalize, to_input


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", bits=16, stored=12, **attrs):
    """A minimal uncompressed DICOM; pixels (rows, cols) or (frames, rows, cols); attrs override the header."""
    from pydicom.uid import ExplicitVRLittleEndian

    from pneumo_edge.benchmarks.memory import new_dicom

    ds = new_dicom(path, ExplicitVRLittleEndian)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
    ds.PixelData = pixels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def ramp(h=40, w=50):
    return np.tile(np.linspace(0, 4000, w), (h, 1))


def test_dicom_monochrome2_and_monochrome1_are_mirror_images(tmp_path):
    m2 = load_gray(write_dicom(tmp_path / "m2.dcm", ramp()))
    m1 = load_gray(write_dicom(tmp_path / "m1.dcm", ramp(), "MONOCHROME1"))
    assert m2.dtype == np.uint8 and m2.shape == (40, 50)
    assert m2[:, 0].max() == 0 and m2[:, -1].min() == 255  # full range after scaling 12-bit data
    np.testing.assert_array_equal(m1, 255 - m2)  # MONOCHROME1 inverted to bone-bright


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", ramp())
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageError, match="no pixel data"):
        load_gray(path)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_colour_mode_becomes_grey(tmp_path, mode):
    base = Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1)))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(base, np.uint16) * 200))
    suffix = ".tiff" if mode in ("CMYK",) else ".png"
    img.save(tmp_path / f"x{suffix}")
    gray, colour = load_image(tmp_path / f"x{suffix}")
    assert gray.dtype == np.uint8 and gray.shape == (30, 50)
    assert colour < 0.01
    if mode not in ("1", "P"):
        assert gray[0, -1] > gray[0, 0] + 100  # the ramp survives


def test_colour_photo_has_high_chroma(tmp_path):
    a = np.zeros((40, 40, 3), np.uint8)
    a[..., 0] = 200
    Image.fromarray(a).save(tmp_path / "red.png")
    assert load_image(tmp_path / "red.png")[1] > 0.5


def test_exif_orientation_is_honoured(tmp_path):
    a = np.zeros((20, 60), np.uint8)
    a[:, :10] = 255  # bright band on the left
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif)
    g = load_gray(tmp_path / "r.jpg")
    assert g.shape == (60, 20)  # width and height swapped
    assert g[:10].mean() > 200  # the band is now at the top


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"hello, I am text", "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 20, "corrupt|not an image"),
])
def test_bad_bytes_give_one_line_reasons(tmp_path, content, match):
    p = tmp_path / "bad.jpeg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=match):
        load_gray(p)


def test_truncated_jpeg_and_tiny_image(tmp_path):
    Image.fromarray(np.full((300, 300), 128, np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt"):
        load_gray(tmp_path / "cut.jpg")
    Image.new("L", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(ImageError, match="too small"):
        load_gray(tmp_path / "one.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import pneumo_edge.edge.imaging as imaging

    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(imaging, "MAX_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageError, match="too large"):
        load_gray(tmp_path / "big.png")


def test_reduced_size_jpeg_decoding_keeps_at_least_the_input_size(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1000), np.uint8)).save(tmp_path / "b.jpg")
    g = load_gray(tmp_path / "b.jpg", size=224)
    assert min(g.shape) >= 224 and max(g.shape) < 1200


def test_normalize_matches_spec():
    spec = PreprocessSpec(size=4, mean=0.5, std=0.25)
    x = to_input(np.full((8, 8), 255, np.uint8), spec)
    assert x.shape == (1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x, 2.0)
    assert normalize(np.zeros((3, 4, 4), np.uint8), spec).shape == (3, 1, 4, 4)


@needs_external
def test_real_external_files_decode():
    for f in sorted(EXTERNAL.iterdir()):
        if f.suffix.lower() in (".png", ".jpg", ".dcm"):
            g, colour = load_image(f, size=224)
            assert min(g.shape) >= 224 and 30 < g.mean() < 225, f.name
            assert colour < 0.04, f.name  # grey X-rays, whatever their container
    m1 = load_gray(EXTERNAL / "Fake_MONOHR1.dcm")
    m2 = load_gray(next(EXTERNAL.glob("rsna_*.dcm")))
    assert abs(m1.astype(int) + m2.astype(int) - 255).mean() < 2  # MONOCHROME1 is inverted


def test_resize_rules():
    from pneumo_edge.edge.imaging import resize_gray

    wide = np.zeros((100, 200), np.uint8)
    wide[:, 50:150] = 255  # the central square is all white
    assert resize_gray(wide, 10).shape == (10, 10)
    assert resize_gray(wide, 10)[:, 2:8].min() == 255  # center crop keeps only the middle
    assert abs(resize_gray(wide, 10, "squash-bilinear").mean() - 127.5) < 5  # squash keeps the whole frame
    with pytest.raises(ValueError, match="unknown resize rule"):
        resize_gray(wide, 10, "stretch")


# ---------------------------------------------------------------- decoding hardening

def pydicom_testfile(tmp_path, name, **attrs):
    """One of pydicom's bundled test files, with header attributes overridden, saved under tmp_path."""
    from pydicom.data import get_testdata_file

    ds = get_testdata_file(name, read=True, download=False)
    assert ds is not None, f"pydicom no longer ships {name}"
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / name)
    return tmp_path / name


def other_format_files(tmp_path):
    """Files Pillow can identify but the decoder must refuse, each named like an accepted image."""
    img = Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1)))
    img.save(tmp_path / "gif.png", format="GIF")
    img.save(tmp_path / "webp.jpg", format="WEBP")
    img.save(tmp_path / "ico.bmp", format="ICO")
    # PostScript named .png: guessing by content would hand it to Ghostscript
    (tmp_path / "ps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 40\nshowpage\n")
    (tmp_path / "psd.tiff").write_bytes(b"8BPS\0\1" + b"\0" * 40)
    return {"gif.png": "GIF", "webp.jpg": "WebP", "ico.bmp": "ICO", "ps.png": "PostScript/EPS", "psd.tiff": "PSD"}


def test_only_allowlisted_formats_are_opened(tmp_path):
    for name, fmt in other_format_files(tmp_path).items():
        with pytest.raises(ImageError, match=rf"unsupported format \({re.escape(fmt)}\)"):
            load_gray(tmp_path / name)
        with pytest.raises(ImageError, match="unsupported format"):
            load_gray((tmp_path / name).read_bytes())


def test_folder_scan_and_decoder_accept_the_same_formats(tmp_path):
    from pneumo_edge.edge.imaging import FORMATS, IMAGE_SUFFIXES, PIL_FORMATS, SUFFIX_FORMATS
    from pneumo_edge.edge.infer import find_inputs

    assert set(IMAGE_SUFFIXES) == set(SUFFIX_FORMATS) and set(FORMATS) == set(SUFFIX_FORMATS.values())
    assert set(PIL_FORMATS) == {"JPEG", "PNG", "BMP", "TIFF"}
    img = Image.fromarray(np.full((20, 20), 100, np.uint8))
    for fmt, suffix in (("GIF", ".gif"), ("WEBP", ".webp"), ("PNG", ".png"), ("TIFF", ".tif")):
        img.save(tmp_path / f"x{suffix}", format=fmt)
    found = find_inputs([str(tmp_path)])
    assert sorted(os.path.basename(f) for f in found.files) == ["x.png", "x.tif"]
    assert {os.path.basename(p): s for p, s, _ in found.problems} == {"x.gif": "skipped", "x.webp": "skipped"}
    with pytest.raises(ImageError, match=r"unsupported format \(GIF\)"):  # named directly: refused as well
        load_gray(tmp_path / "x.gif")


def test_multi_frame_tiff_and_dicom_are_refused(tmp_path):
    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "two.tiff", save_all=True, append_images=frames[1:])
    write_dicom(tmp_path / "two.dcm", np.stack([ramp(), ramp()]))
    for name in ("two.tiff", "two.dcm"):
        with pytest.raises(ImageError, match=r"multi-frame image \(2 frames\): one frame per file"):
            load_gray(tmp_path / name)


def test_dicom_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "bomb.dcm", ramp(), Rows=60_000, Columns=60_000)  # 8 KB of pixels on disk
    with pytest.raises(ImageError, match=r"image too large \(60000x60000 pixels"):
        load_gray(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_pixels_are_refused(tmp_path, bad):
    a = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (40, 1))
    a[5, 5] = bad
    Image.fromarray(a, mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_gray(tmp_path / "f.tiff")


def test_one_hot_pixel_does_not_rescale_a_16_bit_film(tmp_path):
    png = np.tile(np.linspace(0, 4000, 50), (40, 1)).astype(np.uint16)
    png[0, 0] = 65535
    Image.fromarray(png).save(tmp_path / "hot.png")
    dcm = np.tile(np.linspace(0, 400, 50), (40, 1))
    dcm[0, 0] = 4095  # 12 bits stored, no window
    write_dicom(tmp_path / "hot.dcm", dcm)
    for name in ("hot.png", "hot.dcm"):
        body = load_gray(tmp_path / name)[1:]  # rows without the hot pixel
        assert body.min() <= 3 and body.max() >= 252, name  # the ramp spans the grey scale
        assert np.all(np.diff(body[0].astype(int)) >= 0), name  # and stays monotonic


def test_8_bit_dicom_keeps_min_max_scaling(tmp_path):
    a = np.tile(np.arange(10, 210, 4), (40, 1))
    a[0, 0] = 250  # a hot pixel in an 8-bit film: scaled as ever, min-max
    g = load_gray(write_dicom(tmp_path / "eight.dcm", a, bits=8, stored=8))
    expected = np.round((a.astype(np.float32) - 10) * (255.0 / 240)).astype(np.uint8)
    np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("attrs,match", [
    ({"Modality": "CT"}, "DICOM modality CT is not a chest radiograph"),
    ({"Modality": "MR"}, "modality MR"),
    ({"Modality": "US"}, "modality US"),
    ({"Modality": "MG"}, "modality MG"),
    ({"BodyPartExamined": "HEAD"}, "DICOM body part HEAD is not a chest radiograph"),
    ({"BodyPartExamined": "KNEE"}, "body part KNEE"),
    ({"BodyPartExamined": "L SPINE"}, r"body part \(BodyPartExamined: unrecognised value\)"),  # not a defined term
])
def test_dicom_that_is_not_a_chest_radiograph_is_refused(tmp_path, attrs, match):
    with pytest.raises(ImageError, match=match):
        load_gray(write_dicom(tmp_path / "x.dcm", ramp(), **attrs))


@pytest.mark.parametrize("attrs", [
    {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
    {"Modality": "CR", "BodyPartExamined": "THORAX"},
    {"Modality": "OT", "BodyPartExamined": ""},
    {"Modality": "", "BodyPartExamined": "CHEST_TO_ABDOMEN"},
])
def test_chest_radiograph_headers_pass(tmp_path, attrs):
    assert load_gray(write_dicom(tmp_path / "x.dcm", ramp(), **attrs)).shape == (40, 50)


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm"])
def test_jpeg_ls_and_lossless_jpeg_dicoms_decode(tmp_path, name):
    g = load_gray(pydicom_testfile(tmp_path, name, Modality="DX"))  # JPEG-LS, lossless JPEG (GDCM plugin)
    assert g.dtype == np.uint8 and min(g.shape) >= 10 and g.max() > g.min()


def test_12_bit_jpeg_dicom_decodes_or_names_its_plugin(tmp_path):
    path = pydicom_testfile(tmp_path, "JPGExtended.dcm", Modality="DX")
    try:
        import libjpeg  # noqa: F401 - the optional GPL decoder
    except ImportError:
        with pytest.raises(ImageError, match="pylibjpeg-libjpeg"):
            load_gray(path)
    else:
        assert load_gray(path).max() > 0


def test_missing_decoder_plugin_is_named(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSNearLossless

    decoder = get_decoder(JPEGLSNearLossless)  # as if no plugin were installed
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"gdcm": ("python-gdcm>=3.0.22",)})
    with pytest.raises(ImageError, match="needs a decoder plugin that is not installed: gdcm - requires") as e:
        load_gray(pydicom_testfile(tmp_path, "JPEGLSNearLossless_16.dcm"))
    assert "python-gdcm" in str(e.value) and "\n" not in str(e.value)


def test_deflated_dicom_bomb_is_refused_before_it_is_inflated(tmp_path):
    from pneumo_edge.benchmarks.memory import write_deflated_dicom

    big = 16_000  # declares 256 Mpx: 512 MB of zeros, about 0.5 MB on disk
    bomb = write_deflated_dicom(tmp_path / "bomb.dcm", big, big, bytes(big * big * 2))
    assert bomb.stat().st_size < 2_000_000
    for source in (bomb, bomb.read_bytes()):
        with pytest.raises(ImageError, match="expands past"):
            load_image(source, name="bomb.dcm")
    small = write_deflated_dicom(tmp_path / "small.dcm", 300, 200)  # an honest deflated film still decodes
    assert load_gray(small).shape == (300, 200)
