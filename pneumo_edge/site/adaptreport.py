"""What `adapt` measured: held-out patients before and after, per view; home validation; the guard.

    report = measure(cfg, site, runs, home, common)     # the dict adapt writes to adaptation.json
    print(render_summary(report)); card = render_card(report)

ROC-AUC before (the parent file, its own head) and after (the new file) on the held-out patients' films,
every film scored (the guard is not applied, so both rank the same films), with 95% percentile bootstrap
intervals that resample patients and an interval for the difference from the same resamples. Sensitivity
and specificity at the new threshold over the films the new guard accepts, as the edge decides, with
intervals over patients. Per view (the site table's view column) and overall.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pneumo_edge.edge.decision import positive
from pneumo_edge.edge.sitecal import grouped_interval
from pneumo_edge.edge.stats import bootstrap_indices, roc_auc
from pneumo_edge.site.siteguard import altered_rates

LEVEL = 0.95
SPECIFICITY = 0.5  # the held-out specificity the guaranteed threshold should keep (above it)
PARTS = ("fit", "calibrate", "held-out")  # of the site's patients, split by adapt
REPORT, CARD_SECTION = "adaptation.json", "adaptation.md"  # written into the adapted bundle


def _pct(draws: list[float]) -> list[float] | None:
    if not draws:
        return None
    a = (1 - LEVEL) / 2 * 100
    return [float(np.percentile(draws, a)), float(np.percentile(draws, 100 - a))]


def auc_pair(y: np.ndarray, before: np.ndarray, after: np.ndarray, groups: np.ndarray, n: int, seed: int = 0) -> dict:
    """ROC-AUC of two scorings of the same films, their intervals and the difference's, resampling patients."""
    if len(np.unique(y)) < 2:
        return {"before": None, "after": None, "why": "one class only"}
    b, a, d = [], [], []
    for i in bootstrap_indices(y, n, seed, groups):
        b.append(roc_auc(y[i], before[i]))
        a.append(roc_auc(y[i], after[i]))
        d.append(a[-1] - b[-1])
    return {"before": roc_auc(y, before), "before_ci95": _pct(b), "after": roc_auc(y, after), "after_ci95": _pct(a),
            "difference_ci95": _pct(d)}


def at_threshold(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity at `threshold`, with intervals over patients."""
    pred = positive(p, threshold)
    out = {}
    for name, cls, hit in (("sensitivity", 1, pred), ("specificity", 0, ~pred)):
        m = y == cls
        out[name] = float(hit[m].mean()) if m.any() else None
        out[f"{name}_ci95"] = grouped_interval(hit[m], groups[m]) if m.any() else None
    return out


def block(y, before, after, groups, accepted, threshold: float, n: int) -> dict:
    """One row of the held-out table: films, patients, AUC before/after, and the operating point."""
    return {"films": int(len(y)), "patients": len(set(groups.tolist())), "pneumonia_films": int(y.sum()),
            "roc_auc": auc_pair(y, before, after, groups, n),
            "guard_refused": int((~accepted).sum()),
            "at_threshold": at_threshold(y[accepted], after[accepted], groups[accepted], threshold)}


def held_out(run, site, n: int) -> dict:
    m = site.mask("held-out")
    rows = {"overall": m} | {f"view {v}": m & (site.views == v) for v in sorted(set(site.views[m].tolist()))}
    return {name: block(site.y[r], run.p_before[r], run.p_after[r], site.groups[r], run.accepted_after[r],
                        run.threshold, n) for name, r in rows.items() if r.any()}


def guard_block(run, site) -> dict:
    h = site.mask("held-out")
    out = {"site_films_accepted_before": float(run.accepted_before.mean()),
           "site_films_accepted_after": float(run.accepted_after.mean()),
           "held_out_accepted_after": float(run.accepted_after[h].mean()) if h.any() else None,
           **run.checks.get("non_xray_gate", {})}
    if run.guard is not None and h.any():
        out["held_out_altered_refused"] = altered_rates(run.guard, run.embed, site.x[h])
    return out


def home_block(run, home, n: int) -> dict | None:
    if run.home is None:
        return None
    r = run.home
    return {"films": int(len(home.val_y)), "roc_auc": auc_pair(home.val_y, r["p_before"], r["p_after"],
                                                               home.val_groups, n),
            "accepted_before": float(r["accepted_before"].mean()), "accepted_after": float(r["accepted_after"].mean()),
            "at_parent_threshold_before": at_threshold(home.val_y, r["p_before"], home.val_groups, run.parent_threshold),
            "at_new_threshold_after": at_threshold(home.val_y, r["p_after"], home.val_groups, run.threshold)}


def fp32_vs_int8(runs, site) -> dict | None:
    if len(runs) < 2:
        return None
    a, b = runs[0], runs[1]
    h = site.mask("held-out")
    return {"label_agreement_site_films": float(np.mean(positive(a.p_after, a.threshold)
                                                        == positive(b.p_after, b.threshold))),
            "held_out_auc_delta": (roc_auc(site.y[h], b.p_after[h]) - roc_auc(site.y[h], a.p_after[h])
                                   if len(np.unique(site.y[h])) == 2 else None)}


def measure(cfg, site, runs, home, common) -> dict:
    """adaptation.json: the split, the head, and per file the held-out, home and guard numbers."""
    return {"site": site.name, "folder": str(site.root), "method": "head refit", "out": str(cfg.out),
            "split": {"seed": cfg.seed, "unit": site.unit, "patient_ids_from": site.ids_from,
                      "fractions": {"fit": cfg.fit_fraction, "calibrate": cfg.calibrate_fraction},
                      "parts": {k: site.counts(site.mask(k)) for k in PARTS}},
            "head": common.get("head"), "population": common["population"], "home_replayed": home is not None,
            "target_sensitivity": cfg.target_sensitivity, "confidence": cfg.confidence,
            "unreadable": site.unreadable, "not_scored": site.not_scored,
            "files": {r.file: {"threshold": r.threshold, "parent_threshold": r.parent_threshold,
                               "sensitivity_lower_bound_calibration": r.link.get("sensitivity_lower_bound"),
                               "held_out": held_out(r, site, cfg.n_bootstrap), "home_validation":
                                   home_block(r, home, cfg.n_bootstrap),
                               "guard": guard_block(r, site), "checks": r.checks, "provenance": r.link}
                      for r in runs},
            "fp32_vs_int8": fp32_vs_int8(runs, site)}


# ---------------------------------------------------------------- text

def _f(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _ci(c) -> str:
    return "" if not c else f" [{c[0]:.3f}, {c[1]:.3f}]"


def view_table(f: dict) -> list[str]:
    """The held-out table of one file, markdown."""
    lines = ["| held-out films | films (patients) | ROC-AUC before | ROC-AUC after | sensitivity | specificity |",
             "|---|---|---|---|---|---|"]
    for name, b in f["held_out"].items():
        a, t = b["roc_auc"], b["at_threshold"]
        lines.append(f"| {name} | {b['films']} ({b['patients']}) | {_f(a['before'])}{_ci(a.get('before_ci95'))} | "
                     f"{_f(a['after'])}{_ci(a.get('after_ci95'))} | {_f(t['sensitivity'])}{_ci(t['sensitivity_ci95'])} "
                     f"| {_f(t['specificity'])}{_ci(t['specificity_ci95'])} |")
    return lines


def _home_line(h: dict | None) -> str:
    if h is None:
        return "home validation: not measured (no --data: the head was fitted on the site's films alone)"
    a, t = h["roc_auc"], h["at_new_threshold_after"]
    return (f"home validation ({h['films']} films): ROC-AUC {_f(a['before'], '.4f')} -> {_f(a['after'], '.4f')} "
            f"(difference{_ci(a.get('difference_ci95'))}); at the new threshold sensitivity {_f(t['sensitivity'])}, "
            f"specificity {_f(t['specificity'])}; guard accepts {h['accepted_after']:.1%} (was {h['accepted_before']:.1%})")


def _method_line(r: dict) -> str:
    if r.get("head"):
        return (f"head: L2 {r['head']['l2']:g} chosen on the fitting part's inner split; "
                f"{r['head']['replayed_home_films']} home training films replayed")
    f = r["fine_tune"]
    return (f"fine-tune: epoch {f['epoch']} of {f['recipe']['epochs']} kept (inner-validation ROC-AUC "
            f"{f['inner_val_auc']:.4f} on {f['inner_val_films']} films); {f['replayed_home_films']} home training "
            "films replayed")


def render_summary(r: dict) -> str:
    s = r["split"]
    parts = ", ".join(f"{k} {v['films']} films / {v['patients']} patients" for k, v in s["parts"].items())
    lines = [f"site '{r['site']}' ({r['folder']}): {r['method']}, split by {s['unit']} (seed {s['seed']}; ids from "
             f"{s['patient_ids_from']}): {parts}",
             _method_line(r)]
    for name, f in r["files"].items():
        g = f["guard"]
        lines += [f"{name}: threshold {f['threshold']:.4f} (was {f['parent_threshold']:.4f}) from the calibration "
                  f"part: sensitivity >= {r['target_sensitivity']:g} at {r['confidence']:g} confidence",
                  *("  " + line for line in view_table(f)),
                  f"  guard accepts {g['site_films_accepted_after']:.1%} of the site's films (was "
                  f"{g['site_films_accepted_before']:.1%}), {_f(g['held_out_accepted_after'], '.1%')} of held-out; "
                  f"refuses {g.get('refused', 0)} of {g.get('non_xrays', 0)} non-X-rays",
                  "  " + _home_line(f["home_validation"])]
    if r.get("fp32_vs_int8"):
        q = r["fp32_vs_int8"]
        lines.append(f"INT8 vs fp32: labels agree on {q['label_agreement_site_films']:.1%} of the site's films, "
                     f"held-out ROC-AUC delta {_f(q['held_out_auc_delta'], '+.4f')}")
    if "seconds" in r:
        lines.append(f"time: {r['seconds']['total']:.1f} s (" + ", ".join(f"{k} at {v:.1f} s" for k, v in
                                                                       r["seconds"].items() if k != "total") + ")")
    lines.append("intervals: 95% bootstrap over patients; ROC-AUC over every held-out film, sensitivity and "
                 "specificity over those the new guard accepts")
    return "\n".join(lines)


def render_card(r: dict) -> str:
    """The model card's section for the site (markdown)."""
    f = r["files"].get("model.onnx") or next(iter(r["files"].values()))
    link = f["provenance"]
    pop = r["population"]
    return "\n".join([
        f"## Adapted to site '{r['site']}' ({r['method']})",
        f"Population: {pop['description']}.", "",
        f"Parent: `{link['parent_file']}` sha256 `{link['parent_sha256']}`. Refitted: {'; '.join(link['refitted'])}.",
        f"Patients split with seed {r['split']['seed']} before any film was scored: "
        + ", ".join(f"{k} {v['films']} films of {v['patients']} patients" for k, v in r['split']['parts'].items())
        + f". Threshold {f['threshold']:.4f}: {link['rule']} (target {r['target_sensitivity']:g}, confidence "
          f"{r['confidence']:g}).", "",
        *view_table(f), "",
        _home_line(f["home_validation"]) + ".",
        "Intervals: 95% bootstrap over patients. The site's labels come from its own records; read its data's "
        "caveats before trusting a number.", ""])


def card_section(bundle: Path) -> str | None:
    """The site section of a bundle written by adapt (its adaptation.md), for the model card."""
    f = Path(bundle) / CARD_SECTION
    return f.read_text() if f.is_file() else None


def bench_markdown(r: dict) -> str:
    """`bench adapt`'s result file: the held-out table per depth (fp32: before -> after, overall and per view) and the targets, for README."""
    lines = []
    for method, d in r["depths"].items():
        f32, files = d["held_out"].get("model.onnx"), d["files"]
        if f32 is None:
            continue
        lines += [f"**{method}** ({d['seconds']['value']:.0f} s on {r['machine']['cpus']} cores), `model.onnx`, "
                  "held-out patients:", "", *view_table({"held_out": f32})]
        t = files["model.onnx"]
        home = t["home_validation_roc_auc"]["value"] or {}
        int8 = files.get("model.int8.onnx", {}).get("roc_auc_held_out", {}).get("value")
        words = [f"ROC-AUC {t['roc_auc_held_out']['value']:.3f}"
                 + (f" (INT8 {int8:.3f})" if int8 is not None else "")
                 + f" against {d['targets']['roc_auc']:g}: {'met' if t['roc_auc_held_out']['met'] else 'missed'}",
                 f"sensitivity lower bound {t['sensitivity_lower_bound_calibration']['value']:.3f} on the calibration "
                 "part: " + ("met" if t["sensitivity_lower_bound_calibration"]["met"] else "missed"),
                 f"specificity at it {t['specificity_held_out']['value']:.3f} against > {SPECIFICITY:g}: "
                 + ("met" if t["specificity_held_out"]["met"] else "missed")]
        if home:
            words.append(f"home validation ROC-AUC {home['parent']:.4f} -> {home['adapted']:.4f}: "
                         + ("kept" if t["home_validation_roc_auc"]["met"] else "not kept"))
        words.append(f"site films accepted {t['site_films_accepted']['value']:.1%}: "
                     + ("met" if t["site_films_accepted"]["met"] else "missed"))
        words.append(f"non-X-rays refused {t['non_xrays_refused']['value']}")
        lines += ["", "; ".join(words) + ".", ""]
    return "\n".join(lines).strip()


def adapt_section(root: Path) -> str | None:
    """README's generated `adapt` section from `pneumo-edge bench adapt`'s result file, when it exists."""
    path = Path(root) / "bench" / "results" / "adapt.json"
    return bench_markdown(json.loads(path.read_text())) if path.is_file() else None
