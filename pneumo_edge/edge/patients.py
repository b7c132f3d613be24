"""Who a film belongs to, from its file name: intervals resample patients, not films.

    patient_id("person123_bacteria_456.jpeg")   # "PERSON123"
    patient_id("scan.dcm")                      # None: the name carries no patient
"""

from __future__ import annotations

import re

# File names carry the patient: person123_bacteria_456, IM-0001-0001, NORMAL2-IM-0587-0001-0002.
_PATIENT_RES = (
    re.compile(r"^(person\d+)_", re.I),
    re.compile(r"^(NORMAL2-IM-\d+)-", re.I),
    re.compile(r"^(IM-\d+)-", re.I),
)


def patient_id(name: str) -> str | None:
    for rx in _PATIENT_RES:
        m = rx.match(name)
        if m:
            return m.group(1).upper()
    return None
