"""Site calibration: set a bundle's operating point on a site's own labelled films, with a guarantee.

    r = calibrate(CalibrateConfig(folder="site_xrays", model="export", out="site_bundle", site="ward 3"))

The folder is laid out as `validate` reads it (NORMAL/, PNEUMONIA/). Each ONNX file of the bundle scores
the films with its own guard; the new threshold is the largest whose exact one-sided lower confidence bound
on sensitivity, over the site's positive films the guard accepts, reaches the target (`edge.sitecal`).
The new bundle holds the same ONNX files, graph and guard byte for byte (`edge.stamp`), with the new
operating point and one more link of the provenance chain in their metadata: site, films, date, rule and
parameters, and the digest of the parent file. Numpy and onnxruntime only: it runs on the edge install.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from shlex import quote

import numpy as np

from pneumo_edge.edge.api import MODEL_FILES, resolve_model
from pneumo_edge.edge.atomic import prepare_out_dir, write_json
from pneumo_edge.edge.decision import PROB_DIGITS, positive
from pneumo_edge.edge.errors import DataError, ModelError
from pneumo_edge.edge.model import EdgeModel, prob_from_logits
from pneumo_edge.edge.monitor import Reference
from pneumo_edge.edge.patients import PatientSource
from pneumo_edge.edge.runtime import file_sha256
from pneumo_edge.edge.sitecal import (
    fit_temperature,
    grouped_interval,
    guaranteed_threshold,
    nll,
    split_groups,
)
from pneumo_edge.edge.stamp import stamp_file
from pneumo_edge.site.validate import (
    labelled_files,
    resampling_groups,
    score_files,
    specificity_at_sensitivity,
)

RULE = {"patients": "largest threshold whose exact one-sided Clopper-Pearson lower bound on sensitivity, over "
                    "the site's positive patients the guard accepts (each by its lowest positive film; films where "
                    "no patient is named), reaches the target at the stated confidence",
        "films": "largest threshold whose exact one-sided Clopper-Pearson lower bound on sensitivity, over the "
                 "site's positive films the guard accepts, reaches the target at the stated confidence"}
REPORT = "calibration.json"
COUNTS = ("patients", "films")


@dataclass
class CalibrateConfig:
    folder: str
    model: str | None = None  # a bundle folder (every ONNX file in it) or one .onnx file; None: the shipped one
    out: str = "site_bundle"
    target_sensitivity: float = 0.95
    confidence: float = 0.90
    # The guarantee's trials: "patients" (exact where films of a patient move together; needs 45 positive
    # patients at 0.95 / 0.90) or "films" (needs 45 positive films; optimistic when patients have several)
    count: str = "patients"
    site: str | None = None  # a label for the site; default: the folder's name
    refit_temperature: bool = False
    # A threshold that meets the sensitivity target only by calling nearly every film positive is no operating
    # point: refused below this specificity on the site's films, unless accept_low_specificity (then recorded)
    min_specificity: float = 0.5
    accept_low_specificity: bool = False
    split: str | None = None  # a split of a dataset root, as in validate
    batch_size: int = 16
    workers: int | None = None
    force: bool = False
    progress: bool = False
    patient_pattern: str | None = None  # regex for the patient id in file names (a table beside the films wins)

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise DataError(f"count must be one of {', '.join(COUNTS)}, got {self.count!r}")


def model_files(source: str | None) -> list[Path]:
    """The ONNX files to calibrate: each of a bundle folder's, or the one file named."""
    if source is not None and Path(source).is_dir():
        found = [Path(source) / n for n in MODEL_FILES if (Path(source) / n).is_file()]
        if not found:
            raise ModelError(f"bundle folder '{source}' holds none of {', '.join(MODEL_FILES)}")
        return found
    return [resolve_model(source)]


def refit_temperature(z: np.ndarray, y: np.ndarray, groups: np.ndarray, current: float, seed: int = 0) -> dict:
    """Fit T on half the site's patients, keep it only if it lowers the NLL of the other half; then refit on all."""
    fit = split_groups(groups, seed)
    if len(np.unique(y[fit])) < 2 or len(np.unique(y[~fit])) < 2:
        return {"applied": False, "temperature": current, "why": "a half without both classes"}
    half = fit_temperature(z[fit], y[fit])
    before, after = nll(z[~fit], y[~fit], current), nll(z[~fit], y[~fit], half)
    applied = after < before
    return {"applied": bool(applied), "temperature": fit_temperature(z, y) if applied else current,
            "half_temperature": half, "heldout_nll_current": before, "heldout_nll_refit": after}


def operating_point(y: np.ndarray, p: np.ndarray, groups: np.ndarray, current: float, target: float,
                    confidence: float, p_current: np.ndarray | None = None, count: str = "patients") -> dict:
    """The guaranteed threshold and what it gives on these films, beside the current threshold's numbers
    (on `p_current`, the file's probabilities under its current temperature, when `p` has a refitted one)."""
    pos, neg = y == 1, y == 0
    if count not in COUNTS:
        raise ValueError(f"count must be one of {', '.join(COUNTS)}, got {count!r}")
    t = guaranteed_threshold(p[pos], target, confidence, groups[pos] if count == "patients" else None)
    out = {"n_positive": int(pos.sum()), "n_negative": int(neg.sum()), "guarantee_unit": t.unit,
           "n_positive_units": t.n_positive, "positives_needed": t.needed,
           "threshold": t.threshold, "detected": t.detected, "sensitivity_lower_bound": t.lower_bound}
    for name, thr, q in (("site", t.threshold, p), ("current", current, p if p_current is None else p_current)):
        if thr is None:
            continue
        hits = ~positive(q[neg], thr)
        out[name] = {"threshold": thr, "sensitivity": float(positive(q[pos], thr).mean()) if pos.any() else None,
                     "specificity": float(hits.mean()) if neg.any() else None,
                     "specificity_ci95": grouped_interval(hits, groups[neg])}
    return out


def check_specificity(path: Path, op: dict, y: np.ndarray, p: np.ndarray, cfg: CalibrateConfig, site: str) -> dict:
    """The link's specificity record; DataError when the guaranteed threshold leaves less than the floor and the
    user has not accepted it. The message says why: where even the films' own threshold for the target leaves
    too little, the model does not separate this site's films (adapt it); else the guarantee, over this few
    positives, must catch nearly all of them (more positive patients raise the threshold)."""
    spec = op["site"]["specificity"]
    low = spec is not None and spec < cfg.min_specificity
    if low and not cfg.accept_low_specificity:
        point = specificity_at_sensitivity(y, p, cfg.target_sensitivity)
        head = (f"{path.name}: sensitivity {cfg.target_sensitivity:g} (at {cfg.confidence:g} confidence) needs "
                f"threshold {op['threshold']:.4f}, which leaves specificity {spec:.3f} on these films, below the floor "
                f"{cfg.min_specificity:g}; no bundle was written. ")
        if point is not None and point["specificity"] >= cfg.min_specificity:
            raise DataError(head + f"The films themselves reach the target with specificity {point['specificity']:.3f}"
                            f": the guarantee over {op['n_positive_units']} positive {op['guarantee_unit']} has to "
                            f"catch {op['detected']} of them; add positive patients (or --accept-low-specificity)")
        raise DataError(head + "The model does not separate this site's films: run `pneumo-edge adapt "
                        f"{quote(cfg.folder)} --model {quote(cfg.model or 'export')} --out SITE_BUNDLE --site "
                        f"{quote(site)}` instead (or --accept-low-specificity to write this one anyway)")
    return {"specificity": spec, "min_specificity": cfg.min_specificity, "low_specificity_accepted": bool(low)}


def calibrate_file(path: Path, files: list[str], truth: list[int], cfg: CalibrateConfig, site: str,
                   out: Path, source: PatientSource) -> dict:
    """Score the site's films with one ONNX file and write it, restamped, into `out`."""
    model = EdgeModel(path)
    use_guard = model.guard is not None
    margin: dict[str, float] = {}
    scored, unreadable = score_files(files, model, use_guard, cfg, margins=margin)
    label_of = dict(zip(files, truth))
    paths = [f for f in files if f in scored]
    y = np.array([label_of[f] for f in paths], int)
    p = np.array([scored[f].probability for f in paths])  # as the edge decides: rounded to PROB_DIGITS
    rejected = np.array([scored[f].rejected for f in paths], bool)
    groups, resampling = resampling_groups(paths, source)
    keep = ~rejected
    y, p, groups = y[keep], p[keep], groups[keep]
    meta = model.meta
    temperature = {"applied": False, "temperature": meta.temperature, "why": "not asked (--refit-temperature)"}
    p_current = p
    if cfg.refit_temperature:
        z = np.array([margin[f] for f in paths])[keep]
        temperature = refit_temperature(z, y, groups, meta.temperature)
        p = np.round(prob_from_logits(np.stack([np.zeros_like(z), z], 1), temperature["temperature"]), PROB_DIGITS)
    op = operating_point(y, p, groups, meta.threshold, cfg.target_sensitivity, cfg.confidence, p_current, cfg.count)
    if op["threshold"] is None:
        unit = op["guarantee_unit"]
        has = (f"{op['n_positive_units']} PNEUMONIA patients ({op['n_positive']} films)" if unit == "patients"
               else f"{op['n_positive']} PNEUMONIA films")
        raise DataError(f"{path.name}: the site has {has} the guard accepts; a sensitivity of "
                        f"{cfg.target_sensitivity:g} at {cfg.confidence:g} confidence needs at least "
                        f"{op['positives_needed']} {unit} (more, unless the model catches every one)")
    specificity = check_specificity(path, op, y, p, cfg, site)
    link = {"site": site, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "n_images": int(len(y)), "n_positive": op["n_positive"], "n_negative": op["n_negative"],
            "n_rejected_by_guard": int(rejected.sum()), "rule": RULE[op["guarantee_unit"]], "count": op["guarantee_unit"],
            "target_sensitivity": cfg.target_sensitivity, "confidence": cfg.confidence,
            "threshold": op["threshold"], "temperature": temperature["temperature"],
            "temperature_refit": temperature["applied"], "parent_file": path.name,
            "parent_sha256": file_sha256(path), "parent_threshold": meta.threshold,
            "parent_temperature": meta.temperature, **specificity}
    monitor = meta.monitor
    if monitor is not None and temperature["applied"]:  # the reference's probability bins follow the new T
        monitor = Reference.from_meta(monitor).retempered(meta.temperature, temperature["temperature"]).to_meta()
    new = replace(meta, threshold=op["threshold"], temperature=temperature["temperature"],
                  target_sensitivity=cfg.target_sensitivity, monitor=monitor,
                  site_calibration=[*(meta.site_calibration or []), link])
    stamp_file(path, out / path.name, new)
    return {"file": path.name, "link": link, "operating_point": op, "temperature": temperature,
            "resampling": resampling, "unreadable": unreadable}


def calibrate(cfg: CalibrateConfig) -> dict:
    """Calibrate every ONNX file of the bundle on the site's folder; write the new bundle and calibration.json."""
    sources = model_files(cfg.model)
    if cfg.force and any(Path(cfg.out).resolve() == src.resolve().parent for src in sources):  # it would be emptied
        raise DataError(f"--out '{cfg.out}' holds the model being calibrated: give the new bundle a folder of its own")
    labels = list(EdgeModel(sources[0], threads=1).labels)
    root, files, truth, skipped = labelled_files(cfg.folder, cfg.split, labels)
    site = cfg.site or root.resolve().name
    source = PatientSource.for_folder(root, cfg.patient_pattern)
    out = prepare_out_dir(cfg.out, cfg.force)
    try:
        results = [calibrate_file(src, files, truth, cfg, site, out, source) for src in sources]
    except DataError:
        for src in sources:  # refused: no half-written bundle
            (out / src.name).unlink(missing_ok=True)
        raise
    unit = results[0]["operating_point"]["guarantee_unit"]  # "films" when no patient has two films
    report = {"site": site, "folder": str(root), "rule": RULE[unit], "count": unit, "count_asked": cfg.count,
              "target_sensitivity": cfg.target_sensitivity,
              "confidence": cfg.confidence, "not_scored": skipped, "files": results}
    write_json(out / REPORT, report)
    return report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def render_summary(r: dict) -> str:
    lines = [f"site '{r['site']}' ({r['folder']}): target sensitivity {r['target_sensitivity']:g} at "
             f"{r['confidence']:g} confidence"]
    for f in r["files"]:
        op, link, t = f["operating_point"], f["link"], f["temperature"]
        site, cur = op["site"], op["current"]
        lo, hi = site["specificity_ci95"] or (None, None)
        clo, chi = cur["specificity_ci95"] or (None, None)
        lines += [f"{f['file']}: {link['n_images']} films the guard accepted ({op['n_positive']} PNEUMONIA, "
                  f"{op['n_negative']} NORMAL; {link['n_rejected_by_guard']} refused), the guarantee counts "
                  f"positive {op['guarantee_unit']} and needs {op['positives_needed']} at least",
                  f"  site threshold {site['threshold']:.4f}: {op['detected']} of {op['n_positive_units']} positive "
                  f"{op['guarantee_unit']} wholly at or above it, sensitivity lower bound "
                  f"{op['sensitivity_lower_bound']:.4f}; specificity "
                  f"{_pct(site['specificity'])} [{_pct(lo)}, {_pct(hi)}]",
                  f"  current threshold {cur['threshold']:.4f}: sensitivity {_pct(cur['sensitivity'])}, "
                  f"specificity {_pct(cur['specificity'])} [{_pct(clo)}, {_pct(chi)}]",
                  f"  temperature {t['temperature']:.4f} ({'refitted' if t['applied'] else 'kept'}"
                  + (f": held-out NLL {t['heldout_nll_current']:.4f} -> {t['heldout_nll_refit']:.4f})"
                     if "heldout_nll_refit" in t else ")")]
        if link.get("low_specificity_accepted"):
            lines.append(f"  WARNING: specificity {_pct(site['specificity'])} is below the floor "
                         f"{link['min_specificity']:g}; written because --accept-low-specificity was given")
    unit = r["files"][0]["resampling"]["unit"]
    lines.append(f"specificity intervals: 95% bootstrap over {unit}s" if unit in ("patient", "image")
                 else "specificity intervals: 95% bootstrap over patients where named, else images")
    return "\n".join(lines)
