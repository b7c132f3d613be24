"""Who a film belongs to: intervals, splits and guarantees resample patients, not films.

    patient_id("person123_bacteria_456.jpeg")          # "PERSON123"
    patient_id("nih_patient00001280_fu004.png")        # "NIH00001280"
    patient_id("scan.dcm")                             # None: the name carries no patient

    table = SiteTable.beside(Path("site_xrays"))       # patients.csv or metadata.csv in the folder, if any
    source = PatientSource(table, pattern=r"^(\\d+)_")  # a --patient-pattern, when the names carry the id
    source.patient("site_xrays/NORMAL/0042_1.png")     # the table first, then the pattern, then the names

A site names its patients one of three ways, tried in this order for each film:
  1. a table in the site's folder: `patients.csv` (columns file, patient) or `metadata.csv` (a `file`
     column and a patient id column: `patient`, `patient_id` or any name ending in `patient_id`);
     a film is found by its path under the folder (NORMAL/x.png) or, failing that, by its bare name;
  2. `--patient-pattern REGEX`, searched in the file name: its group `patient`, else its first group,
     else the whole match;
  3. the names this toolchain knows (the Kermany set's, the NIH set's).
A film none of them names counts as a patient of its own (the caller decides how to say so).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

# File names carry the patient: person123_bacteria_456, IM-0001-0001, NORMAL2-IM-0587-0001-0002,
# nih_patient00001280_fu004 (NIH ChestX-ray14's 00001280_004 with its follow-up number).
_PATIENT_RES = (
    (re.compile(r"^(person\d+)_", re.I), ""),
    (re.compile(r"^(NORMAL2-IM-\d+)-", re.I), ""),
    (re.compile(r"^(IM-\d+)-", re.I), ""),
    (re.compile(r"^nih_patient(\d+)_fu\d+", re.I), "NIH"),
)
TABLES = ("patients.csv", "metadata.csv")  # looked for in the site's folder, first found wins
FILE_COLUMNS = ("file", "path", "filename")
PATIENT_COLUMNS = ("patient", "patient_id")  # else any column whose name ends in "patient_id"
MAX_TABLE_BYTES = 64 << 20  # a site table is a few MB at most; refuse a file that is not one


def patient_id(name: str) -> str | None:
    """The patient a file name carries under the names this toolchain knows, else None."""
    for rx, prefix in _PATIENT_RES:
        m = rx.match(name)
        if m:
            return prefix + m.group(1).upper()
    return None


def compile_pattern(pattern: str | None) -> re.Pattern | None:
    """--patient-pattern as a compiled regex; a DataError naming the problem when it is not one."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise DataError(f"--patient-pattern {pattern!r} is not a regular expression ({e})") from None


def _from_pattern(rx: re.Pattern, name: str) -> str | None:
    m = rx.search(name)
    if not m:
        return None
    if "patient" in rx.groupindex:
        return m.group("patient")
    return m.group(1) if rx.groups else m.group(0)


@dataclass(frozen=True)
class SiteTable:
    """One row per film from a table in the site's folder: the patient id and any other columns (view, age)."""

    path: Path
    patient_column: str
    rows: dict[str, dict[str, str]]  # by the film's path under the folder (posix), as written in the table
    by_name: dict[str, str] = field(default_factory=dict)  # bare file name -> key of rows (unique names only)

    @classmethod
    def beside(cls, root: str | Path) -> "SiteTable | None":
        """The first of TABLES in `root`, read; None when there is none."""
        for name in TABLES:
            if (Path(root) / name).is_file():
                return cls.read(Path(root) / name)
        return None

    @classmethod
    def read(cls, path: Path) -> "SiteTable":
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise DataError(f"'{path}' is over {MAX_TABLE_BYTES >> 20} MB: not a table of films")
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = [c.strip() for c in reader.fieldnames or []]
                raw = list(reader)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"'{path}' is not a readable CSV table ({e})") from None
        file_col = next((c for c in FILE_COLUMNS if c in columns), None)
        pid_col = next((c for c in PATIENT_COLUMNS if c in columns), None) or next(
            (c for c in columns if c.lower().endswith("patient_id")), None)
        if file_col is None or pid_col is None:
            raise DataError(f"'{path}' needs a file column ({' or '.join(FILE_COLUMNS)}) and a patient column "
                            f"({' or '.join(PATIENT_COLUMNS)}, or a name ending in patient_id); it has "
                            f"{', '.join(columns) or 'none'}")
        rows: dict[str, dict[str, str]] = {}
        for i, row in enumerate(raw, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            key = row[file_col].replace("\\", "/").lstrip("./")
            if not key or not row[pid_col]:
                raise DataError(f"'{path}' line {i}: an empty {file_col} or {pid_col}")
            if key in rows and rows[key][pid_col] != row[pid_col]:
                raise DataError(f"'{path}' line {i}: film '{key}' is given two different patients")
            rows[key] = row
        names: dict[str, list[str]] = {}
        for key in rows:
            names.setdefault(key.rsplit("/", 1)[-1], []).append(key)
        return cls(path, pid_col, rows, {n: ks[0] for n, ks in names.items() if len(ks) == 1})

    def row(self, film: str | Path) -> dict[str, str] | None:
        """The film's row: by its path under the table's folder, else by its bare name when that is unique."""
        p = Path(film)
        try:
            key = p.resolve().relative_to(self.path.parent.resolve()).as_posix()
        except ValueError:
            key = None
        if key in self.rows:
            return self.rows[key]
        found = self.by_name.get(p.name)
        return None if found is None else self.rows[found]

    def value(self, film: str | Path, columns: tuple[str, ...]) -> str | None:
        """The first of `columns` this film's row has (non-empty), else None."""
        row = self.row(film) or {}
        return next((row[c] for c in columns if row.get(c)), None)


@dataclass(frozen=True)
class PatientSource:
    """A site's way of naming its films' patients: a table, a pattern, the known names (in that order)."""

    table: SiteTable | None = None
    pattern: re.Pattern | None = None

    @classmethod
    def for_folder(cls, root: str | Path | None, pattern: str | None = None) -> "PatientSource":
        return cls(SiteTable.beside(root) if root is not None else None, compile_pattern(pattern))

    def patient(self, film: str | Path) -> str | None:
        name = Path(film).name
        if self.table is not None:
            row = self.table.row(film)
            if row is not None:
                return row[self.table.patient_column]
        if self.pattern is not None:
            return _from_pattern(self.pattern, name)
        return patient_id(name)

    def describe(self) -> str:
        """Where the ids came from, in words (never an id itself)."""
        parts = ([f"{self.table.path.name} ({self.table.patient_column})"] if self.table is not None else []) + (
            [f"--patient-pattern {self.pattern.pattern!r}"] if self.pattern is not None else ["the file names"])
        return ", then ".join(parts)
