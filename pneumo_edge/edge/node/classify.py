"""Spooled instances -> Findings, through the same decoding and scoring as `pneumo-edge infer`.

The decision is the edge's (meta.decide for the label, Guard.rejects for the refusal); this module only
carries it into a Finding, and turns a decoding error into "not assessed" with the decoder's reason.
"""

from __future__ import annotations

import time

from ..errors import ImageError
from ..imaging import load_image, resize_gray
from ..infer import score_decoded
from ..model import EdgeModel
from .sr import Finding


def decode(model: EdgeModel, data: bytes):
    """(resized uint8, chroma) or the one-line reason the image cannot be assessed."""
    spec = model.spec
    try:
        gray, colour = load_image(data, size=spec.size, name="instance.dcm")
        return (resize_gray(gray, spec.size, spec.resize), colour), None
    except ImageError as e:
        return None, f"not decodable: {e}"
    except Exception as e:  # noqa: BLE001 - one odd file must never stop the node
        return None, f"not decodable: unexpected {e.__class__.__name__}: {e}"


def classify(model: EdgeModel, blobs: list[bytes], use_guard: bool = True) -> tuple[list[Finding], float]:
    """One Finding per encoded instance, and the seconds spent decoding and scoring."""
    t0 = time.perf_counter()
    decoded = [decode(model, b) for b in blobs]
    ok = [i for i, (dec, _) in enumerate(decoded) if dec is not None]
    findings: list[Finding | None] = [None] * len(blobs)
    for i, (_, why) in enumerate(decoded):
        if why is not None:
            findings[i] = Finding(label=None, probability=None, guard_verdict="not run", reason=why)
    if ok:
        probs, scores, reasons = score_decoded(model, [decoded[i][0] for i in ok], use_guard)
        for j, i in enumerate(ok):
            p = float(probs[j])
            score = None if scores is None else float(scores[j])
            rejected = score is not None and bool(model.guard.rejects(score))
            verdict = "off" if score is None else "rejected" if rejected else "accepted"
            findings[i] = (Finding(None, p, verdict, score, f"refused by the guard: {reasons[j]}") if rejected
                           else Finding(model.meta.decide(p), p, verdict, score))
    return findings, time.perf_counter() - t0
