"""The population a model was validated on, and a patient's age against it. Numpy-free, torch-free.

    pop = Population.from_meta(meta.population)            # validated: a bad field fails here, by name
    pop.age_reason(62.0)   # "patient age 62 Y is outside this model's population (paediatric, 1-5 years)"
    age_from_header("062Y", None, None, None)               # 62.0: a DICOM PatientAge (AS)
    age_from_header(None, "20200301", "20230615", None)     # 3.29: PatientBirthDate against StudyDate

The statement travels in the model file (`BundleMeta.population`):
    {"description": str, "age_years": [min, max], "views": [str, ...],
     "sources": [{"name": str, "films": int, "patients": int | null}, ...]}
`age_years` counts completed years, both ends included: with [1, 5] a child of 5 years 11 months is inside,
one of 6 years or of 11 months is not. The description's first clause (to the first comma) is the short name
a refusal quotes. A header age outside the range is a refusal of its own (`AGE_SCORE`, past the guard's 1.0);
a film whose header gives no usable age is left to the guard's image-based population check.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from .errors import ModelError

AGE_SCORE = 2.0  # the guard score of a header age outside the population: past the threshold, whatever the distance
MAX_AGE = 150.0  # years: an age past this is a broken header, not a patient
_AS = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.I)  # DICOM Age String: nnnD, nnnW, nnnM, nnnY
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _date(text) -> dt.date | None:
    """A DICOM DA (YYYYMMDD, or the old YYYY.MM.DD), else None."""
    digits = re.sub(r"[.\s]", "", str(text or ""))
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _anniversary(birth: dt.date, year: int) -> dt.date:
    try:
        return birth.replace(year=year)
    except ValueError:  # 29 February in a common year: the day after 28 February
        return dt.date(year, 3, 1)


def age_between(birth: dt.date, on: dt.date) -> float | None:
    """Age in years on `on`: completed calendar years plus the fraction of the current one; None if negative."""
    if on < birth:
        return None
    years = on.year - birth.year - (1 if on < _anniversary(birth, on.year) else 0)
    last, nxt = _anniversary(birth, birth.year + years), _anniversary(birth, birth.year + years + 1)
    return years + (on - last).days / max(1, (nxt - last).days)


def age_from_header(patient_age, birth_date, study_date, acquisition_date) -> float | None:
    """The patient's age in years from DICOM header values (PatientAge first, else PatientBirthDate against
    StudyDate, else AcquisitionDate); None when none of them gives a usable age."""
    m = _AS.match(str(patient_age or ""))
    years = int(m.group(1)) * _UNIT_YEARS[m.group(2).upper()] if m else None
    if years is None:
        birth = _date(birth_date)
        on = _date(study_date) or _date(acquisition_date)
        years = age_between(birth, on) if birth and on else None
    return years if years is not None and 0.0 <= years <= MAX_AGE else None


def format_age(years: float) -> str:
    """An age as a DICOM reader writes one, from the number alone (no header text is repeated)."""
    if years >= 2:
        return f"{int(years)} Y"
    if years * 12 >= 1:
        return f"{int(years * 12 + 1e-9)} M"
    return f"{int(round(years * 365.25))} D"


_AGE_IN_REASON = re.compile(r"patient age \d+ [DWMY] is outside")


def without_age(reason: str | None) -> str | None:
    """A refusal's reason for a log: the patient's age taken out (the report itself may carry it)."""
    return None if reason is None else _AGE_IN_REASON.sub("patient age is outside", reason)


def _bad(source: str, name: str, why: str) -> ModelError:
    return ModelError(f"{source}: metadata field 'population.{name}' {why}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v, allow_none: bool) -> bool:
    return (v is None and allow_none) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


@dataclass(frozen=True)
class Population:
    description: str
    age_years: tuple[float, float] | None  # completed years, both ends included; None: not stated (no age check)
    views: tuple[str, ...]
    sources: tuple[dict, ...]  # {"name", "films", "patients"}

    @property
    def short(self) -> str:
        """The description's first clause: what a refusal quotes."""
        return self.description.split(",")[0].strip()

    def covers_age(self, years: float) -> bool:
        if self.age_years is None:  # a population whose ages were never stated refuses no age
            return True
        lo, hi = self.age_years
        return lo <= years < hi + 1  # completed years: 5 years 11 months is 5

    def age_score(self, years: float | None) -> float | None:
        """The header check's score (AGE_SCORE outside the range, 0 inside); None without an age."""
        return None if years is None else 0.0 if self.covers_age(years) else AGE_SCORE

    def age_reason(self, years: float) -> str | None:
        if self.covers_age(years):
            return None
        lo, hi = self.age_years
        return (f"patient age {format_age(years)} is outside this model's population "
                f"({self.short}, {lo:g}-{hi:g} years)")

    def to_meta(self) -> dict:
        return {"description": self.description, "age_years": None if self.age_years is None else list(self.age_years),
                "views": list(self.views),
                "sources": [dict(s) for s in self.sources]}

    @classmethod
    def from_meta(cls, m, source: str = "model") -> "Population":
        if not isinstance(m, dict):
            raise ModelError(f"{source}: metadata field 'population' must be an object")
        for k in ("description", "age_years", "views", "sources"):
            if k not in m:
                raise _bad(source, k, "is missing")
        if not isinstance(m["description"], str) or not m["description"].strip():
            raise _bad(source, "description", "must be a non-empty string")
        ages = m["age_years"]
        if ages is not None and (not isinstance(ages, list) or len(ages) != 2 or not all(map(_number, ages))
                or not 0 <= ages[0] <= ages[1] <= MAX_AGE):
            raise _bad(source, "age_years", f"must be [min, max] with 0 <= min <= max <= {MAX_AGE:g}, or null, got {ages!r}")
        views = m["views"]
        if not isinstance(views, list) or not all(isinstance(v, str) and v for v in views):
            raise _bad(source, "views", f"must be a list of view names, got {views!r}")
        sources = m["sources"]
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise _bad(source, "sources", "must be a list of objects")
        for i, s in enumerate(sources):
            if not isinstance(s.get("name"), str) or not s["name"]:
                raise _bad(source, f"sources[{i}].name", "must be a non-empty string")
            if not _count(s.get("films"), False):
                raise _bad(source, f"sources[{i}].films", f"must be a count, got {s.get('films')!r}")
            if not _count(s.get("patients"), True):
                raise _bad(source, f"sources[{i}].patients", f"must be a count or null, got {s.get('patients')!r}")
        return cls(description=m["description"], age_years=None if ages is None else (float(ages[0]), float(ages[1])), views=tuple(views),
                   sources=tuple({"name": s["name"], "films": s["films"], "patients": s.get("patients")}
                                 for s in sources))

    def describe(self) -> list[tuple[str, str]]:
        """Rows for `pneumo-edge info`."""
        ages = ("not stated (no DICOM age is refused)" if self.age_years is None else
                f"{self.age_years[0]:g} to {self.age_years[1]:g} years (completed years; a DICOM age outside is "
                "not assessed)")
        rows = [("population", self.description), ("  ages", ages),
                ("  views", ", ".join(self.views) or "not stated")]
        for s in self.sources:
            who = "patients not counted" if s["patients"] is None else f"{s['patients']} patients"
            rows.append(("  source", f"{s['name']}: {s['films']} films, {who}"))
        return rows
