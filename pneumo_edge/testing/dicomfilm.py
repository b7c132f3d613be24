"""Film images (JPEG/PNG) written as DICOM CR instances in a chosen transfer syntax: what a modality sends.

    write_film("IM-0001.jpeg", "out/IM-0001.dcm", "jpeg-baseline", study_uid=..., patient_id="P1")

"jpeg-baseline" wraps the JPEG bytes unchanged (no re-encoding: the pixels are the file's own), the
native syntaxes store the decoded grey levels, "rle" is encoded by pydicom, "jpeg-ls" and "jpeg-lossless"
by dcmtk (dcmcjpls, dcmcjpeg). For tests and `bench-node`; nothing here is part of the edge runtime.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

SYNTAXES = {"explicit": "1.2.840.10008.1.2.1", "implicit": "1.2.840.10008.1.2",
            "deflate": "1.2.840.10008.1.2.1.99", "jpeg-baseline": "1.2.840.10008.1.2.4.50",
            "rle": "1.2.840.10008.1.2.5", "jpeg-ls": "1.2.840.10008.1.2.4.80",
            "jpeg-lossless": "1.2.840.10008.1.2.4.70"}
DCMTK = {"jpeg-ls": ["dcmcjpls"], "jpeg-lossless": ["dcmcjpeg"]}
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def film_dataset(pixels: np.ndarray, sop_uid: str | None = None, study_uid: str | None = None,
                 series_uid: str | None = None, **tags):
    """A CR data set (explicit VR little endian) around 8-bit grey pixels; `tags` override or add attributes."""

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    # a child of three at the study date: inside the shipped model's population (edge.population), as the
    # Kermany films these instances are made of are
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Film", "FILM-0001", "20230101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "ACC1", "1"
    ds.ReferringPhysicianName, ds.Modality, ds.BodyPartExamined = "", "CR", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "test"
    ds.PatientOrientation, ds.ViewPosition = "", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def write_film(image: str | Path, out: str | Path, syntax: str = "explicit", **kw) -> Path:
    """One film as a DICOM file in `syntax` (a key of SYNTAXES)."""

    image, out = Path(image), Path(out)
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("L"))
        is_jpeg = im.format == "JPEG" and im.mode == "L"
    ds = film_dataset(pixels, **kw)
    if syntax == "jpeg-baseline":
        if not is_jpeg:
            raise ValueError(f"{image}: jpeg-baseline wraps a greyscale JPEG file, this is not one")
        ds.PixelData = encapsulate([image.read_bytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]
        ds.LossyImageCompression = "01"
    elif syntax == "rle":
        ds.compress(RLELossless)
    elif syntax in ("implicit", "deflate"):
        ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]
    elif syntax in DCMTK:
        plain = out.with_suffix(".plain.dcm")
        ds.save_as(plain, enforce_file_format=True)
        tool = DCMTK[syntax][0]
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} (dcmtk) is needed for {syntax}")
        subprocess.run([tool, str(plain), str(out)], check=True, capture_output=True)
        plain.unlink()
        return out
    elif syntax != "explicit":
        raise ValueError(f"unknown transfer syntax '{syntax}' (known: {', '.join(SYNTAXES)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == "implicit" or None)
    return out
