"""The heat-map overlay as a DICOM Secondary Capture (`listen --heatmaps`): derived, "NOT FOR DIAGNOSIS" burned in.

    ds = build_sc(source_header, overlay_rgb, algo)

The pixels are the model's input (the centre crop, resized) with the map `infer --heatmaps` draws
(edge.heatmap) laid over it and a caption band beneath that says what it is; the band is part of the pixels, so
no viewer can hide it. Filed like the SR: the source's study, a series of its own, UIDs from uids.
"""

from __future__ import annotations

import numpy as np

from .sr import MANUFACTURER, Algorithm, _evidence
from .uids import derived_uid

SERIES_NUMBER = 7702
SERIES_DESCRIPTION = "pneumo-edge heat map (NOT FOR DIAGNOSIS)"
WARNING = "NOT FOR DIAGNOSIS"


def overlay_pixels(resized: np.ndarray, heat: np.ndarray, caption: list[str]) -> np.ndarray:
    """uint8 (H, W, 3): the overlay with the caption band and the warning burned in."""
    from ..cam import overlay_image

    return np.ascontiguousarray(np.asarray(overlay_image(resized, heat, [*caption, WARNING]).convert("RGB")))


def build_sc(source, pixels: np.ndarray, algo: Algorithm):
    import highdicom as hd
    from pydicom.dataset import Dataset

    src_uid = str(source.SOPInstanceUID)
    ref = _evidence(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=derived_uid("sc-series:" + str(source.SeriesInstanceUID),
                                                                    src_uid, algo.model_sha256),
        series_number=SERIES_NUMBER, sop_instance_uid=derived_uid("sc", src_uid, algo.model_sha256),
        instance_number=1, manufacturer=MANUFACTURER, patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = ""  # type 2C (General Series): a chest is unpaired, so known and empty
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.DerivationDescription = (f"heat map of {algo.name} {algo.version} over the centre crop the model sees; "
                                "not for diagnosis")[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, src_uid
    sc.SourceImageSequence = [item]
    return sc
