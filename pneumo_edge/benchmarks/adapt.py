"""`pneumo-edge bench-adapt`: adapt the bundle to a site (head refit, and fine-tune) and check the targets.

    r = bench_adapt("../shared/data/site_nih", bundle="export", data="../shared/data/chest_xray",
                    out="bench/results/adapt.json", work="bench/adapt", fine_tune=True)

Each depth runs `adapt` as a user would (fixed seed and rule), or reads an adaptation.json written before
(`reuse`), and its numbers are held against the targets: held-out ROC-AUC overall and per view, the
sensitivity guarantee on the calibration part and the specificity it costs on the held-out part, the home
validation ROC-AUC beside the parent's, the share of the site's films the adapted guard accepts, every
non-X-ray refused, and the wall time on this machine.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from pneumo_edge.edge.atomic import write_json
from pneumo_edge.site.adapt import AdaptConfig, run_head_refit
from pneumo_edge.site.adaptreport import REPORT, SPECIFICITY

TARGETS = {"head refit": {"roc_auc": 0.91, "roc_auc_per_view": None, "seconds": 60},
           "fine-tune": {"roc_auc": 0.93, "roc_auc_per_view": 0.90, "seconds": 900}}
SENSITIVITY, HOME_DROP, ACCEPTED = 0.95, 0.01, 0.97


def _check(value, ok: bool | None) -> dict:
    return {"value": value, "met": ok}


def file_targets(f: dict, goal: dict) -> dict:
    """One ONNX file's numbers against the targets."""
    held, home, g = f["held_out"], f["home_validation"], f["guard"]
    op = held["overall"]["at_threshold"]
    sensitivity, specificity = op["sensitivity"], op["specificity"]
    views = {k: v["roc_auc"]["after"] for k, v in held.items() if k.startswith("view ")}
    out = {"roc_auc_held_out": _check(held["overall"]["roc_auc"]["after"],
                                      held["overall"]["roc_auc"]["after"] >= goal["roc_auc"]),
           "sensitivity_lower_bound_calibration": _check(f["provenance"]["sensitivity_lower_bound"],
                                                         f["provenance"]["sensitivity_lower_bound"] >= SENSITIVITY),
           "sensitivity_held_out": _check(sensitivity, None),
           "specificity_held_out": _check(specificity, specificity is not None and specificity > SPECIFICITY),
           "site_films_accepted": _check(g["site_films_accepted_after"], g["site_films_accepted_after"] >= ACCEPTED),
           "held_out_films_accepted": _check(g["held_out_accepted_after"], g["held_out_accepted_after"] >= ACCEPTED),
           "non_xrays_refused": _check(f"{g.get('refused')} of {g.get('non_xrays')}",
                                       g.get("refused") == g.get("non_xrays"))}
    if goal["roc_auc_per_view"] is not None:
        out["roc_auc_per_view"] = _check(views, all(v >= goal["roc_auc_per_view"] for v in views.values()))
    else:
        out["roc_auc_per_view"] = _check(views, None)
    if home is not None:
        before, after = home["roc_auc"]["before"], home["roc_auc"]["after"]
        out["home_validation_roc_auc"] = _check({"parent": before, "adapted": after}, before - after <= HOME_DROP)
    else:
        out["home_validation_roc_auc"] = _check(None, False)
    return out


def summarise(report: dict) -> dict:
    """A depth's adaptation.json held against its targets."""
    goal = TARGETS[report["method"]]
    seconds = report["seconds"]["total"]
    files = {name: file_targets(f, goal) for name, f in report["files"].items()}
    return {"method": report["method"], "seconds": _check(seconds, seconds <= goal["seconds"]),
            "split": report["split"], "targets": {k: v for k, v in goal.items() if v is not None},
            "files": files, "fp32_vs_int8": report.get("fp32_vs_int8"),
            "held_out": {n: f["held_out"] for n, f in report["files"].items()},  # the per-view tables
            "home_validation": {n: f["home_validation"] for n, f in report["files"].items()},
            "seconds_by_stage": report["seconds"],
            "all_met": all(c["met"] is not False for f in files.values() for c in f.values())
            and seconds <= goal["seconds"]}


def bench_adapt(site: str, bundle: str, data: str, out: str, work: str, fine_tune: bool = False,
                reuse: dict[str, str] | None = None, force: bool = False) -> dict:
    """Run (or reuse) each depth, summarise against the targets, write `out`."""
    reuse = reuse or {}
    runs = {}
    for method, tuned in (("head refit", False), ("fine-tune", True)):
        if tuned and not fine_tune and method not in reuse:
            continue
        if method in reuse:
            runs[method] = json.loads((Path(reuse[method]) / REPORT).read_text())
            continue
        folder = Path(work) / ("fine-tune" if tuned else "head-refit")
        cfg = AdaptConfig(folder=site, model=bundle, out=str(folder), data=data, fine_tune=tuned, force=force)
        if tuned:
            from pneumo_edge.train.adapt_tune import fine_tune

            runs[method] = fine_tune(cfg)
        else:
            runs[method] = run_head_refit(cfg)
    result = {"site": site, "bundle": bundle, "home_data": data,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "note": "held-out patients of the site's own split (seed 0); the owner's second set of patients of "
                      "the same hospital is the check that counts",
              "runs": {m: f"read from {reuse[m]}/{REPORT} (times as that run measured them)" if m in reuse
                       else "run by this command" for m in runs},
              "depths": {m: summarise(r) for m, r in runs.items()}}
    write_json(out, result)
    return result


def render_bench(r: dict) -> str:
    lines = []
    for m, d in r["depths"].items():
        lines.append(f"{m}: {d['seconds']['value']:.0f} s ({'met' if d['seconds']['met'] else 'MISSED'}); "
                     f"all targets {'met' if d['all_met'] else 'not all met'}")
        for name, f in d["files"].items():
            for k, c in f.items():
                mark = "" if c["met"] is None else (" ok" if c["met"] else " MISSED")
                lines.append(f"  {name} {k}: {json.dumps(c['value'])}{mark}")
    return "\n".join(lines)

