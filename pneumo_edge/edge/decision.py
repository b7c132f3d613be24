"""The decision on one scored image: one record, made in one place, read by every output.

    scored = score_images(model, [(resized, chroma)], use_guard=True)[0]
    scored.label, scored.probability, scored.guard_verdict     # PNEUMONIA 0.97 accepted
    scored.fields()                                            # the same names in CSV, JSONL, API and HTTP

`decide` is the only place a probability meets the threshold and the only place REJECTED_OOD is
given; `positive` is that comparison for arrays (parity gates, metrics at a threshold). The record keeps
the numbers as every output reports them (probability to PROB_DIGITS decimals, guard score to
GUARD_DIGITS) and decides on those, so a row can be checked by hand and two engines that batch
differently write the same rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .guard import Guard
from .imaging import normalize

REJECTED = "REJECTED_OOD"  # the label of an image the guard refuses: no class is given
VERDICTS = ("accepted", "rejected", "off")  # guard_verdict; "off": no guard (turned off, or none in the file)
PROB_DIGITS, GUARD_DIGITS = 6, 4
FIELDS = ("status", "label", "model_label", "probability", "threshold", "guard_score", "guard_verdict",
          "guard_reason", "model_sha256")  # Scored.fields(), in this order everywhere


def positive(probability, threshold: float):
    """P(positive) at or above the threshold: a bool, or a bool array for an array."""
    return np.asarray(probability) >= threshold if np.ndim(probability) else bool(probability >= threshold)


@dataclass(frozen=True)
class Scored:
    label: str  # what to act on: a class, or REJECTED_OOD
    model_label: str  # the class the threshold gives, whatever the guard says
    probability: float  # calibrated P(positive class)
    threshold: float
    guard_score: float | None  # None when no guard ran
    guard_verdict: str  # one of VERDICTS
    guard_reason: str | None  # the check that refused the image
    model_sha256: str | None  # digest of the model file that scored it

    @property
    def rejected(self) -> bool:
        return self.guard_verdict == "rejected"

    @property
    def status(self) -> str:
        return "rejected" if self.rejected else "ok"

    @property
    def heatmap_allowed(self) -> bool:
        """A map of an image the model should not judge would look like evidence: none for a refusal."""
        return not self.rejected

    def fields(self) -> dict:
        return {"status": self.status, **asdict(self)}


def decide(meta, probability: float, guard_score: float | None = None, guard_reason: str = "",
           model_sha256: str | None = None) -> Scored:
    """The record for one image from its calibrated probability and guard score (None: no guard ran)."""
    probability = round(float(probability), PROB_DIGITS)
    guard_score = None if guard_score is None else round(float(guard_score), GUARD_DIGITS)
    model_label = meta.labels[int(positive(probability, meta.threshold))]
    rejected = guard_score is not None and bool(Guard.rejects(guard_score))
    verdict = "off" if guard_score is None else "rejected" if rejected else "accepted"
    return Scored(label=REJECTED if rejected else model_label, model_label=model_label,
                  probability=probability, threshold=float(meta.threshold), guard_score=guard_score,
                  guard_verdict=verdict,
                  guard_reason=(guard_reason or None) if rejected else None, model_sha256=model_sha256)


def score_images(model, decoded: list[tuple[np.ndarray, float]], use_guard: bool,
                 keep: dict | None = None) -> list[Scored]:
    """One record per (resized uint8, chroma) pair, scored in one batch by an EdgeModel.

    use_guard: apply the model's guard (ignored when the file has none).
    keep: a dict that receives every raw output (heat maps read 'features'); else the feature map is not fetched.
    """
    images, chroma = np.stack([d[0] for d in decoded]), np.array([d[1] for d in decoded])
    outs = model.run(normalize(images, model.spec), None if keep is not None else model.predict_outputs)
    if keep is not None:
        keep.update(outs)
    guarded = use_guard and model.guard is not None
    scores, reasons = (model.guard.assess(images, outs["embedding"], chroma) if guarded
                       else ([None] * len(images), [""] * len(images)))
    probs = model.probability(outs["logits"])
    return [decide(model.meta, float(p), None if s is None else float(s), why, model.sha256)
            for p, s, why in zip(probs, scores, reasons)]
