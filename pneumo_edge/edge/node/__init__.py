"""A DICOM node: receive X-rays by C-STORE, classify each, send a Structured Report back, lose nothing.

    receiver  what is accepted; C-STORE success only once the instance is spooled
    spool     the durable folders that join the stages (temp name, fsync, rename)
    classify  spooled bytes -> Finding, through the edge's decoding, model and guard
    header    what of a source's header a result may carry: character set read tolerantly, values checked per VR
    sr        Finding -> DICOM SR (TID 1500, IHE AI Results), UIDs from uids; sc: the heat map as a Secondary Capture
    outbox    results -> destinations: retries, backoff, dead-letter folder
    audit     one JSON line per instance and destination, no patient identifiers
    service   the three stages, start-up recovery, shutdown; `listen` for the CLI

Needs the `node` extra (pynetdicom, highdicom): imported only by `pneumo-edge listen`.
"""
