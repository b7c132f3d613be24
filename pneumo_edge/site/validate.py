"""Validate an exported model on a labelled folder: the ONNX file itself, as the edge runs it.

    r = validate(ValidateConfig(folder="site_xrays", model="export/model.int8.onnx", out="site_check"))

The folder holds one sub-folder per class, named as the model's labels (NORMAL/, PNEUMONIA/), or is a
dataset root whose `split` (e.g. test) does. Nothing is fitted: threshold, temperature and guard are the
ones stored in the file, so the numbers are what this file says on this data. Images the guard rejects
get no label at the edge, so they are counted apart and left out of the metrics; `metrics_ignoring_guard`
scores every readable image. Intervals resample patients (named in the file names, as in the public
dataset), since one patient's films are not independent, and single images where names carry none.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_edge.edge.api import resolve_model
from pneumo_edge.edge.atomic import prepare_out_dir, write_json, write_text
from pneumo_edge.edge.decision import FIELDS, Scored, positive, score_images
from pneumo_edge.edge.errors import DataError
from pneumo_edge.edge.infer import decoded_batches
from pneumo_edge.edge.inputs import display_path, find_inputs
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.outputs import spreadsheet_safe
from pneumo_edge.edge.patients import PatientSource
from pneumo_edge.edge.progress import Progress
from pneumo_edge.edge.stats import binary_metrics, bootstrap_ci

COLUMNS = ("path", "true_label", *FIELDS)
TARGET_SENSITIVITY = 0.95  # the verdict's sensitivity target for a file that records none
PLOTS_HINT = "plots need matplotlib and scikit-learn: pip install 'pneumo-edge[plots]'"
REPORTED = {"accuracy": "accuracy", "sensitivity": "recall", "specificity": "specificity",
            "precision": "precision", "f1": "f1", "roc_auc": "roc_auc", "pr_auc": "pr_auc"}  # ours: binary_metrics'


@dataclass
class ValidateConfig:
    folder: str
    model: str | None = None  # .onnx file (fp32 or INT8), bundle folder or hub id; None: the shipped model
    out: str = "validation"
    split: str | None = None  # use this split of a dataset root, e.g. "test"
    guard: bool = True
    n_bootstrap: int = 1000
    batch_size: int = 16
    workers: int | None = None  # decode threads; None: all cores
    force: bool = False
    progress: bool = False
    patient_pattern: str | None = None  # regex for the patient id in file names (a table beside the films wins)
    # The verdict: fit for these films when the lower end of the ROC-AUC interval reaches auc_floor and the guard
    # refuses no more than max_refused of them (a model that refuses most of a site's films does not serve it)
    auc_floor: float = 0.80
    max_refused: float = 0.10


def specificity_at_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> dict | None:
    """The largest threshold at which these films' sensitivity reaches `target`, and the specificity left there
    (a point estimate on these films, not a guarantee: calibrate gives that). None without both classes."""
    pos, neg = np.sort(p[y == 1])[::-1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    t = float(pos[math.ceil(target * len(pos) - 1e-9) - 1])
    return {"target_sensitivity": target, "threshold": t, "sensitivity": float(positive(pos, t).mean()),
            "specificity": float((~positive(neg, t)).mean())}


def verdict(result: dict, y: np.ndarray, p: np.ndarray, target: float, cfg: ValidateConfig) -> dict:
    """Fit or not fit for these films, and why: the ROC-AUC interval's lower end against the floor, the share
    the guard refused, and what the sensitivity target costs in specificity on the films it accepted."""
    auc = (result["ci95"] or {}).get("roc_auc")
    lower = None if auc is None or auc[0] is None or not math.isfinite(auc[0]) else float(auc[0])
    g, n = result["guard"], result["data"]["n_images"]
    refused = g["rejected"] / n if n else 0.0
    why = []
    if lower is None:
        why.append(f"no ROC-AUC interval (it needs both classes among the {result['metrics']['n']} films the model "
                   "assessed, and --bootstrap above 0)")
    elif lower < cfg.auc_floor:
        why.append(f"the ROC-AUC interval's lower end {lower:.3f} is below the floor {cfg.auc_floor:.2f}")
    if refused > cfg.max_refused:
        every = (result.get("metrics_ignoring_guard") or {}).get("roc_auc")
        why.append(f"the guard refused {g['rejected']} of {n} films ({refused:.0%}, more than {cfg.max_refused:.0%}) "
                   "as outside what the model was validated on"
                   + (f" (ignoring the guard, ROC-AUC {every:.3f} over all {n})" if every is not None else ""))
    cost = specificity_at_sensitivity(y, p, target)
    fit = not why
    words = (f"FIT for these films: the ROC-AUC interval's lower end {lower:.3f} reaches the floor "
             f"{cfg.auc_floor:.2f}" if fit else "NOT FIT for these films: " + "; ".join(why))
    if cost is not None:
        over = "" if len(y) == n else f" on the {len(y)} films it assessed"
        words += (f". Sensitivity {target:g}{over} needs threshold {cost['threshold']:.4f} and leaves specificity "
                  f"{cost['specificity']:.3f}")
        cost["films"] = len(y)
    return {"fit": fit, "auc_floor": cfg.auc_floor, "roc_auc_lower": lower, "max_refused": cfg.max_refused,
            "refused": refused, "at_target_sensitivity": cost, "resampling_unit": result["ci_resampling"]["unit"],
            "words": words}


def class_folders(folder: str | Path, split: str | None, labels: list[str]) -> tuple[Path, list[Path]]:
    """The folder holding the classes, and each label's sub-folder in label order."""
    root = Path(folder) / split if split else Path(folder)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder")
    missing = [label for label in labels if not (root / label).is_dir()]
    if missing:
        hint = "; for a dataset root add --split test" if not split and (root / "test").is_dir() else ""
        raise DataError(f"'{root}' must hold one folder per class ({', '.join(labels)}); "
                        f"'{missing[0]}' is missing{hint}")
    return root, [root / label for label in labels]


def resampling_groups(paths: list[str], source: PatientSource | None = None) -> tuple[np.ndarray, dict]:
    """Each image's bootstrap group: its patient when `source` (default: the file names) names one, else the
    image alone."""
    source = source or PatientSource()
    ids = [source.patient(p) for p in paths]
    named = sum(i is not None for i in ids)
    groups = np.array([i if i is not None else f"image {k}" for k, i in enumerate(ids)])
    unit = "patient" if named == len(ids) else "image" if named == 0 else "patient where named, else image"
    return groups, {"unit": unit, "n_groups": len(set(groups.tolist())), "files_with_patient_id": named,
                    "patient_ids_from": source.describe()}


def band_groups(paths: list[str], source: PatientSource | None = None) -> tuple[np.ndarray | None, str]:
    """resampling_groups for a plot: (groups, what they are in words); None when every group is one image."""
    groups, info = resampling_groups(paths, source)
    if info["unit"] == "image":
        return None, "images"
    return groups, "patients" if info["unit"] == "patient" else "groups (patients where named, else images)"


def _named(m: dict) -> dict:
    """binary_metrics under this report's names; null where undefined (no images, or one class only)."""
    out = {k: (None if m["n"] == 0 or math.isnan(m[v]) else m[v]) for k, v in REPORTED.items()}
    return {**out, "threshold": m["threshold"], "n": m["n"], "confusion_matrix": m["confusion_matrix"]}


def labelled_files(folder: str | Path, split: str | None, labels: list[str]
                   ) -> tuple[Path, list[str], list[int], list[dict]]:
    """(class root, image files, their class index, entries not scored) of a folder laid out by class."""
    root, folders = class_folders(folder, split, labels)
    files, truth, skipped = [], [], []
    for k, sub in enumerate(folders):
        found = find_inputs([str(sub)])
        if not found.files:
            raise DataError(f"class folder '{sub}' holds no image files")
        files += found.files
        truth += [k] * len(found.files)
        skipped += [{"path": display_path(p), "status": st, "reason": why} for p, st, why in found.problems]
    return root, files, truth, skipped


def score_files(files: list[str], model: EdgeModel, use_guard: bool, cfg, margins: dict | None = None):
    """{path: its Scored record} and the files that could not be decoded.

    cfg: anything with progress, batch_size and workers (ValidateConfig, CalibrateConfig).
    margins: a dict that receives each path's logit margin (logit 1 - logit 0), unrounded, for refitting."""
    scored, unreadable = {}, []
    bar = Progress(len(files), "validate", enabled=cfg.progress)
    for batch in decoded_batches(files, model, cfg.batch_size, cfg.workers):
        ok = [(path, dec) for path, dec, err in batch if err is None]
        unreadable += [{"path": display_path(path), "error": err} for path, _, err in batch if err is not None]
        if ok:
            outs: dict | None = {} if margins is not None else None
            scored.update(zip([p for p, _ in ok], score_images(model, [dec for _, dec in ok], use_guard, outs)))
            if outs is not None:
                z = outs["logits"][:, 1].astype(np.float64) - outs["logits"][:, 0]
                margins.update(zip([p for p, _ in ok], z.tolist()))
        bar.update(len(batch))
    bar.close()
    return scored, unreadable


def _predictions_csv(paths: list[str], y: np.ndarray, records: list[Scored], labels: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for path, yi, r in zip(paths, y, records):
        w.writerow([spreadsheet_safe(display_path(path)), labels[yi],
                    *(spreadsheet_safe("" if v is None else str(v)) for v in r.fields().values())])
    return buf.getvalue()


def _plots(result: dict, y, p, accepted, paths, model: EdgeModel, out: Path, n_bootstrap: int,
           source: PatientSource) -> list[str]:
    """The confusion, reliability and ROC/PR figures; [] on an install without matplotlib/scikit-learn."""
    try:
        import matplotlib  # noqa: F401 - optional ([plots] extra): checked before any figure is drawn
        import sklearn  # noqa: F401

        from pneumo_edge.site.plots import (
            confusion_matrix_plot,
            reliability_curves,
            reliability_plot,
            roc_pr_plot,
        )
    except ImportError:
        return []
    labels, t = model.labels, model.threshold
    ya, pa = y[accepted], p[accepted]
    name = f"{model.path.name} ({model.meta.model})"
    plots = [confusion_matrix_plot(result["metrics"]["confusion_matrix"], labels, out / "confusion_matrix.png",
                                   f"{name}, stored threshold {t:.3f}"),
             reliability_plot(reliability_curves(ya, {name: pa}), out / "reliability.png",
                              f"reliability, temperature {model.temperature:.2f} (stored)")]
    if len(np.unique(ya)) == 2:  # a curve needs both classes
        band, unit = band_groups([q for q, a in zip(paths, accepted) if a], source)  # the accepted images' own
        plots.append(roc_pr_plot(ya, pa, out / "roc.png", {"stored threshold": t}, f"ROC, {name}", band, unit,
                                 n_bootstrap))
    return sorted(f.name for f in plots)


def validate(cfg: ValidateConfig) -> dict:
    """Score every image under the class folders with the file's own rule; write metrics, rows and plots."""
    model = EdgeModel(resolve_model(cfg.model))
    labels, t = model.labels, model.threshold
    root, files, truth, skipped = labelled_files(cfg.folder, cfg.split, labels)
    source = PatientSource.for_folder(root, cfg.patient_pattern)
    out = prepare_out_dir(cfg.out, cfg.force)  # refused before the long part
    use_guard = cfg.guard and model.guard is not None

    scored, unreadable = score_files(files, model, use_guard, cfg)
    keep = [i for i, f in enumerate(files) if f in scored]
    paths = [files[i] for i in keep]
    records = [scored[f] for f in paths]
    y = np.array([truth[i] for i in keep], int)
    p = np.array([r.probability for r in records])
    rejected = np.array([r.rejected for r in records], bool)
    accepted = ~rejected
    ya, pa = y[accepted], p[accepted]
    groups, resampling = resampling_groups(paths, source)
    both = len(np.unique(ya)) == 2

    result = {
        "model": {"path": str(model.path), "architecture": model.meta.model,
                  "quantization": model.meta.quantization, "weights_sha256": model.meta.weights_sha256,
                  "model_sha256": model.sha256},
        "data": {"folder": str(root), "n_images": int(len(y)),
                 "class_counts": {label: int((y == k).sum()) for k, label in enumerate(labels)},
                 "unreadable": unreadable, "not_scored": skipped},
        "decision_rule": {"threshold": t, "temperature": model.temperature,
                          "target_sensitivity": model.meta.target_sensitivity, "from": "the model file's metadata"},
        "guard": {"in_file": model.guard is not None, "applied": use_guard, "rejected": int(rejected.sum()),
                  "rejected_by_class": {label: int(rejected[y == k].sum()) for k, label in enumerate(labels)}},
        "metrics": _named(binary_metrics(ya, pa, t)),  # over the images the guard accepted
        "ci95": None,
        "ci_resampling": {**resampling, "resamples": cfg.n_bootstrap},
    }
    if both and cfg.n_bootstrap > 0:
        ci = bootstrap_ci(ya, pa, t, n=cfg.n_bootstrap, groups=groups[accepted])
        result["ci95"] = {k: ci[v] for k, v in REPORTED.items()}
    if rejected.any():
        result["metrics_ignoring_guard"] = _named(binary_metrics(y, p, t))
    result["verdict"] = verdict(result, ya, pa, model.meta.target_sensitivity or TARGET_SENSITIVITY, cfg)
    result["plots"] = _plots(result, y, p, accepted, paths, model, out, cfg.n_bootstrap, source)
    if not result["plots"]:
        result["plots_missing"] = PLOTS_HINT
    write_text(out / "predictions.csv", _predictions_csv(paths, y, records, labels))
    write_json(out / "metrics.json", result)
    return result


def render_summary(r: dict) -> str:
    """What the CLI prints: data, rule, guard, metrics with intervals, and how they were resampled."""
    m, ci, g, rule = r["metrics"], r["ci95"] or {}, r["guard"], r["decision_rule"]
    counts = ", ".join(f"{k} {v}" for k, v in r["data"]["class_counts"].items())
    lines = [f"{Path(r['model']['path']).name} ({r['model']['quantization'] or 'fp32'}) on {r['data']['n_images']} images "
             f"in {r['data']['folder']} ({counts})",
             f"stored threshold {rule['threshold']:.4f}, temperature {rule['temperature']:.4f}"]
    if g["applied"]:
        by_class = ", ".join(f"{k} {v}" for k, v in g["rejected_by_class"].items())
        lines.append(f"guard rejected {g['rejected']} ({by_class}), counted apart: metrics over the {m['n']} "
                     "images it accepted")
    else:
        lines.append("guard " + ("off (--no-guard)" if g["in_file"] else "absent from this file"))
    for k, shown in (("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                     ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
        value = "n/a (no images, or one class only)" if m[k] is None else f"{m[k]:.4f}"
        interval = f"  [{ci[k][0]:.4f}, {ci[k][1]:.4f}]" if k in ci else ""
        lines.append(f"  {shown:<12} {value}{interval}")
    s = r["ci_resampling"]
    if ci:
        named_in = s.get("patient_ids_from", "the file names")
        unit = {"patient": f"the {s['n_groups']} patients named in {named_in}",
                "image": ("images (the file names carry no patient id)" if named_in == "the file names"
                          else f"images (no patient named in {named_in})")}
        lines.append(f"95% intervals: {s['resamples']} bootstrap resamples of "
                     + unit.get(s["unit"], f"{s['n_groups']} groups: patients where {named_in} name one, "
                                           "else single images"))
    if r.get("plots_missing"):
        lines.append(f"no plots: {r['plots_missing']}")
    if r["data"]["unreadable"]:
        lines.append(f"{len(r['data']['unreadable'])} file(s) could not be read: listed in metrics.json")
    lines.append(f"verdict: {r['verdict']['words']}")
    return "\n".join(lines)
