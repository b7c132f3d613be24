"""What of a source image's header a result may carry: the patient and study attributes, each checked against
its value representation, in the source's own character set.

    identity = checked_identity(source)     # a Dataset: SpecificCharacterSet + the attributes worth copying
    rows, cols = geometry(source)           # or None

Real headers hold anything: a character set misspelt (`UTF-8`, `ISO_IR100`), left empty or unknown, a
person name with invalid bytes, an age without its unit, a date of the 45th of the 13th month. Nothing here
raises on such values and nothing is copied invalid: a text value whose bytes decode in the source's
(normalised) character set is passed through byte for byte (the result declares the same character set), a
value that does not decode, or breaks its VR, is left out (empty, for the type 2 attributes that must be
present); dates and times written with separators are repaired. No value is ever logged or quoted here.
"""

from __future__ import annotations

import codecs
import datetime
import re

from pydicom import config
from pydicom.charset import decode_bytes, encode_string, python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from .uids import valid_uid

# (keyword, VR, type 2: present even when empty) of the Patient, General Study and Patient Study modules
COPIED = (("PatientName", "PN", True), ("PatientID", "LO", True), ("IssuerOfPatientID", "LO", False),
          ("PatientBirthDate", "DA", True), ("PatientSex", "CS", True), ("PatientAge", "AS", False),
          ("PatientSize", "DS", False), ("PatientWeight", "DS", False), ("StudyDate", "DA", True),
          ("StudyTime", "TM", True), ("ReferringPhysicianName", "PN", True), ("StudyID", "SH", True),
          ("AccessionNumber", "SH", True), ("StudyDescription", "LO", False))
MAX_CHARS = {"PN": 64, "LO": 64, "SH": 16, "CS": 16, "DS": 16, "AS": 4}  # PN: per component group
SEXES = ("M", "F", "O")
_CODE_EXTENSIONS = re.compile(r"^ISO 2022 IR \d+$")
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # ESC (0x1b) belongs to ISO 2022 escape sequences


def _defined_terms() -> dict[str, str]:
    """Normalised spelling (upper case, letters and digits only) -> the DICOM defined term."""
    return {re.sub(r"[^A-Z0-9]", "", term.upper()): term for term in python_encoding}


def _term_for(value: str, terms: dict[str, str]) -> str | None:
    """The defined term a (possibly misspelt) Specific Character Set value means, or None."""
    key = re.sub(r"[^A-Z0-9]", "", value.upper())
    if key in terms:
        return terms[key]
    try:  # a Python codec name a writer used instead: utf8, UTF-8, ISO-8859-1, latin1
        codec = codecs.lookup(value.strip()).name
    except (LookupError, ValueError):
        return None
    names = sorted(t for t, c in python_encoding.items() if codecs.lookup(c).name == codec and t)
    single = [t for t in names if not t.startswith("ISO 2022")]
    return (single or names or [None])[0]


def character_set(source) -> tuple[list[str], list[str] | None]:
    """(the result's Specific Character Set values, the Python codecs that decode the source's text). Without
    a value, or with one that names no known set, the codecs are None: only plain ASCII text is certain then."""
    raw = source.get_item(0x00080005)
    value = None if raw is None else raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    parts = [p.strip() for p in (value.split("\\") if isinstance(value, str) else [str(v) for v in value or []])]
    if not any(parts):
        return [], None
    terms = _defined_terms()
    out = [""] if not parts[0] else []  # an empty first value: the default repertoire, code extensions follow
    for part in parts[1:] if not parts[0] else parts:
        term = _term_for(part, terms)
        if term is None:
            return [], None
        out.append(term)
    if len(out) > 1 and any(t in ("ISO_IR 192", "GB18030", "GBK") for t in out):
        return [], None  # a set that allows no code extension, given some: no reading is certain
    if len(out) == 1 and out[0].replace("ISO 2022 IR", "ISO_IR") in python_encoding:
        out = [out[0].replace("ISO 2022 IR", "ISO_IR")]  # one set, no extension: the same bytes, plainly named
    elif len(out) > 1:  # with code extensions every value is an ISO 2022 term (PS3.3 C.12.1.1.2)
        out = [t.replace("ISO_IR", "ISO 2022 IR") if t.replace("ISO_IR", "ISO 2022 IR") in python_encoding else t
               for t in out]
    if out == ["ISO_IR 6"]:
        return [], None  # the default repertoire, named: ASCII
    return out, [python_encoding[t or "ISO 2022 IR 6"] for t in out]


def _decoded(raw: bytes, encodings: list[str] | None) -> str | None:
    """The text of `raw`, or None where it cannot be decoded with certainty."""

    raw = raw.rstrip(b" \x00")
    if not raw:
        return ""
    if encodings is None:  # no character set, or an unknown one: plain ASCII alone is certain
        return raw.decode("ascii") if raw.isascii() else None
    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        text = decode_bytes(raw, encodings, {0x5C, 0x3D, 0x5E} if len(encodings) > 1 else set())
        return None if "\ufffd" in text else text  # replacement characters: decoded before, with losses
    except (UnicodeError, ValueError, LookupError):
        return None
    finally:
        config.settings.reading_validation_mode = old


def _text_ok(text: str, vr: str) -> bool:
    if "\\" in text or _CONTROL.search(text):  # a backslash would make a single-valued attribute two values
        return False
    if vr == "PN":
        groups = text.split("=")
        return len(groups) <= 3 and all(len(g) <= MAX_CHARS["PN"] and g.count("^") <= 4 for g in groups)
    return len(text) <= MAX_CHARS[vr]


def _date(text: str) -> str | None:
    digits = re.sub(r"[-./]", "", text) if re.fullmatch(r"\d{4}[-./]\d{2}[-./]\d{2}", text) else text
    try:
        datetime.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        return None
    return digits if re.fullmatch(r"\d{8}", digits) else None


def _time(text: str) -> str | None:
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", text):
        text = text.replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
    if not m or (m.group(4) and not m.group(3)):
        return None
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return text if hh < 24 and mm < 60 and ss < 61 else None


def checked_value(text: str, vr: str) -> str | None:
    """`text` (decoded, padding stripped) as a valid value of `vr`, repaired where it is certain how; else None."""
    text = text.strip(" ") if vr != "PN" else text.rstrip(" ")
    if vr == "DA":
        return _date(text)
    if vr == "TM":
        return _time(text)
    if vr == "CS":  # PatientSex: M, F, O or empty (unknown)
        return text.upper() if text.upper() in SEXES else None
    if vr == "AS":
        return text if re.fullmatch(r"\d{3}[DWMY]", text) else None
    if vr == "DS":
        return text if len(text) <= 16 and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text) else None
    return text if _text_ok(text, vr) else None


def _raw_bytes(source, tag: int, encodings: list[str] | None) -> bytes | None:
    """The element's value as the source holds it: the raw bytes when unread, else the decoded value re-encoded."""
    elem = source.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes) or value is None:
        return value or b""
    if hasattr(value, "original_string") and value.original_string:  # a PersonName read from bytes
        return value.original_string
    text = "\\".join(map(str, value)) if not isinstance(value, str) and hasattr(value, "__iter__") else str(value)
    try:
        return encode_string(text, encodings or ["iso8859"]) if not text.isascii() else text.encode("ascii")
    except (UnicodeError, ValueError, LookupError):
        return None


def checked_identity(source):
    """A new Dataset: the result's SpecificCharacterSet and each COPIED attribute that is valid (type 2 ones
    present, empty when the source's value is missing or had to be left out). Text values keep their bytes."""

    out = Dataset()
    terms, encodings = character_set(source)
    if terms:
        out.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
    for keyword, vr, type2 in COPIED:
        tag = tag_for_keyword(keyword)
        raw = _raw_bytes(source, tag, encodings)
        text = None if raw is None else _decoded(raw, encodings)
        value = None if text is None else checked_value(text, vr)
        if value and vr == "PN" and not raw.isascii():  # the source's bytes, written back as they are
            value = PersonName(raw.rstrip(b" \x00"), encodings)
        if value or type2:
            out.add_new(tag, vr, value or "")
    return out


def geometry(source) -> tuple[int, int] | None:
    """(rows, columns) of a single-frame source image, or None where the header does not say it plainly."""
    try:
        rows, cols = int(source.Rows), int(source.Columns)
        frames = int(source.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return (rows, cols) if rows > 0 and cols > 0 and frames == 1 else None


def clean_uid(value) -> str | None:
    """A UID from the header with its padding (spaces, NUL, a stray newline) removed, or None if invalid."""
    text = str(value or "").strip(" \x00\r\n\t")
    return text if valid_uid(text) else None
