"""The heat-map overlay as a DICOM Secondary Capture (`listen --heatmaps`): derived, "NOT FOR DIAGNOSIS" burned in.

    ds = build_sc(source_header, overlay_rgb, algo)

The pixels are the model's input (the centre crop, resized) with the map `infer --heatmaps` draws
(edge.heatmap) laid over it and a caption band beneath that says what it is; the band is part of the pixels, so
no viewer can hide it. Filed like the SR: the source's study, a series of its own, UIDs from uids, the
patient and study attributes the source's header holds validly (edge.node.header). What the source says of
itself carries over where it still holds: its Patient Orientation (crop and resize keep the directions), and
lossy compression (a derived image of a lossy one is lossy: PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

import re

import numpy as np
from pydicom.dataset import Dataset

from ..cam import overlay_image
from .identity import checked_identity
from .sr import MANUFACTURER, Algorithm, apply_identity, evidence_of, is_chest
from .uids import derived_uid

SERIES_NUMBER = 7702
SERIES_DESCRIPTION = "pneumo-edge heat map (NOT FOR DIAGNOSIS)"
WARNING = "NOT FOR DIAGNOSIS"
# lossy transfer syntaxes -> Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1)
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
                  "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
                  "1.2.840.10008.1.2.4.203": "ISO_15444_15", "1.2.840.10008.1.2.4.100": "ISO_13818_2",
                  "1.2.840.10008.1.2.4.101": "ISO_13818_2", "1.2.840.10008.1.2.4.102": "ISO_14496_10",
                  "1.2.840.10008.1.2.4.103": "ISO_14496_10", "1.2.840.10008.1.2.4.110": "ISO_18181_1"}
_ORIENTATION = re.compile(r"^[APRLHF]{1,3}$")


def overlay_pixels(resized: np.ndarray, heat: np.ndarray, caption: list[str]) -> np.ndarray:
    """uint8 (H, W, 3): the overlay with the caption band and the warning burned in."""
    return np.ascontiguousarray(np.asarray(overlay_image(resized, heat, [*caption, WARNING]).convert("RGB")))


def orientation(source) -> list[str] | str:
    """The source's Patient Orientation (row, column directions) when valid, else empty (type 2: unknown)."""
    value = source.get("PatientOrientation")
    values = [str(v).strip().upper() for v in (value if isinstance(value, (list, tuple)) or
                                               type(value).__name__ == "MultiValue" else [value or ""])]
    return values if len(values) == 2 and all(_ORIENTATION.match(v) for v in values) else ""


def body_and_laterality(sc, source) -> None:
    """Body Part Examined and Laterality (General Series, type 3 and 2C) from the source where valid. A chest
    is unpaired, so Laterality is left out; otherwise an unknown laterality is empty (PS3.3 C.7.3.1)."""
    body = str(source.get("BodyPartExamined", "") or "").strip().upper()
    if re.fullmatch(r"[A-Z0-9 _]{1,16}", body):
        sc.BodyPartExamined = body
    side = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "").strip().upper()
    if side in ("R", "L"):
        sc.Laterality = side
    elif not is_chest(source):
        sc.Laterality = ""  # type 2C: unknown (dciodvfy's warning on an empty value says exactly that)


def lossy(source) -> tuple[str, list[str]]:
    """("01", the methods) when the source was ever lossy-compressed (its own flag, or its transfer syntax);
    else ("00", [])."""
    given = source.get("LossyImageCompressionMethod") or []
    methods = [m for m in (str(v).strip() for v in ([given] if isinstance(given, str) else given))
               if re.fullmatch(r"ISO_\d{5}_\d{1,2}", m)]
    syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in LOSSY_SYNTAXES and LOSSY_SYNTAXES[syntax] not in methods:
        methods.append(LOSSY_SYNTAXES[syntax])
    flagged = str(source.get("LossyImageCompression", "") or "").strip() == "01"
    return ("01", methods) if flagged or syntax in LOSSY_SYNTAXES else ("00", [])


def build_sc(source, pixels: np.ndarray, algo: Algorithm):
    import highdicom as hd  # the [node] extra, only when the node runs

    identity = checked_identity(source)
    ref = evidence_of(source, identity)
    src_uid = ref.SOPInstanceUID
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=ref.StudyInstanceUID, series_number=SERIES_NUMBER,
        series_instance_uid=derived_uid("sc-series:" + ref.SeriesInstanceUID, src_uid, algo.model_sha256),
        sop_instance_uid=derived_uid("sc", src_uid, algo.model_sha256), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=("L", "F"),  # replaced below by the source's
        transfer_syntax_uid="1.2.840.10008.1.2.1", specific_character_set=None)
    apply_identity(sc, identity, algo)
    del sc.CodingSchemeIdentificationSequence  # no coded item of ours in an image
    sc.PatientOrientation = orientation(source)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.DerivationDescription = (f"heat map of {algo.name} {algo.version} over the centre crop the model sees; "
                                "not for diagnosis")[:1024]
    body_and_laterality(sc, source)
    sc.LossyImageCompression, methods = lossy(source)
    if methods:
        sc.LossyImageCompressionMethod = methods
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref.SOPClassUID, src_uid
    sc.SourceImageSequence = [item]
    return sc
