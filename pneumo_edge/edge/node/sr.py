"""The result as a DICOM Structured Report, shaped after TID 1500 (Measurement Report) and IHE AI Results.

    ds = build_sr(source_header, Finding(...), Algorithm(...))   # a pydicom Dataset, ready to send

The report files in the source's study (patient and study modules copied by highdicom from the source),
in a new series of its own, and carries in one measurement group:
  - finding type: pneumonia (SNOMED CT 233604007), the source image as the group's source image;
  - the qualitative evaluation "pneumonia: present / absent", or "not assessed" with the reason,
    for an image the guard refused or that could not be decoded (a result is never silent);
  - the calibrated probability, the model's threshold and the guard's verdict and score;
  - the algorithm identification: name, version, and the weights' sha256 and threshold as parameters.
Every UID comes from uids.derived_uid, so a second run over the same image makes the same report.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..meta import LABELS  # (negative, positive): PNEUMONIA is "pneumonia present"
from .uids import derived_uid

SERIES_NUMBER = 7701  # of the results series, in every study; SeriesDescription says what it is
SERIES_DESCRIPTION = "pneumo-edge AI result (not for diagnosis)"
MANUFACTURER = "pneumo-edge"
LOCAL = "99PNEDGE"  # a local coding scheme (PS3.16 8.2: designators starting 99) for codes no standard has


@dataclass(frozen=True)
class Algorithm:
    name: str  # "pneumo-edge tf_efficientnet_lite0"
    version: str  # the pneumo-edge version that exported the model
    model_sha256: str  # of the ONNX file the node runs: the UIDs derive from it
    threshold: float


@dataclass(frozen=True)
class Finding:
    """One image's outcome; label is None when the image was not assessed (then `reason` says why)."""

    label: str | None  # the record's label (edge.decision.Scored), never computed here
    probability: float | None
    guard_verdict: str  # "accepted" | "rejected" | "off" | "not run"
    guard_score: float | None = None
    reason: str = ""


def _codes():
    from pydicom.sr.coding import Code

    return {
        "pneumonia": Code("233604007", "SCT", "Pneumonia"),
        "present": Code("52101004", "SCT", "Present"),
        "absent": Code("2667000", "SCT", "Absent"),
        "not_assessed": Code("not-assessed", LOCAL, "Not assessed"),
        "probability": Code("probability", LOCAL, "Probability of pneumonia (calibrated)"),
        "threshold": Code("threshold", LOCAL, "Decision threshold"),
        "guard_score": Code("guard-score", LOCAL, "Out-of-distribution guard score (above 1: refused)"),
        "guard_verdict": Code("guard-verdict", LOCAL, "Out-of-distribution guard verdict"),
        "comment": Code("121106", "DCM", "Comment"),
        "no_units": Code("1", "UCUM", "no units"),
        "procedure": Code("399208008", "SCT", "Plain X-ray of chest"),
    }


def _verdict_code(verdict: str):
    from pydicom.sr.coding import Code

    return Code(verdict.replace(" ", "-"), LOCAL, verdict.capitalize())


# Type 2 attributes of the patient and study modules that highdicom copies from the source: present, maybe empty.
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _evidence(source):
    """The source header with every copied attribute present (a modality may leave type 2 ones out)."""
    ds = source.copy()
    for name in _COPIED:
        if name not in ds:
            setattr(ds, name, "")
    return ds


def build_sr(source, finding: Finding, algo: Algorithm):
    """A Comprehensive SR for one source image (a pydicom Dataset of its header; pixels not needed)."""
    import highdicom as hd
    from highdicom.sr import (AlgorithmIdentification, CodedConcept, DeviceObserverIdentifyingAttributes,
                              Measurement, MeasurementReport, MeasurementsAndQualitativeEvaluations,
                              ObservationContext, ObserverContext, QualitativeEvaluation, RelationshipTypeValues,
                              SourceImageForMeasurementGroup, TextContentItem, TrackingIdentifier)
    from pydicom.sr.codedict import codes

    c = _codes()
    src_uid = str(source.SOPInstanceUID)
    uid = lambda role: derived_uid(role, src_uid, algo.model_sha256)  # noqa: E731
    algorithm = AlgorithmIdentification(name=algo.name, version=algo.version,
                                        parameters=[f"weights sha256 {algo.model_sha256}",
                                                    f"threshold {algo.threshold:.6g}"])
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", "", algo.model_sha256), name=algo.name, manufacturer_name=MANUFACTURER,
            model_name=algo.name))
    assessed = finding.label is not None
    value = (c["present"] if finding.label == LABELS[-1] else c["absent"]) if assessed else c["not_assessed"]
    evaluations = [QualitativeEvaluation(c["pneumonia"], value),
                   QualitativeEvaluation(c["guard_verdict"], _verdict_code(finding.guard_verdict))]
    # the group's algorithm identification covers its measurements: not repeated under each one
    measurements = [Measurement(name=c["threshold"], value=float(algo.threshold), unit=c["no_units"])]
    if finding.probability is not None:
        measurements.insert(0, Measurement(name=c["probability"], value=float(finding.probability),
                                           unit=c["no_units"]))
    if finding.guard_score is not None:
        measurements.append(Measurement(name=c["guard_score"], value=float(finding.guard_score),
                                        unit=c["no_units"]))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid("tracking"), identifier="pneumonia finding"),
        finding_type=c["pneumonia"], algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup(str(source.SOPClassUID), src_uid)])
    if finding.reason:
        group[0].ContentSequence.append(TextContentItem(
            name=CodedConcept.from_code(c["comment"]), value=finding.reason[:1024],
            relationship_type=RelationshipTypeValues.CONTAINS))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=device),
                               procedure_reported=c["procedure"], imaging_measurements=[group])
    return hd.sr.ComprehensiveSR(
        evidence=[_evidence(source)], content=report[0], series_instance_uid=uid("sr-series:" + str(source.SeriesInstanceUID)),
        series_number=SERIES_NUMBER, sop_instance_uid=uid("sr"), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, series_description=SERIES_DESCRIPTION)


def read_sr(ds) -> dict:
    """What a report made by build_sr says, read back from its content tree (for checks and tooling):
    finding ("present" | "absent" | "not assessed"), probability, threshold, guard verdict, comment, source UID."""
    out: dict = {"finding": None, "probability": None, "threshold": None, "guard_verdict": None, "comment": None,
                 "source_uid": None}
    numeric = {"probability": "probability", "threshold": "threshold", "guard-score": "guard_score"}

    def walk(items) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
            kind = item.get("ValueType")
            if kind == "CODE" and name == "233604007":
                out["finding"] = item.ConceptCodeSequence[0].CodeMeaning.lower()
            elif kind == "CODE" and name == "guard-verdict":
                out["guard_verdict"] = item.ConceptCodeSequence[0].CodeValue.replace("-", " ")
            elif kind == "NUM" and name in numeric:
                out[numeric[name]] = float(item.MeasuredValueSequence[0].NumericValue)
            elif kind == "TEXT" and name == "121106":
                out["comment"] = str(item.TextValue)
            elif kind == "IMAGE" and out["source_uid"] is None:
                out["source_uid"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return out
