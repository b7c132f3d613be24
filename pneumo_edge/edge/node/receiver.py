"""The C-STORE side of the node: which images it accepts, and "success" only once an instance is on disk.

Accepted: CR and DX image storage (for presentation and for processing) in the transfer syntaxes the
decoders read. Any other SOP class is refused at association (its presentation context is rejected:
"abstract syntax not supported"), and so is a calling AE title outside `calling_aes` when one is given.
"""

from __future__ import annotations

from collections.abc import Callable

from .gate import MAX_PDU
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
    from pynetdicom import (  # the [node] extra, only when the node runs
        AE,
        VerificationPresentationContexts,
    )

    ae = AE(ae_title=ae_title)
    for uid in IMAGE_STORAGE:
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
    for cx in VerificationPresentationContexts:  # C-ECHO, what a PACS admin tries first
        ae.add_supported_context(cx.abstract_syntax)
    if calling_aes:
        ae.require_calling_aet = list(calling_aes)
    ae.maximum_pdu_size = MAX_PDU  # what a peer may send in one PDU: a bound on what one read holds (edge.node.gate)
    return ae


def store_handler(spool: Spool, on_stored: Callable, on_refused: Callable, max_bytes: int) -> Callable:
    """The EVT_C_STORE handler: spool the encoded instance durably, then answer success. The data set is written
    from pynetdicom's buffer as it is (no decoded copy, no joined copy); over `max_bytes` it is refused (the
    gate disconnects a peer before that; this is the check on what arrived)."""

    def handle(event) -> int:
        from pynetdicom.dsutils import (
            encode_file_meta,  # the [node] extra, only when the node runs
        )

        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not valid_uid(uid):
            on_refused(event, "the SOP Instance UID is not a valid UID")
            return CANNOT_UNDERSTAND
        data = event.request.DataSet.getbuffer()
        if len(data) > max_bytes:
            on_refused(event, f"the instance holds {len(data):,} bytes, over the limit of {max_bytes:,}")
            return OUT_OF_RESOURCES
        try:
            path = spool.put_incoming(uid, [b"\0" * 128 + b"DICM" + encode_file_meta(event.file_meta), data])
        except OSError as e:  # disk full, spool gone: the sender keeps it and retries
            on_refused(event, f"cannot spool: {e.strerror or e.__class__.__name__}")
            return OUT_OF_RESOURCES
        finally:
            data.release()  # the buffer may be reused or freed by pynetdicom only once no view holds it
        on_stored(path)
        return SUCCESS

    return handle
