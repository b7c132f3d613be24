"""Result UIDs derived from the source instance and the model: processing an image twice makes the same
objects, so the PACS replaces a repeat instead of filing a second copy.

    sr_uid = derived_uid("sr", source_sop_uid, model_sha256)

Each UID is `2.25.` and the integer of a name-based UUID (RFC 4122 version 5) of the role, the source UID
and the weights digest: the form PS3.5 B.2 allows without an organisation root.
"""

from __future__ import annotations

import re
import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pneumo-edge/pneumo-edge/dicom-results")
UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def derived_uid(role: str, source_uid: str, model_sha256: str) -> str:
    """The UID of one result object (`role`: "sr", "sr-series", "sc", ...) for one source UID and model."""
    return "2.25." + str(uuid.uuid5(_NAMESPACE, f"{role}|{source_uid}|{model_sha256}").int)


def valid_uid(uid: str) -> bool:
    """A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters; nothing around it
    (a trailing space or newline is refused: fullmatch, where `$` would let a final newline through)."""
    return 0 < len(uid) <= 64 and bool(UID_RE.fullmatch(uid))
