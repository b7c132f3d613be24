"""What the node writes, judged by independent validators: PixelMed's DicomSRValidator (the one IHE AI Results
testing uses) and dciodvfy (dicom3tools), on SRs and heat-map SCs made from clean and from hostile headers
(character sets misspelt or in ISO 2022, values invalid for their VR). Neither may report an error, nor a
warning this file does not justify (JUSTIFIED, with the reason). Also: no library warning while a result is
built (highdicom's quotes the person name), the source's text bytes passed through, and each item of a report
readable on its own.

`conformance_problems(paths)` is the reusable part: the node's end-to-end tests pass it what Orthanc received.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("highdicom", reason="the node extra is not installed (pip install '.[node]')")

import pydicom  # noqa: E402
from pydicom.dataelem import RawDataElement  # noqa: E402

from pneumo_edge.testing.dicomfilm import film_dataset  # noqa: E402
from pneumo_edge.edge.node.classify import strongest_cell  # noqa: E402
from pneumo_edge.edge.node.identity import character_set, checked_value  # noqa: E402
from pneumo_edge.edge.node.sc import build_sc  # noqa: E402
from pneumo_edge.edge.node.sr import LOCAL, Algorithm, Finding, build_sr, read_sr, region_on_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "tests" / "support" / "PixelMedValidate.java"
JAVA_LIMITS = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]
# Warnings that stay, each for a stated reason; everything else a validator says fails the test.
JUSTIFIED = {
    # dciodvfy knows the coding scheme designators of PS3.16 only; a local one (PS3.16 8.2: "99" and a
    # name) is the standard's own way for codes no standard has, and the SR declares it in (0008,0110)
    re.compile(r"^Warning - Unrecognized defined term <99PNEDGE> for value 1 of attribute <Coding Scheme Designator>$"):
        "local coding scheme, declared in the Coding Scheme Identification Sequence",
    # Laterality is type 2C (required for a paired body part): empty is the standard's "unknown", for an
    # image whose header names no body part
    re.compile(r"^Warning - is only permitted to be empty when actually unknown; .* attribute <Laterality>$"):
        "source names no body part: laterality unknown",
    # a type 2 attribute the source left empty or held invalid is empty (unknown) in the result, as the IOD
    # allows; the warning is about building a DICOMDIR for media, not about the object
    re.compile(r"^Warning - Missing attribute or value that would be needed to build DICOMDIR - "
               r"(Study Date|Study Time|Study ID|Patient ID|Patient's Name)$"): "empty type 2 value: unknown",
    # a name in one component ("Jane Doe", a de-identified id) is a valid PN; the result keeps the source's
    # bytes rather than guess which word is the family name
    re.compile(r"^Warning - Value dubious for this VR - \(0x00(08|10),0x00(90|10)\) PN .* - Retired Person Name form$"):
        "person name copied as the source wrote it",
}


def pixelmed_jar() -> str | None:
    for jar in ("/usr/share/java/pixelmed.jar",):
        if Path(jar).is_file():
            return jar
    found = subprocess.run(["dpkg", "-L", "libpixelmed-java"], capture_output=True, text=True) \
        if shutil.which("dpkg") else None
    jars = [line for line in (found.stdout.splitlines() if found else []) if line.endswith("pixelmed.jar")]
    return jars[0] if jars else None


MISSING = [what for what, ok in (("java", shutil.which("java")), ("PixelMed (apt-get install libpixelmed-java)",
                                                                  pixelmed_jar()),
                                 ("dciodvfy (apt-get install dicom3tools)", shutil.which("dciodvfy"))) if not ok]
needs_validators = pytest.mark.skipif(bool(MISSING), reason="not installed: " + ", ".join(MISSING))


def _report_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.match(r"^\s*(Error|Warning)", line)]


def conformance_problems(paths: list[Path]) -> dict[str, list[str]]:
    """{file: the validators' errors and unjustified warnings}; PixelMed judges the SRs, dciodvfy every file."""
    problems = {str(p): [] for p in paths}
    srs = [str(p) for p in paths if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]
    if srs:
        r = subprocess.run(["java", *JAVA_LIMITS, "-cp", pixelmed_jar(), str(HELPER), *srs],
                           capture_output=True, text=True, errors="replace", timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        for block in r.stdout.split("== ")[1:]:
            name, _, report = block.partition("\n")
            assert "Found Root Template TID_1500" in report, (name, report)
            problems[name.strip()] += [f"PixelMed: {line}" for line in _report_lines(report)]
    for p in paths:
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, errors="replace", timeout=120)
        problems[str(p)] += [f"dciodvfy: {line}" for line in _report_lines(r.stdout + r.stderr)
                             if not any(rule.match(line) for rule in JUSTIFIED)]
    return {k: v for k, v in problems.items() if v}


ALGO = Algorithm(name="pneumo-edge tf_efficientnet_lite0", version="2026-11-26 sha256:0123456789abcdef",
                 model_sha256="0123456789abcdef" * 4, threshold=0.42, software="0.1.0", exported_by="0.1.0")
PRESENT = Finding("PNEUMONIA", 0.9731, "accepted", 0.31, evidence=(2 / 7, 3 / 7, 3 / 7, 4 / 7))
ABSENT = Finding("NORMAL", 0.0212, "accepted", 0.22)
REFUSED = Finding(None, 0.81, "rejected", 1.7, "refused by the guard: far from the training films")
UNDECODABLE = Finding(None, None, "not run", None, "not decodable: cannot decode the pixel data")

# PS3.5 Annex H and I: the standard's own Japanese and Korean person names
JAPANESE = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
KOREAN = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf"
# name: (Specific Character Set, attributes as raw bytes, what the result must hold: keyword -> bytes or None
# for "left out or empty")
CASES = {
    "japanese": (b"\\ISO 2022 IR 87", {"PatientName": JAPANESE}, {"PatientName": JAPANESE}),
    "korean": (b"\\ISO 2022 IR 149", {"PatientName": KOREAN}, {"PatientName": KOREAN}),
    "latin1-2022": (b"ISO 2022 IR 100", {"PatientName": b"M\xfcller^J\xfcrgen"}, {"PatientName": b"M\xfcller^J\xfcrgen"}),
    "empty-set": (b"", {"PatientName": b"Doe^Jane"}, {"PatientName": b"Doe^Jane"}),
    "UTF-8": (b"UTF-8", {"PatientName": "Bj\u00f6rk^Gu\u00f0mundsd\u00f3ttir".encode()},
              {"PatientName": "Bj\u00f6rk^Gu\u00f0mundsd\u00f3ttir".encode()}),
    "utf8": (b"utf8", {"PatientName": "\u00c9lise^Dupr\u00e9".encode()}, {"PatientName": "\u00c9lise^Dupr\u00e9".encode()}),
    "ISO-8859-1": (b"ISO-8859-1", {"PatientName": b"Fran\xe7ois^No\xebl"}, {"PatientName": b"Fran\xe7ois^No\xebl"}),
    "ISO_IR100": (b"ISO_IR100", {"PatientName": b"Fran\xe7ois^No\xebl"}, {"PatientName": b"Fran\xe7ois^No\xebl"}),
    "unknown-set": (b"ISO_IR 999", {"PatientName": b"Fran\xe7ois^No\xebl", "PatientID": b"P-77"},
                    {"PatientName": None, "PatientID": b"P-77"}),
    "invalid-utf8": (b"ISO_IR 192", {"PatientName": b"M\xfcller^Hans"}, {"PatientName": None}),
    "no-caret": (b"", {"PatientName": b"Jane Doe", "ReferringPhysicianName": b"Dr Who"},
                 {"PatientName": b"Jane Doe", "ReferringPhysicianName": b"Dr Who"}),
    "age-62": (b"", {"PatientAge": b"62"}, {"PatientAge": None}),
    "age-ok": (b"", {"PatientAge": b"062Y"}, {"PatientAge": b"062Y"}),
    "long-name": (b"", {"PatientName": b"A" * 40 + b"^" + b"B" * 30}, {"PatientName": None}),
    "backslash-name": (b"", {"PatientName": b"Doe^Jane\\Roe^Richard"}, {"PatientName": None}),
    "sex-X": (b"", {"PatientSex": b"X "}, {"PatientSex": None}),
    "sex-U": (b"", {"PatientSex": b"U "}, {"PatientSex": None}),
    "sex-lower": (b"", {"PatientSex": b"f "}, {"PatientSex": b"F"}),
    "bad-date": (b"", {"StudyDate": b"2026-13-45", "PatientBirthDate": b"19901345"},
                 {"StudyDate": None, "PatientBirthDate": None}),
    "dashed-date": (b"", {"StudyDate": b"2026-01-02", "StudyTime": b"12:30:00"},
                    {"StudyDate": b"20260102", "StudyTime": b"123000"}),
    "study-description": (b"", {"StudyDescription": b"CHEST PA"}, {"StudyDescription": b"CHEST PA"}),
}
VR = {"PatientName": "PN", "ReferringPhysicianName": "PN", "PatientID": "LO", "PatientAge": "AS", "PatientSex": "CS",
      "StudyDate": "DA", "PatientBirthDate": "DA", "StudyTime": "TM", "StudyDescription": "LO"}


def hostile(charset: bytes, raw: dict[str, bytes], **tags):
    """A film header with raw (unchecked) values, as a modality would send them."""
    ds = film_dataset(np.zeros((48, 64), np.uint8), **tags)
    ds.PatientName = ""  # the default test name would otherwise stand where a case leaves one out
    for keyword, value in {"SpecificCharacterSet": charset, **raw}.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        vr = VR.get(keyword, "CS")
        value = value + b" " * (len(value) % 2)
        ds[tag] = RawDataElement(pydicom.tag.Tag(tag), vr, len(value), value, 0, False, True)
    return ds


def written(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def raw_value(path: Path, keyword: str) -> bytes | None:
    """The element's bytes as written, padding removed; None when absent or empty."""
    elem = pydicom.dcmread(path, stop_before_pixels=True).get_item(pydicom.datadict.tag_for_keyword(keyword))
    value = None if elem is None else (elem.value if isinstance(elem.value, bytes) else str(elem.value).encode())
    return value.rstrip(b" \x00") or None if value is not None else None


def build_quietly(fn, *args):
    """fn(*args), failing on any warning a library emits meanwhile (highdicom's quotes the person name)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    assert not caught, [str(w.message)[:80] for w in caught]
    return out


@needs_validators
def test_hostile_headers_give_valid_results_that_keep_the_sources_bytes(tmp_path):
    made = []
    for name, (charset, raw, expected) in CASES.items():
        source = hostile(charset, raw, BodyPartExamined="CHEST")
        for kind, finding in (("sr", PRESENT if len(made) % 4 else REFUSED), ("sr2", ABSENT)):
            path = written(build_quietly(build_sr, source, finding, ALGO), tmp_path / f"{name}.{kind}.dcm")
            made.append(path)
            for keyword, want in expected.items():
                assert raw_value(path, keyword) == want, (name, keyword, raw_value(path, keyword))
        sc = written(build_quietly(build_sc, source, np.zeros((64, 64, 3), np.uint8), ALGO), tmp_path / f"{name}.sc.dcm")
        made.append(sc)
        assert raw_value(sc, "PatientName") == expected.get("PatientName", raw_value(made[-2], "PatientName"))
    problems = conformance_problems(made)
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())


@needs_validators
def test_real_files_from_other_sites_give_valid_results(tmp_path):
    """The DICOM files in external_cxr (a public RSNA film, a vendor's sample): results without a library
    warning, clean for both validators."""
    sources = sorted((ROOT.parent / "shared" / "data" / "external_cxr").glob("*.dcm"))
    if not sources:
        pytest.skip("no DICOM files in ../shared/data/external_cxr")
    made = []
    for f in sources:
        header = pydicom.dcmread(f, stop_before_pixels=True)
        made.append(written(build_quietly(build_sr, header, PRESENT, ALGO), tmp_path / f"{f.stem}.sr.dcm"))
        made.append(written(build_quietly(build_sc, header, np.zeros((64, 64, 3), np.uint8), ALGO),
                            tmp_path / f"{f.stem}.sc.dcm"))
        assert raw_value(made[-2], "PatientName") == raw_value(f, "PatientName")
    problems = conformance_problems(made)
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_character_sets_are_read_as_pydicom_reads_them_without_guessing():
    def of(value: bytes):
        ds = pydicom.Dataset()
        ds[0x00080005] = RawDataElement(pydicom.tag.Tag(0x00080005), "CS", len(value), value, 0, False, True)
        return character_set(ds)[0]

    assert of(b"\\ISO 2022 IR 87") == ["", "ISO 2022 IR 87"] and of(b"ISO 2022 IR 100") == ["ISO_IR 100"]
    assert of(b"UTF-8") == of(b"utf8") == ["ISO_IR 192"] and of(b"ISO-8859-1") == of(b"ISO_IR100") == ["ISO_IR 100"]
    assert of(b"") == of(b"ISO_IR 999") == [] and of(b"ISO_IR 192\\ISO 2022 IR 87") == []  # no certain reading
    assert checked_value("2026-13-45", "DA") is None and checked_value("19610913", "DA") == "19610913"
    assert checked_value("62", "AS") is None and checked_value("m", "CS") == "M"
    assert checked_value("24:00", "TM") is None and checked_value("0930", "TM") == "0930"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, as this test writes the bad UIDs
def test_a_header_without_valid_uids_is_a_one_line_error_that_quotes_nothing():
    source = film_dataset(np.zeros((48, 64), np.uint8))
    source.StudyInstanceUID = "1.2.QUIMBY"
    with pytest.raises(ValueError) as e:
        build_sr(source, ABSENT, ALGO)
    assert "QUIMBY" not in str(e.value) and "\n" not in str(e.value)
    padded = film_dataset(np.zeros((48, 64), np.uint8), sop_uid="1.2.3.4\n")  # a stray newline is padding
    assert read_sr(build_sr(padded, ABSENT, ALGO))["source_uid"] == "1.2.3.4"


def _items(ds) -> list:
    out = []

    def walk(items, path):
        for item in items:
            name = item.ConceptNameCodeSequence[0]
            here = [*path, name.CodeMeaning]
            out.append((tuple(here), item))
            if "ContentSequence" in item:
                walk(item.ContentSequence, here)

    walk(ds.ContentSequence, [])
    return out


def _code(item) -> tuple[str, str]:
    c = item.ConceptCodeSequence[0]
    return c.CodeValue, c.CodeMeaning


def test_each_item_says_on_its_own_what_the_result_is():
    """Present, absent and not assessed differ in every item that carries the result: the root-level
    qualitative evaluation, the group's finding and the probability's name; no probability without an
    assessment; the region is the heat map's cell for a present result that has one."""
    source = film_dataset(np.zeros((480, 640), np.uint8), BodyPartExamined="CHEST")
    reports = {f.outcome: build_sr(source, f, ALGO) for f in (PRESENT, ABSENT, REFUSED)}
    seen = {}
    for outcome, ds in reports.items():
        items = _items(ds)
        answer = [_code(i) for p, i in items if p[-1] == "Pneumonia" and p[-2] == "Qualitative Evaluations"]
        findings = [_code(i) for p, i in items if p[-1] == "Finding"]
        numbers = {p[-1]: float(i.MeasuredValueSequence[0].NumericValue) for p, i in items if i.ValueType == "NUM"}
        seen[outcome] = (answer, findings, sorted(numbers))
        assert read_sr(ds)["finding"] == outcome
    assert seen["present"][0] == [("52101004", "Present")] and seen["absent"][0] == [("272519000", "Absent")]
    assert seen["not assessed"][0] == [("not-assessed", "Not assessed")]
    assert seen["present"][1] == [("233604007", "Pneumonia")] and seen["absent"][1] == [("pneumonia-absent", "Pneumonia absent")]
    assert seen["not assessed"][1] == [] and seen["not assessed"][2] == []  # no finding, no number
    assert any(n.startswith("AI: pneumonia PRESENT") for n in seen["present"][2])
    assert any(n.startswith("AI: pneumonia ABSENT") for n in seen["absent"][2])
    got = {o: read_sr(ds) for o, ds in reports.items()}
    assert got["present"]["probability"] == pytest.approx(0.9731) and got["absent"]["threshold"] == pytest.approx(0.42)
    assert got["not assessed"]["comment"].startswith("refused by the guard") and got["not assessed"]["probability"] is None
    # the present result's region is the map's cell, on the source's pixels: the centre crop of 640 x 480
    assert list(got["present"]["regions"]) == ["evidence"] and list(got["absent"]["regions"]) == ["assessed"]
    x0, y0 = got["present"]["regions"]["evidence"][:2]
    assert (x0, y0) == pytest.approx((80 + 480 * 2 / 7, 480 * 3 / 7), abs=1e-3)
    assert got["absent"]["regions"]["assessed"][:6] == [80.0, 0.0, 560.0, 0.0, 560.0, 480.0]


def test_the_procedure_and_the_image_library_say_only_what_the_header_says():
    chest = build_sr(film_dataset(np.zeros((48, 64), np.uint8), BodyPartExamined="CHEST"), ABSENT, ALGO)
    skull = build_sr(film_dataset(np.zeros((48, 64), np.uint8), BodyPartExamined="SKULL"),
                     Finding(None, None, "not run", None, "body part SKULL"), ALGO)
    for ds, chest_named in ((chest, True), (skull, False)):
        items = _items(ds)
        assert [_code(i) for p, i in items if p[-1] == "Procedure reported"] == [("363679005", "Imaging procedure")]
        library = [i for p, i in items if p[0] == "Image Library"]
        assert any(i.ValueType == "IMAGE" for i in library)
        assert (("51185008", "Chest") in [_code(i) for p, i in items if p[-1] == "Target Region"]) == chest_named
        assert not any(p[-1] == "Imaging Measurements" for p, _ in items) or chest_named


def test_the_model_identifies_itself_in_the_algorithm_and_the_equipment():
    from pneumo_edge.edge.model import EdgeModel

    model_file = ROOT / "export" / "model.onnx"
    if not model_file.is_file():
        pytest.skip("needs the shipped model export/model.onnx")
    model = EdgeModel(model_file)
    algo = Algorithm.of(model)
    assert model.sha256[:16] in algo.version and algo.model_sha256 == model.sha256
    assert algo.threshold == pytest.approx(model.threshold) and algo.resize == model.spec.resize
    ds = build_sr(film_dataset(np.zeros((48, 64), np.uint8), BodyPartExamined="CHEST"), ABSENT, algo)
    items = {p[-1]: i for p, i in _items(ds)}
    assert items["Algorithm Version"].TextValue == algo.version and items["Algorithm Name"].TextValue == algo.name
    assert ds.ManufacturerModelName == algo.name and algo.version in list(ds.SoftwareVersions)
    assert ds.DeviceSerialNumber == model.sha256[:16] and pydicom.uid.UID(ds.DeviceUID).is_valid
    assert items["Device Observer UID"].UID == ds.DeviceUID
    scheme = ds.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == LOCAL and scheme.CodingSchemeName


def test_the_heat_map_capture_says_what_the_source_says_of_itself(tmp_path):
    from pneumo_edge.testing.dicomfilm import write_film

    film = sorted((ROOT / "examples" / "xrays" / "NORMAL").glob("*.jp*g"))[0]
    pixels = np.zeros((64, 64, 3), np.uint8)
    lossy_src = pydicom.dcmread(write_film(film, tmp_path / "j.dcm", "jpeg-baseline", PatientOrientation=["P", "F"],
                                           StudyDescription="CHEST PA", BodyPartExamined="CHEST"),
                                stop_before_pixels=True)
    sc = build_sc(lossy_src, pixels, ALGO)
    assert sc.LossyImageCompression == "01" and sc.LossyImageCompressionMethod == "ISO_10918_1"
    assert list(sc.PatientOrientation) == ["P", "F"] and sc.StudyDescription == "CHEST PA" and "Laterality" not in sc
    plain = pydicom.dcmread(write_film(film, tmp_path / "e.dcm", "explicit", PatientOrientation=["X", "Q"],
                                       BodyPartExamined=""),
                            stop_before_pixels=True)
    sc = build_sc(plain, pixels, ALGO)
    assert sc.LossyImageCompression == "00" and sc.PatientOrientation == "" and sc.Laterality == ""


def test_the_strongest_cell_of_a_map():
    heat = np.zeros((224, 224), np.float32)
    heat[100:130, 40:60] = 1.0
    left, top, right, bottom = strongest_cell(heat)
    assert left <= 40 / 224 < 60 / 224 <= right + 1 / 7 and top <= 100 / 224 <= bottom
    assert strongest_cell(np.zeros((224, 224), np.float32)) is None  # nothing found: no evidence region
    corners = region_on_source((0.0, 0.0, 1.0, 1.0), (100, 300), "squash-bilinear")
    assert corners.tolist() == [[0, 0], [300, 0], [300, 100], [0, 100], [0, 0]]


def test_written_reports_read_back_through_pydicom(tmp_path):
    source = film_dataset(np.zeros((48, 64), np.uint8), BodyPartExamined="CHEST")
    buf = io.BytesIO()
    build_sr(source, PRESENT, ALGO).save_as(buf, enforce_file_format=True)
    got = read_sr(pydicom.dcmread(io.BytesIO(buf.getvalue())))
    assert got["finding"] == "present" and got["guard_verdict"] == "accepted" and got["guard_score"] == pytest.approx(0.31)
