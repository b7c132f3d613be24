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
from .population import Population

REJECTED = "REJECTED_OOD"  # the label of an image the guard refuses: no class is given
VERDICTS = ("accepted", "rejected", "off")  # guard_verdict; "off": no guard (turned off, or none in the file)
NOT_RUN = "not run"  # the node's verdict for a film it could not score (not decodable); never a row's verdict
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


def _with_ages(statement: dict | None, ages: list, scores: list, reasons: list) -> tuple[list, list]:
    """Each header age judged against the model's population (`edge.population`): outside, the film's score is
    at least AGE_SCORE and the age's reason comes first. Films without an age, or a file without a statement,
    keep what the guard gave."""
    if statement is None or all(a is None for a in ages):
        return scores, reasons
    population = Population.from_meta(statement)
    out_s, out_r = [], []
    for age, score, why in zip(ages, scores, reasons):
        age_score = population.age_score(age)
        if age_score is not None:
            score = age_score if score is None else max(float(score), age_score)
            why = "; ".join(w for w in (population.age_reason(age), why) if w)
        out_s.append(score)
        out_r.append(why)
    return out_s, out_r


def score_images(model, decoded: list[tuple], use_guard: bool, keep: dict | None = None) -> list[Scored]:
    """One record per (resized uint8, chroma[, patient age in years or None]) item, scored in one batch by an
    EdgeModel.

    use_guard: apply the model's guard (ignored when the file has none) and judge each header age against the
    population the file states (`edge.population`); a film with an age is not judged by the image-based check.
    keep: a dict that receives every raw output (heat maps read 'features'); else the feature map is not fetched.
    """
    images, chroma = np.stack([d[0] for d in decoded]), np.array([d[1] for d in decoded])
    ages = [d[2] if len(d) > 2 else None for d in decoded]
    outs = model.run(normalize(images, model.spec), None if keep is not None else model.predict_outputs)
    if keep is not None:
        keep.update(outs)
    guarded = use_guard and model.guard is not None
    aged = np.array([a is not None for a in ages])
    scores, reasons = (model.guard.assess(images, outs["embedding"], chroma, aged) if guarded
                       else ([None] * len(images), [""] * len(images)))
    if use_guard:
        scores, reasons = _with_ages(model.meta.population, ages, list(scores), list(reasons))
    probs = model.probability(outs["logits"])
    return [decide(model.meta, float(p), None if s is None else float(s), why, model.sha256)
            for p, s, why in zip(probs, scores, reasons)]
