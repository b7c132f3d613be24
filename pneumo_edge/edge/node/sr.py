"""The result as a DICOM Comprehensive SR: TID 1500 (Measurement Report), as IHE AI Results shapes it.

    ds = build_sr(source_header, Finding(...), Algorithm.of(model))   # a pydicom Dataset, ready to send
    read_sr(ds)                                                       # what it says, read back

The report files in the source's study, in a series of its own. Its content tree:

  Imaging Measurement Report (TID 1500)
    Language; the device observer (TID 1004: the model's UID, name, maker, model name, serial = its digest)
    Procedure reported: Imaging procedure (CID 100)
    Image Library (TID 1600): the source image, its modality, and Target Region Chest where the header says so
    Imaging Measurements
      Measurement Group (TID 1410), only for an assessed image whose size the header gives:
        Tracking Identifier "pneumonia present" | "pneumonia absent", Finding Pneumonia | Pneumonia absent,
        the algorithm (TID 4019: name, the model's version, its sha256 and threshold), Image Region = the
        film area the model read, probability of pneumonia and the decision threshold
      Measurement Group (TID 1410), for a "present" result with a heat map: the same finding and probability,
        Image Region = the heat map's strongest cell (IHE AI Results' "regions" result type)
    Qualitative Evaluations (TID 1500 row 12): Pneumonia = Present | Absent | Not assessed, the guard's
      verdict, and the reason as text for an image not assessed
Every item says on its own what it means: the group's finding differs for present and absent, a probability
is there only for an assessed image. Codes are SNOMED CT and DICOM where those have one; the rest are local
(99PNEDGE), declared in the Coding Scheme Identification Sequence. Patient and study attributes are the
source's, checked (edge.node.header); every UID comes from uids.derived_uid, so a second run over the same
image makes the same report.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..decision import NOT_RUN
from ..decision import VERDICTS as DECISION_VERDICTS
from ..imaging import input_box
from ..meta import LABELS  # (negative, positive): PNEUMONIA is "pneumonia present"
from .identity import checked_identity, clean_uid, geometry
from .uids import derived_uid

SERIES_NUMBER = 7701  # of the results series, in every study; SeriesDescription says what it is
SERIES_DESCRIPTION = "pneumo-edge AI result (not for diagnosis)"
MANUFACTURER = "pneumo-edge"
LOCAL = "99PNEDGE"  # a local coding scheme (PS3.16 8.2: designators starting 99) for codes no standard has
LOCAL_SCHEME = {"CodingSchemeDesignator": LOCAL, "CodingSchemeName": "pneumo-edge result codes",
                "CodingSchemeResponsibleOrganization": "pneumo-edge project"}
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "PORTABLE CHEST")  # BodyPartExamined values that name the chest


@dataclass(frozen=True)
class Algorithm:
    name: str  # "pneumo-edge tf_efficientnet_lite0"
    version: str  # the model's own: its export date and the file's digest
    model_sha256: str  # of the ONNX file the node runs: the UIDs derive from it
    threshold: float
    resize: str = "center-crop-bilinear"  # how the film became the model's input (edge.imaging.input_box)
    software: str = "unknown"  # the pneumo-edge version running the node
    exported_by: str = "unknown"  # the pneumo-edge version that exported the model

    @classmethod
    def of(cls, model) -> "Algorithm":
        """The identification of an EdgeModel, from its file's metadata and digest."""
        meta, sha = model.meta, model.sha256
        version = " ".join(x for x in ((meta.created or "")[:10], meta.quantization, f"sha256:{sha[:16]}") if x)
        return cls(name=f"pneumo-edge {meta.model}", version=version, model_sha256=sha,
                   threshold=float(model.threshold), resize=model.spec.resize, software=software_version(),
                   exported_by=meta.pneumo_edge_version)


def software_version() -> str:
    try:
        return version("pneumo-edge")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


@dataclass(frozen=True)
class Finding:
    """One image's outcome; label is None when the image was not assessed (then `reason` says why)."""

    label: str | None  # the record's label (edge.decision.Scored), never computed here
    probability: float | None
    guard_verdict: str  # one of decision.VERDICTS, or decision.NOT_RUN
    guard_score: float | None = None
    reason: str = ""
    # where the heat map's evidence is strongest: (left, top, right, bottom), fractions of the model's input
    evidence: tuple[float, float, float, float] | None = None

    @property
    def outcome(self) -> str:
        return "not assessed" if self.label is None else "present" if self.label == LABELS[-1] else "absent"


def _codes() -> dict:
    def local(value: str, meaning: str) -> Code:
        return Code(value, LOCAL, meaning)

    return {
        "report": Code("126000", "DCM", "Imaging Measurement Report"),
        "language": Code("121049", "DCM", "Language of Content Item and Descendants"),
        "english": Code("en", "RFC5646", "English"),
        "procedure_reported": Code("121058", "DCM", "Procedure reported"),
        "procedure": Code("363679005", "SCT", "Imaging procedure"),  # CID 100's one code for a radiograph
        "library": Code("111028", "DCM", "Image Library"), "library_group": Code("126200", "DCM", "Image Library Group"),
        "modality": Code("121139", "DCM", "Modality"), "target_region": Code("123014", "DCM", "Target Region"),
        "chest": Code("51185008", "SCT", "Chest"),
        "measurements": Code("126010", "DCM", "Imaging Measurements"),
        "group": Code("125007", "DCM", "Measurement Group"),
        "tracking_id": Code("112039", "DCM", "Tracking Identifier"),
        "tracking_uid": Code("112040", "DCM", "Tracking Unique Identifier"),
        "finding": Code("121071", "DCM", "Finding"),
        "region": Code("111030", "DCM", "Image Region"),
        "purpose": Code("130400", "DCM", "Geometric purpose of region"),
        # CID 219: the evidence region bounds what the map found; the assessed one outlines what the model read
        "evidence_region": Code("75958009", "SCT", "Bounded by"), "assessed_region": Code("111041", "DCM", "Outline"),
        "algorithm_name": Code("111001", "DCM", "Algorithm Name"),
        "algorithm_version": Code("111003", "DCM", "Algorithm Version"),
        "algorithm_parameters": Code("111002", "DCM", "Algorithm Parameters"),
        "qualitative": Code("C0034375", "UMLS", "Qualitative Evaluations"),
        "comment": Code("121106", "DCM", "Comment"),
        "pneumonia": Code("233604007", "SCT", "Pneumonia"),
        "present": Code("52101004", "SCT", "Present"),
        "absent": Code("272519000", "SCT", "Absent"),
        "percent": Code("%", "UCUM", "percent"),
        "no_units": Code("1", "UCUM", "no units"),
        # no standard code says these: local ones, each meaning the whole statement on its own
        "pneumonia_absent": local("pneumonia-absent", "Pneumonia absent"),
        "not_assessed": local("not-assessed", "Not assessed"),
        # the probability, named with the decision it led to: a viewer that shows only numbers (OHIF) shows both
        "probability_present": local("prob-present", "AI: pneumonia PRESENT, probability"),
        "probability_absent": local("prob-absent", "AI: pneumonia ABSENT, probability"),
        "threshold": local("threshold", "AI decision threshold, probability"),
        "guard_score": local("guard-score", "Out-of-distribution score (above 1: refused)"),
        "guard_verdict": local("guard-verdict", "Out-of-distribution guard verdict"),
    }


VERDICTS = dict(zip(DECISION_VERDICTS, ("Accepted", "Refused", "Not run (guard off)")),
                **{NOT_RUN: "Not run (image not decodable)"})


def _verdict_code(verdict: str):
    return Code(verdict.replace(" ", "-"), LOCAL, VERDICTS.get(verdict, verdict.capitalize()))


def _items():
    """highdicom's content item classes and relationship types, imported on use (the node extra)."""
    import highdicom.sr as s  # the [node] extra, only when the node runs

    return s


def _observer(algo: Algorithm, c: dict) -> list:
    """TID 1204 language and TID 1002/1004: the device that made the report is the model."""
    s, r = _items(), _items().RelationshipTypeValues
    return [s.CodeContentItem(c["language"], c["english"], relationship_type=r.HAS_CONCEPT_MOD),
            *s.ObserverContext(observer_type=codes.DCM.Device,
                               observer_identifying_attributes=s.DeviceObserverIdentifyingAttributes(
                                   uid=device_uid(algo), name=algo.name[:64], manufacturer_name=MANUFACTURER,
                                   model_name=algo.name[:64], serial_number=algo.model_sha256[:16]))]


def device_uid(algo: Algorithm) -> str:
    return derived_uid("device", "", algo.model_sha256)


def _library(source, ref: tuple[str, str], c: dict):
    """TID 1600: the one source image, with its modality and, for a chest film, the target region."""
    s, r = _items(), _items().RelationshipTypeValues
    descriptors = []
    modality = str(source.get("Modality", "") or "").strip().upper()
    if modality in ("CR", "DX"):
        meaning = {"CR": "Computed Radiography", "DX": "Digital Radiography"}[modality]
        descriptors.append(s.CodeContentItem(c["modality"], Code(modality, "DCM", meaning), r.HAS_ACQ_CONTEXT))
    if is_chest(source):
        descriptors.append(s.CodeContentItem(c["target_region"], c["chest"], r.HAS_ACQ_CONTEXT))
    image = s.ImageContentItem(s.CodedConcept("260753009", "SCT", "Source"), ref[0], ref[1], relationship_type=r.CONTAINS)
    group = s.ContainerContentItem(c["library_group"], relationship_type=r.CONTAINS)
    group.ContentSequence = s.ContentSequence([*descriptors, image])
    library = s.ContainerContentItem(c["library"], relationship_type=r.CONTAINS)
    library.ContentSequence = s.ContentSequence([group])
    return library


def is_chest(source) -> bool:
    return str(source.get("BodyPartExamined", "") or "").strip().upper() in CHEST_PARTS


def _algorithm(algo: Algorithm, c: dict) -> list:
    """TID 4019: the model's name, its own version, and its digest and threshold as parameters."""
    s, r = _items(), _items().RelationshipTypeValues
    params = [f"onnx sha256 {algo.model_sha256}", f"threshold {algo.threshold:.6g}",
              f"exported by pneumo-edge {algo.exported_by}", f"run by pneumo-edge {algo.software}"]
    return [s.TextContentItem(c["algorithm_name"], algo.name[:1024], r.HAS_CONCEPT_MOD),
            s.TextContentItem(c["algorithm_version"], algo.version[:1024], r.HAS_CONCEPT_MOD),
            *[s.TextContentItem(c["algorithm_parameters"], p, r.HAS_CONCEPT_MOD) for p in params]]


def region_on_source(box: tuple[float, float, float, float], shape: tuple[int, int], resize: str):
    """A box in fractions of the model's input -> the rectangle's corners on the source image (columns,
    rows), closed, as SCOORD POLYLINE data (pixel edges: 0 is the left edge of the first column)."""
    left, top, right, bottom = input_box(shape, resize)
    w, h = right - left, bottom - top
    x0, y0, x1, y1 = (left + box[0] * w, top + box[1] * h, left + box[2] * w, top + box[3] * h)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _group(finding: Finding, algo: Algorithm, c: dict, ref: tuple[str, str], corners, kind: str, uid: str):
    """One TID 1410 measurement group: the finding, the algorithm, an image region on the source, the numbers."""
    s, r = _items(), _items().RelationshipTypeValues
    present = finding.outcome == "present"
    label = f"pneumonia {finding.outcome}: " + ("region of strongest evidence" if kind == "evidence" else "area read")
    items = [s.TextContentItem(c["tracking_id"], label, r.HAS_OBS_CONTEXT),
             s.UIDRefContentItem(c["tracking_uid"], uid, r.HAS_OBS_CONTEXT),
             s.CodeContentItem(c["finding"], c["pneumonia"] if present else c["pneumonia_absent"], r.CONTAINS),
             s.CodeContentItem(c["purpose"], c[f"{kind}_region"], r.CONTAINS),
             *_algorithm(algo, c)]
    region = s.ScoordContentItem(c["region"], s.GraphicTypeValues.POLYLINE, corners, relationship_type=r.CONTAINS)
    region.ContentSequence = s.ContentSequence([s.ImageContentItem(
        s.CodedConcept("121112", "DCM", "Source of Measurement"), ref[0], ref[1],
        relationship_type=r.SELECTED_FROM)])
    items.append(region)
    items += [s.NumContentItem(c[f"probability_{finding.outcome}"], round(100 * float(finding.probability), 6), c["percent"],
                               relationship_type=r.CONTAINS),
              s.NumContentItem(c["threshold"], round(100 * algo.threshold, 6), c["percent"], relationship_type=r.CONTAINS)]
    if finding.guard_score is not None:
        items.append(s.NumContentItem(c["guard_score"], float(finding.guard_score), c["no_units"],
                                      relationship_type=r.CONTAINS))
    group = s.ContainerContentItem(c["group"], template_id="1410", relationship_type=r.CONTAINS)
    group.ContentSequence = s.ContentSequence(items)
    return group


def _measurements(source, finding: Finding, algo: Algorithm, c: dict, ref: tuple[str, str], uid):
    """Imaging Measurements with one group, for an assessed image of known size: its region is the heat map's
    strongest cell for a present result that has one, else the film area the model read. (One group: with a
    second, PixelMed's validator no longer recognises TID 1410 in either.)"""
    s, r = _items(), _items().RelationshipTypeValues
    shape = geometry(source)
    if finding.label is None or finding.probability is None or shape is None:
        return None
    kind = "evidence" if finding.outcome == "present" and finding.evidence is not None else "assessed"
    box = finding.evidence if kind == "evidence" else (0.0, 0.0, 1.0, 1.0)
    container = s.ContainerContentItem(c["measurements"], relationship_type=r.CONTAINS)
    container.ContentSequence = s.ContentSequence([
        _group(finding, algo, c, ref, region_on_source(box, shape, algo.resize), kind, uid("tracking"))])
    return container


def _qualitative(finding: Finding, c: dict):
    """TID 1500 rows 12-14: the answer (present / absent / not assessed), the guard's verdict, the reason."""
    s, r = _items(), _items().RelationshipTypeValues
    answer = {"present": c["present"], "absent": c["absent"], "not assessed": c["not_assessed"]}[finding.outcome]
    items = [s.CodeContentItem(c["pneumonia"], answer, r.CONTAINS),
             s.CodeContentItem(c["guard_verdict"], _verdict_code(finding.guard_verdict), r.CONTAINS)]
    if finding.reason:  # our own words (decoder, guard): ASCII, so any character set of the source can hold it
        text = finding.reason.encode("ascii", "replace").decode()[:1024]
        items.append(s.TextContentItem(c["comment"], text, r.CONTAINS))
    container = s.ContainerContentItem(c["qualitative"], relationship_type=r.CONTAINS)
    container.ContentSequence = s.ContentSequence(items)
    return container


def _content(source, finding: Finding, algo: Algorithm, ref: tuple[str, str], uid):
    s, r = _items(), _items().RelationshipTypeValues
    c = _codes()
    root = s.ContainerContentItem(c["report"], template_id="1500")
    items = [*_observer(algo, c), s.CodeContentItem(c["procedure_reported"], c["procedure"], r.HAS_CONCEPT_MOD),
             _library(source, ref, c)]
    measurements = _measurements(source, finding, algo, c, ref, uid)
    if measurements is not None:
        items.append(measurements)
    items.append(_qualitative(finding, c))
    root.ContentSequence = s.ContentSequence(items)
    return root


def source_ref(source) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) of the source, padding removed; ValueError if either is not a UID."""
    cls, inst = clean_uid(source.get("SOPClassUID")), clean_uid(source.get("SOPInstanceUID"))
    if cls is None or inst is None:
        raise ValueError("the header's SOP Class or SOP Instance UID is not a valid UID")
    return cls, inst


def study_uids(source) -> tuple[str, str]:
    study, series = clean_uid(source.get("StudyInstanceUID")), clean_uid(source.get("SeriesInstanceUID"))
    if study is None or series is None:
        raise ValueError("the header's Study or Series Instance UID is not a valid UID")
    return study, series


def evidence_of(source, identity=None):
    """The source as a result's evidence and patient/study source: its UIDs, and the checked identity."""
    ds = Dataset()
    for elem in deepcopy(identity if identity is not None else checked_identity(source)):
        ds[elem.tag] = elem
    ds.SOPClassUID, ds.SOPInstanceUID = source_ref(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uids(source)
    return ds


def apply_identity(ds, identity, algo: Algorithm) -> None:
    """Patient and study attributes, character set and equipment, set on a result directly (no library check
    that would warn quoting a name)."""
    for elem in identity:
        ds[elem.tag] = elem
    if "SpecificCharacterSet" not in identity and "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, algo.name[:64]
    ds.SoftwareVersions = [f"pneumo-edge {algo.software}"[:64], algo.version[:64]]
    ds.DeviceSerialNumber = algo.model_sha256[:16]
    ds.DeviceUID = device_uid(algo)
    scheme = Dataset()
    for k, v in LOCAL_SCHEME.items():
        setattr(scheme, k, v)
    ds.CodingSchemeIdentificationSequence = [scheme]


def _comprehensive_sr(**kw):
    """highdicom's ComprehensiveSR, leaving the patient and study modules to apply_identity: its own copy
    would take them unchecked, and needs a SOP class it knows."""
    import highdicom as hd  # the [node] extra, only when the node runs

    class ComprehensiveSR(hd.sr.ComprehensiveSR):
        def copy_patient_and_study_information(self, dataset) -> None:
            pass

    return ComprehensiveSR(**kw)


def build_sr(source, finding: Finding, algo: Algorithm):
    """A Comprehensive SR for one source image (a pydicom Dataset of its header; pixels not needed).
    Raises ValueError only for a header whose UIDs are not UIDs (no study to file a result in)."""
    identity = checked_identity(source)
    evidence = evidence_of(source, identity)
    ref = (evidence.SOPClassUID, evidence.SOPInstanceUID)
    uid = lambda role: derived_uid(role, ref[1], algo.model_sha256)  # noqa: E731
    blank = deepcopy(evidence)
    for name in ("PatientName", "ReferringPhysicianName"):  # set below, directly: no name check, no warning
        setattr(blank, name, "")
    ds = _comprehensive_sr(evidence=[blank], content=_content(source, finding, algo, ref, uid),
                             series_instance_uid=uid("sr-series:" + evidence.SeriesInstanceUID),
                             series_number=SERIES_NUMBER,
                             sop_instance_uid=uid("sr"), instance_number=1, manufacturer=MANUFACTURER,
                             is_complete=True, series_description=SERIES_DESCRIPTION, specific_character_set=None)
    apply_identity(ds, identity, algo)
    return ds


def read_sr(ds) -> dict:
    """What a report made by build_sr says, read back from its content tree (for checks and tooling): finding
    ("present" | "absent" | "not assessed"), probability and threshold (0-1), guard verdict and score,
    comment, source UID, and the image regions by kind ("assessed", "evidence": SCOORD corners on the source)."""
    out: dict = {"finding": None, "probability": None, "threshold": None, "guard_verdict": None,
                 "guard_score": None, "comment": None, "source_uid": None, "regions": {}}
    percent = {"prob-present": "probability", "prob-absent": "probability", "threshold": "threshold"}
    answers = {"52101004": "present", "272519000": "absent", "not-assessed": "not assessed"}

    def walk(items, purpose=None) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
            kind = item.get("ValueType")
            value = item.ConceptCodeSequence[0].CodeValue if kind == "CODE" else None
            if kind == "CODE" and name == "233604007":
                out["finding"] = answers.get(value, value)
            elif kind == "CODE" and name == "guard-verdict":
                out["guard_verdict"] = value.replace("-", " ")
            elif kind == "CODE" and name == "130400":
                purpose = {"75958009": "evidence", "111041": "assessed"}.get(value, value)
            elif kind == "NUM" and name in percent:
                out[percent[name]] = float(item.MeasuredValueSequence[0].NumericValue) / 100
            elif kind == "NUM" and name == "guard-score":
                out["guard_score"] = float(item.MeasuredValueSequence[0].NumericValue)
            elif kind == "TEXT" and name == "121106":
                out["comment"] = str(item.TextValue)
            elif kind == "SCOORD" and name == "111030":
                out["regions"][purpose] = [float(v) for v in item.GraphicData]
            elif kind == "IMAGE" and out["source_uid"] is None:
                out["source_uid"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if "ContentSequence" in item:
                walk(item.ContentSequence, purpose if kind != "CONTAINER" else None)
            if kind == "CONTAINER":
                purpose = None

    walk(ds.ContentSequence)
    return out
