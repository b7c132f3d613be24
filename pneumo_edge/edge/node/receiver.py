"""The C-STORE side of the node: which images it accepts, and "success" only once an instance is on disk.

Accepted: CR and DX image storage (for presentation and for processing) in the transfer syntaxes the
decoders read. Any other SOP class is refused at association (its presentation context is rejected:
"abstract syntax not supported"), and so is a calling AE title outside `calling_aes` when one is given.
"""

from __future__ import annotations

from collections.abc import Callable

from .spool import Spool
from .uids import valid_uid

IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended (12-bit: needs the optional plugin; refused per image otherwise)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
)
# C-STORE statuses (PS3.4 B.2.3)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def make_ae(ae_title: str, calling_aes: tuple[str, ...] = ()):
    from pynetdicom import AE, VerificationPresentationContexts

    ae = AE(ae_title=ae_title)
    for uid in IMAGE_STORAGE:
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
    for cx in VerificationPresentationContexts:  # C-ECHO, what a PACS admin tries first
        ae.add_supported_context(cx.abstract_syntax)
    if calling_aes:
        ae.require_calling_aet = list(calling_aes)
    ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
    return ae


def store_handler(spool: Spool, on_stored: Callable, on_refused: Callable) -> Callable:
    """The EVT_C_STORE handler: spool the encoded instance durably, then answer success."""

    def handle(event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not valid_uid(uid):
            on_refused(event, "the SOP Instance UID is not a valid UID")
            return CANNOT_UNDERSTAND
        try:
            path = spool.put_incoming(uid, event.encoded_dataset(include_meta=True))
        except OSError as e:  # disk full, spool gone: the sender keeps it and retries
            on_refused(event, f"cannot spool: {e.strerror or e}")
            return OUT_OF_RESOURCES
        on_stored(path)
        return SUCCESS

    return handle
