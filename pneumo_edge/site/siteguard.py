"""A bundle's guard refitted to a site's films, in numpy: the site's X-rays pass, non-X-rays still do not.

    guard = refit_guard(parent.guard, GuardFit(emb, y, acquired, altered, calibration))
    rates = guard_rates(guard, embed, films, chroma)      # share refused

On adult films the shipped guard refuses about one film in ten, nearly all by its orientation head (a
logistic regression on the embedding that was never shown an adult film as acquired) and a few by the
embedding distance. So the refit:
  * embedding: the site's class means join the parent's (the distance is to the nearest mean; the
    parent's principal directions and variances are kept), and its threshold is the parent's or, where
    wider, the parent's rule (margin x percentile) over films as acquired it was not fitted on (the site's
    calibration part, and home validation when given): a fine-tuned embedding spread the site's films wider
    than the home films its fresh guard was set on (11 of 454 refused by distance alone);
  * orientation: the parent's head plus a correction fitted on the site's fitting films (and replayed home
    films) as acquired (0) and the site's fitting films altered each of the four ways (upside down, rotated
    90/270, inverted; 1), penalised towards the parent head as export's head is regularised (probes.ORIENT_L2);
    its threshold the same percentile as export's (guard.ORIENT_PERCENTILE) of films as acquired that it
    was not fitted on (the site's calibration part, and home validation when given). One alteration per
    film, as export draws them, left the head so loose on adult films that an MRI slice of the non-X-ray
    set came within 3% of the threshold (INT8); all four put every non-X-ray at 1.29x it or more;
  * grey-level range, colour and polarity checks: the parent's, unchanged (no site film trips them).
Only the site's fitting and calibration parts are used; the held-out part measures the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pneumo_edge.edge.guard import ORIENT_PERCENTILE, Guard, OrientationHead
from pneumo_edge.site.headfit import Logistic, fit_logistic
from pneumo_edge.site.probes import ORIENT_L2, alterations

REFITTED = ("embedding: the site's class means added to the parent's; its threshold widened where films as acquired "
            "that it was not fitted on need it",
            "orientation head: the parent's plus a correction fitted on the site's films as acquired and altered; "
            f"threshold at the {ORIENT_PERCENTILE:g}th percentile of films it was not fitted on")


@dataclass
class GuardFit:
    """Embeddings (one model file's) of the films the refit uses."""

    site: np.ndarray  # the site's fitting films as acquired
    site_y: np.ndarray  # their labels (a mean per class)
    altered: np.ndarray  # the same films altered each way (probes.alterations)
    threshold: np.ndarray  # films as acquired it is not fitted on (site calibration, home validation)
    home: np.ndarray | None = None  # home training films as acquired (replayed), when given


def refit_guard(guard: Guard, films: GuardFit) -> Guard:
    """The parent guard with the site's class means and a refitted orientation head (see the module doc)."""
    classes = np.unique(films.site_y)
    means = np.concatenate([guard.means, np.stack([films.site[films.site_y == c].mean(0) for c in classes])])
    acquired = films.site if films.home is None else np.concatenate([films.site, films.home])
    x = np.concatenate([acquired, films.altered])
    y = np.r_[np.zeros(len(acquired)), np.ones(len(films.altered))]
    start = None if guard.orientation is None else Logistic(guard.orientation.weights, guard.orientation.bias, 0.0)
    fitted = fit_logistic(x, y, ORIENT_L2 / len(y), start=start)
    head = OrientationHead(weights=fitted.weights, bias=fitted.bias, threshold=1.0, percentile=ORIENT_PERCENTILE)
    head.threshold = float(min(1.0, np.percentile(head.probability(films.threshold), ORIENT_PERCENTILE)))
    # the parent's population check was fitted to refuse films like the site's own: dropped; the header age
    # check still applies, against the widened age range the adapted bundle states
    out = replace(guard, means=means, orientation=head, population=None)
    # a fine-tuned embedding spreads the site's films wider than the home films the threshold was set on: the
    # parent's rule (margin x percentile) over films it was not fitted on, where that is the wider
    spread = guard.margin * float(np.percentile(out.embedding_distance(films.threshold), guard.percentile))
    return replace(out, threshold=max(guard.threshold, spread))


def guard_rates(guard: Guard, embed, films: np.ndarray, chroma: np.ndarray | None = None) -> float:
    """The share of `films` (uint8 model views) the guard refuses; `embed` maps them to embeddings."""
    if len(films) == 0:
        return float("nan")
    return float(guard.rejects(guard.scores(films, embed(films), chroma)).mean())


def altered_rates(guard: Guard, embed, films: np.ndarray) -> dict[str, float]:
    """The share refused of `films` altered each way a film must not be submitted."""
    return {k: guard_rates(guard, embed, np.ascontiguousarray(a)) for k, a in alterations(films).items()}
