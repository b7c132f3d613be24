import numpy as np
import pytest
from PIL import Image

from conftest import EXTERNAL, needs_external
from pneumo_edge.edge.errors import ImageError
from pneumo_edge.edge.imaging import PreprocessSpec, load_gray, load_image, normalize, to_input


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", bits=16):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
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
