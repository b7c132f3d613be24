"""DICOM reading bounded by the file: declared lengths, deferred elements, the compressed frame's own size."""

import subprocess
import sys

import numpy as np
import pytest

from pneumo_edge.edge import imaging
from pneumo_edge.edge.errors import ImageError
from pneumo_edge.edge.imaging import load_gray
from pneumo_edge.benchmarks.memory import write_element_bomb, write_jpeg_frame_bomb
from test_imaging import ramp, write_dicom


def test_a_declared_length_beyond_the_file_is_refused_before_reading(tmp_path):
    path = write_element_bomb(tmp_path / "lie.dcm", sparse=False)
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match=r"declares 1,073,741,824 bytes but the file has [\d,]+ left"):
        load_gray(path)
    with pytest.raises(ImageError, match="refused before reading"):
        load_gray(path.read_bytes())  # the same from bytes (serve's uploads)


def test_a_large_private_element_is_never_read(tmp_path):
    """A sparse file really holds its 1 GiB element: deferred, it costs nothing, and the film is classified."""
    path = write_element_bomb(tmp_path / "sparse.dcm", sparse=True)
    assert path.stat().st_size > 1 << 30 and path.stat().st_blocks * 512 < 1 << 20
    # VmHWM: this process's own peak (ru_maxrss would carry over the forking test process's size)
    probe = ("import re, sys; from pathlib import Path; from pneumo_edge.edge.imaging import load_gray; "
             "g = load_gray(sys.argv[1]); "
             "print(g.shape, re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1))")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("(256, 256)")
    assert int(out.split()[-1]) / 1024 < 400  # MB; reading the element alone would take over 1000


def test_a_compressed_frame_larger_than_its_header_is_refused_before_decoding(tmp_path):
    with pytest.raises(ImageError, match=r"frame declares 11000x11000 pixels \(limit 64,000,000\): refused before"):
        load_gray(write_jpeg_frame_bomb(tmp_path / "big.dcm"))
    with pytest.raises(ImageError, match=r"declares 2048x2048 pixels but Rows x Columns say 1024x1024"):
        load_gray(write_jpeg_frame_bomb(tmp_path / "liar.dcm", claimed=2048))


def test_pillow_bomb_warning_is_a_refusal_on_the_dicom_path(tmp_path, monkeypatch):
    monkeypatch.setattr(imaging, "check_frame", lambda *a: None, raising=False)  # only the decoder stands now
    with pytest.raises(ImageError, match="decompression-bomb limit"):
        load_gray(write_jpeg_frame_bomb(tmp_path / "big.dcm"))


def test_native_pixel_data_larger_than_rows_by_columns_is_refused(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", ramp(40, 50))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = np.zeros((400, 500), np.uint16).tobytes()  # 100 times what 40 x 50 needs
    ds.save_as(path)
    with pytest.raises(ImageError, match=r"PixelData holds 400,000 bytes but Rows x Columns need 4,000"):
        load_gray(path)
