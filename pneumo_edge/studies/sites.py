"""Site calibration and drift monitoring, simulated: evidence for README, validation only unless told.

    simulate_sites("export", data="../shared/data/chest_xray", out="bench/results")       # pneumo-edge site-sim
    test_read("export", data=..., out="bench/results", ledger="test_ledger.jsonl")      # site-sim --test-read

Each declared perturbation of the recipe study (`perturb.PERTURBATIONS`) applied to the validation films is
one simulated site. Every film is scored once per perturbation by the bundle's ONNX file, guard applied;
the splits then only resample those scores. One split: draw patients until the site holds n films, give
half its patients to `calibrate`'s rule (`edge.sitecal.guaranteed_threshold`) and score the other half at
the threshold it set. How often the held-out sensitivity falls below the target is compared with
1 - confidence; the held-out half is finite, so its own sampling noise adds to that rate. Beside it: the
sensitivity over every film of the perturbed set (the population the site was drawn from: the quantity the
guarantee speaks of) and over the films outside the calibration half.

`test_read` plays the test split as one more site, the same way, and feeds the drift monitor the test
films, then the same films perturbed, then the non-X-ray set. It is one read of the test split, recorded
in the ledger, and a simulation of the procedures only: nothing it computes changes what ships.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from pneumo_edge.edge.atomic import write_json, write_text, write_with
from pneumo_edge.edge.decision import positive, score_images
from pneumo_edge.edge.imaging import resize_gray
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.monitor import Monitor, replay
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.sitecal import guaranteed_threshold
from pneumo_edge.edge.targets import FP32
from pneumo_edge.site.monitoring import plot_trace
from pneumo_edge.site.probes import ood_images
from pneumo_edge.site.validate import resampling_groups
from pneumo_edge.train.data import decode_all, load_splits, rebuild_split
from pneumo_edge.train.perturb import PERTURBATIONS, perturbed_views

SIZES = (100, 200, 400)
SPLITS = 200
TARGET, CONFIDENCE = 0.95, 0.90
MONITOR_SHIFTS = ("contrast-0.6", "gamma-1.6", "zoom-in-0.8")  # perturbations streamed after the test films
SEED = 0


def score_views(model: EdgeModel, views: np.ndarray, chroma: np.ndarray | None = None,
                batch: int = 32) -> dict[str, np.ndarray]:
    """Probability, guard score and refusal of resized uint8 model views, through the edge scoring path."""
    chroma = np.zeros(len(views)) if chroma is None else chroma  # the dataset's films are grey JPEGs
    records = [r for i in range(0, len(views), batch)
               for r in score_images(model, list(zip(views[i:i + batch], chroma[i:i + batch])), True)]
    return {"probability": np.array([r.probability for r in records]),
            "guard_score": np.array([r.guard_score for r in records]),
            "rejected": np.array([r.rejected for r in records], bool), "label": [r.label for r in records]}


def site_split(groups: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """(calibration mask, held-out mask): patients drawn until the site has n films, then halved by patient."""
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(names))
    take = order[: int(np.searchsorted(np.cumsum(counts[order]), n)) + 1]
    if counts[take].sum() < n:
        return None
    cal_patients = rng.permutation(take)[: len(take) // 2]
    site, cal = np.isin(inverse, take), np.isin(inverse, cal_patients)
    return cal, site & ~cal


def simulate(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n: int, current: float, splits: int = SPLITS,
             target: float = TARGET, confidence: float = CONFIDENCE, seed: int = SEED,
             by_patient: bool = True) -> dict:
    """`splits` random sites of n films from (y, p): calibrate on half the patients, score the rest.
    `by_patient` False: the rule counts every positive film as a trial (the rule before patients counted)."""
    rng = np.random.default_rng(seed)
    pos = y == 1
    rows = {"refused": 0, "calibrated": 0, "held_sens": [], "held_spec": [], "rest_sens": [], "population_sens": [],
            "threshold": [],
            "current_held_sens": [], "current_held_spec": []}
    for _ in range(splits):
        cut = site_split(groups, n, rng)
        if cut is None:
            return {"n": n, "feasible": False, "why": f"fewer than {n} films"}
        cal, held = cut
        t = guaranteed_threshold(p[cal & pos], target, confidence, groups[cal & pos] if by_patient else None)
        if not t.ok:
            rows["refused"] += 1
            continue
        rows["calibrated"] += 1
        rows["threshold"].append(t.threshold)
        for name, thr in (("", t.threshold), ("current_", current)):
            rows[f"{name}held_sens"].append(float(positive(p[held & pos], thr).mean()))
            rows[f"{name}held_spec"].append(float((~positive(p[held & ~pos], thr)).mean()))
        rows["rest_sens"].append(float(positive(p[~cal & pos], t.threshold).mean()))
        rows["population_sens"].append(float(positive(p[pos], t.threshold).mean()))
    k = rows["calibrated"]
    alpha = 1 - confidence
    out = {"n": n, "feasible": True, "splits": splits, "refused": rows["refused"], "calibrated": k}
    if k:
        held_sens, rest_sens = np.array(rows["held_sens"]), np.array(rows["rest_sens"])
        out.update(below_target_heldout=float((held_sens < target).mean()),
                   below_target_outside_calibration=float((rest_sens < target).mean()),
                   below_target_population=float((np.array(rows["population_sens"]) < target).mean()),
                   sampling_error=float(np.sqrt(alpha * (1 - alpha) / k)),
                   heldout_sensitivity_mean=float(held_sens.mean()),
                   heldout_specificity_mean=float(np.mean(rows["held_spec"])),
                   heldout_specificity_p10=float(np.percentile(rows["held_spec"], 10)),
                   threshold_median=float(np.median(rows["threshold"])),
                   current_below_target_heldout=float((np.array(rows["current_held_sens"]) < target).mean()),
                   current_heldout_specificity_mean=float(np.mean(rows["current_held_spec"])))
    return out


def _accepted(y, groups, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = ~s["rejected"]
    return y[keep], s["probability"][keep], groups[keep]


def _films(samples, size: int):
    """Whole films (for the framing perturbations), labels and each film's patient group."""

    films, y, bad = decode_all(samples, size, progress=True, rule=None)
    unreadable = {name for name, _ in bad}
    return films, y, resampling_groups([s.name for s in samples if s.name not in unreadable])[0]


def simulate_sites(bundle: str | Path, data: str, out: str | Path = "bench/results", model_file: str = FP32.file,
                   splits: int = SPLITS, sizes: tuple[int, ...] = SIZES, cache: str | Path | None = "runs/site-sim") -> dict:
    """Each perturbation of the validation films as a site, at each site size, `splits` times; validation only.

    cache: a folder for the validation scores (by the file's digest: weights and guard), so a re-run only
    resamples; None: no cache."""
    from pneumo_edge.train.checkpoint import (
        parse_config,  # torch: training side only, kept off the light install
    )

    bundle = Path(bundle)
    model = EdgeModel(bundle / model_file)
    cache = Path(cache) / f"{model_file}-{model.sha256[:16]}.npz" if cache else None
    if cache is not None and cache.is_file():  # the scores of an earlier run of the same weights: no re-scoring
        with np.load(cache) as z:
            y, groups = z["y"], z["groups"]
            all_scores = {n: {k: z[f"{n}/{k}"] for k in ("probability", "guard_score", "rejected")}
                          for n in PERTURBATIONS}
    else:
        config = parse_config(json.loads((bundle / "config.json").read_text()), str(bundle / "config.json"))
        _, _, val_s, _ = rebuild_split(config, data)
        films, y, groups = _films(val_s, model.spec.size)
        all_scores = {}
        for name in PERTURBATIONS:
            stage("site-sim", f"scoring the validation films under {name}")
            all_scores[name] = score_views(model, perturbed_views(films, model.spec.size, names=[name])[name])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            arrays = {f"{n}/{k}": v for n, sc in all_scores.items() for k, v in sc.items()}

            def save(tmp: Path) -> None:
                with open(tmp, "wb") as f:  # a file object: numpy would add .npz to a temporary name
                    np.savez_compressed(f, y=y, groups=groups, **arrays)

            write_with(cache, save)
    result = {"model": model_file, "weights_sha256": model.meta.weights_sha256, "data": "validation carved from train",
              "n_films": len(y), "n_patients": len(set(groups.tolist())), "target_sensitivity": TARGET,
              "confidence": CONFIDENCE, "splits": splits, "sizes": list(sizes), "current_threshold": model.threshold,
              "sites": {}}
    for name, s in all_scores.items():
        ya, pa, ga = _accepted(y, groups, s)
        singly = np.array([f"film {i}" for i in range(len(ya))])  # as if every film were its own patient
        result["sites"][name] = {"rejected_by_guard": int(s["rejected"].sum()),
                                 "runs": [simulate(ya, pa, ga, n, model.threshold, splits) for n in sizes],
                                 "runs_films_singly": [simulate(ya, pa, singly, n, model.threshold, splits)
                                                       for n in sizes],
                                 "runs_film_rule": [simulate(ya, pa, ga, n, model.threshold, splits, by_patient=False)
                                                    for n in sizes]}
    result["pooled"] = pooled(result["sites"], sizes)
    result["pooled_films_singly"] = pooled({k: {"runs": v["runs_films_singly"]} for k, v in result["sites"].items()},
                                           sizes)
    result["pooled_film_rule"] = pooled({k: {"runs": v["runs_film_rule"]} for k, v in result["sites"].items()}, sizes)
    out = Path(out)
    write_json(out / "site-calibration.json", result)
    write_text(out / "site-calibration.md", render_sites(result))
    return result


def pooled(sites: dict, sizes: tuple[int, ...] = SIZES) -> list[dict]:
    """Per site size, the rates over every perturbation's calibrated splits together."""
    rows = []
    for i, n in enumerate(sizes):
        runs = [s["runs"][i] for s in sites.values() if s["runs"][i]["feasible"]]
        k = sum(r["calibrated"] for r in runs)
        row = {"n": n, "sites": len(runs), "splits": sum(r["splits"] for r in runs),
               "refused": sum(r["refused"] for r in runs), "calibrated": k, "infeasible_sites": len(sites) - len(runs)}
        if k:
            def avg(key):
                return sum(r[key] * r["calibrated"] for r in runs if r["calibrated"]) / k

            row.update({key: avg(key) for key in ("below_target_heldout", "below_target_outside_calibration",
                                                  "below_target_population",
                                                  "heldout_specificity_mean", "current_below_target_heldout",
                                                  "current_heldout_specificity_mean")},
                       sampling_error=float(np.sqrt(0.1 * 0.9 / k)))
        rows.append(row)
    return rows


def _pc(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def render_sites(r: dict) -> str:
    alpha = 1 - r["confidence"]
    lines = [f"Simulated sites from validation only ({r['n_films']} films, {r['n_patients']} patients carved from "
             f"train, `{r['model']}` with its guard): each of the {len(r['sites'])} declared perturbations of the "
             f"study is one site. Per site size n, {r['splits']} random splits: draw patients until the site has n "
             f"films, calibrate on half its patients (sensitivity >= {r['target_sensitivity']} at "
             f"{r['confidence']:.0%} confidence), score the other half. Shipped threshold: "
             f"{r['current_threshold']:.4f}.", "",
             "| rule counts | n films | splits | refused (too few positives) | population sensitivity < target | "
             "held-out sensitivity < target | outside calibration < target | held-out specificity | shipped "
             "threshold: held-out sensitivity < target | shipped threshold: held-out specificity |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for unit, rows in (("patients (default)", r["pooled"]), ("films (--count films)", r.get("pooled_film_rule", []))):
        for p in rows:
            if not p["calibrated"]:
                refused = _pc(p["refused"] / p["splits"]) if p["splits"] else "- (the sites are smaller)"
                lines.append(f"| {unit} | {p['n']} | {p['splits']} | {refused} | - | - | - | - | - | - |")
                continue
            lines.append(f"| {unit} | {p['n']} | {p['splits']} | {_pc(p['refused'] / p['splits'])} | "
                         f"{_pc(p['below_target_population'])} | {_pc(p['below_target_heldout'])} | "
                         f"{_pc(p['below_target_outside_calibration'])} | {p['heldout_specificity_mean']:.3f} | "
                         f"{_pc(p['current_below_target_heldout'])} | {p['current_heldout_specificity_mean']:.3f} |")
    lines += ["", f"Goal: below target at most {alpha:.0%} plus sampling error (over the pooled calibrated splits: "
              + ", ".join(f"{u} n={p['n']}: +-{p['sampling_error']:.1%}" for u, rows in
                          (("patients", r["pooled"]), ("films", r.get("pooled_film_rule", [])))
                          for p in rows if p["calibrated"]) + ").",
              "", "The same sites drawn film by film, as if no patient had two films (the film rule's assumption): "
              "population sensitivity < target "
              + ", ".join(f"n={p['n']}: {_pc(p.get('below_target_population'))} ({_pc(p['refused'] / p['splits'])} "
                          "refused)" for p in r.get("pooled_films_singly", []) if p["splits"]) + ".",
              "", "Per site (population sensitivity < target / held-out sensitivity < target / held-out specificity; "
              "`refused` when the calibration half had too few positives):", "",
              "| site | guard refused | " + " | ".join(f"n={n}" for n in r["sizes"]) + " |",
              "|---|---|" + "---|" * len(r["sizes"])]
    for name, s in r["sites"].items():
        cells = []
        for run in s["runs"]:
            if not run["feasible"]:
                cells.append("-")
            elif not run["calibrated"]:
                cells.append("refused")
            else:
                cells.append(f"{_pc(run['below_target_population'])} / {_pc(run['below_target_heldout'])} / "
                             f"{run['heldout_specificity_mean']:.3f}"
                             + (f" ({run['refused']} refused)" if run["refused"] else ""))
        lines.append(f"| {name} | {s['rejected_by_guard']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the one read of the test split

NOTE = ("simulation of site calibration and drift monitoring on the test split, played as a site; it changes "
        "nothing that ships")


def _rows(s: dict, idx: np.ndarray) -> list[tuple]:
    """What the monitor is fed for each image: probability, guard score, the label given, refusal."""
    return [(float(s["probability"][i]), float(s["guard_score"][i]), s["label"][i], bool(s["rejected"][i]))
            for i in idx]


def _stream(model: EdgeModel, before: list[tuple], after: list[tuple]) -> dict:
    """A fresh monitor fed `before` (the unperturbed films) then `after`: alarms in each part."""
    mon = Monitor.for_model(model)
    trace = replay(mon, before + after)
    head, tail = trace[:len(before)], trace[len(before):]
    checked = [t for t in head if t["statistic"] is not None]
    trips_head = sum(1 for a, b in zip([{"alarm": False}] + head, head) if b["alarm"] and not a["alarm"])
    first = next((i + 1 for i, t in enumerate(tail) if t["alarm"]), None)
    return {"unperturbed_images": len(before), "unperturbed_trips": trips_head,
            "unperturbed_windows_in_alarm": (sum(t["alarm"] for t in checked) / len(checked)) if checked else None,
            "alarm_on_when_shift_starts": bool(head[-1]["alarm"]) if head else False,
            "shifted_images": len(after), "images_before_alarm": None if first is None else first - 1,
            "trace": trace, "monitor": mon}


def test_read(bundle: str | Path, data: str, out: str | Path = "bench/results", ledger: str | Path | None = None,
              seed: int = SEED) -> dict:
    """One read of the test split: played as a site (as `simulate_sites`), then streamed through the monitor."""
    from pneumo_edge.train.evaluate import (  # torch: training side only, kept off the light install
        DEFAULT_LEDGER,
        append_ledger,
    )

    bundle, out = Path(bundle), Path(out)
    model = EdgeModel(bundle / FP32.file)
    size = model.spec.size
    stage("site-sim", "the test split: one read, recorded in the ledger")
    films, y, groups = _films(load_splits(data).test, size)
    views = perturbed_views(films, size, names=["clean", *MONITOR_SHIFTS])
    scores = {name: score_views(model, v) for name, v in views.items()}
    ya, pa, ga = _accepted(y, groups, scores["clean"])
    result = {"note": NOTE, "model": FP32.file, "weights_sha256": model.meta.weights_sha256,
              "n_films": len(y), "n_patients": len(set(groups.tolist())), "target_sensitivity": TARGET,
              "confidence": CONFIDENCE, "splits": SPLITS, "current_threshold": model.threshold,
              "site": {"rejected_by_guard": int(scores["clean"]["rejected"].sum()),
                       "runs": [simulate(ya, pa, ga, n, model.threshold, SPLITS, seed=seed) for n in SIZES]}}

    items = [item for category in ood_images().values() for item in category]  # the guard report's OOD set
    ood = score_views(model, np.stack([resize_gray(g, size, model.spec.resize) for _, g, _ in items]),
                      np.array([c for _, _, c in items]))
    order = np.random.default_rng(seed).permutation(len(y))  # the folders list one class, then the other
    clean = _rows(scores["clean"], order)
    shifted = {name: _rows(scores[name], order) for name in MONITOR_SHIFTS}
    shifted["non-X-ray images"] = _rows(ood, np.arange(len(items)))
    runs = {name: _stream(model, clean, rows) for name, rows in shifted.items()}
    mon = runs[MONITOR_SHIFTS[0]]["monitor"]
    result["monitoring"] = {
        "window": mon.window, "alarm_threshold": mon.reference.alarm_threshold,
        "false_alarm_rate": mon.reference.false_alarm_rate, "stream_images": mon.reference.stream_images,
        "reference_positive_rate": mon.reference.positive_rate, "reference_refusal_rate": mon.reference.refusal_rate,
        "test_positive_rate": float(np.mean([r[2] == model.labels[1] for r in clean])),
        "test_refusal_rate": float(np.mean([r[3] for r in clean])),
        "streams": {k: {kk: vv for kk, vv in v.items() if kk not in ("trace", "monitor")} for k, v in runs.items()}}
    # one picture of the whole sequence: test films, then each shift in turn, then the non-X-ray set

    whole, marks, at = clean[:], {"test films": 1}, len(clean)
    for name, rows in shifted.items():
        marks[name] = at + 1
        whole += rows
        at += len(rows)
    if ledger is None:
        ledger = DEFAULT_LEDGER
    pos, neg = ya == 1, ya == 0
    append_ledger(ledger, {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": model.meta.model,
        "input_size": size, "weights_sha256": (model.meta.weights_sha256 or "")[:16], "note": NOTE,
        "kind": "site-calibration and monitoring simulation",
        "sensitivity": round(float(positive(pa[pos], model.threshold).mean()), 4),
        "specificity": round(float((~positive(pa[neg], model.threshold)).mean()), 4),
        "site_runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                      for r in result["site"]["runs"]],
        "monitoring": {k: {kk: vv for kk, vv in v.items()} for k, v in result["monitoring"]["streams"].items()}})
    # the read is on the ledger before anything else can fail: then the picture and the result files
    seq = Monitor.for_model(model)
    plot_trace(replay(seq, whole), seq, out / "monitoring-test.png", "test split, then shifted copies", marks)
    write_json(out / "test-read-simulation.json", result)
    write_text(out / "test-read-simulation.md", render_test_read(result))
    return result


def render_test_read(r: dict) -> str:
    m = r["monitoring"]
    lines = [f"The test split ({r['n_films']} films, {r['n_patients']} patients) played as one site, once, recorded "
             f"in `test_ledger.jsonl`: a {NOTE}. Same procedure as above ({r['splits']} splits per size, "
             f"sensitivity >= {r['target_sensitivity']} at {r['confidence']:.0%} confidence).", "",
             "| n films | refused | population sensitivity < target | held-out sensitivity < target | outside "
             "calibration < target | held-out specificity | site threshold (median) | shipped threshold: held-out "
             "sensitivity < target | shipped threshold: held-out specificity |", "|---|---|---|---|---|---|---|---|---|"]
    for run in r["site"]["runs"]:
        if not run.get("calibrated"):
            lines.append(f"| {run['n']} | {_pc(run['refused'] / run['splits']) if run['feasible'] else '-'} "
                         "| - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {run['n']} | {_pc(run['refused'] / run['splits'])} | {_pc(run['below_target_population'])} "
                     f"| {_pc(run['below_target_heldout'])} | "
                     f"{_pc(run['below_target_outside_calibration'])} | {run['heldout_specificity_mean']:.3f} | "
                     f"{run['threshold_median']:.4f} | {_pc(run['current_below_target_heldout'])} | "
                     f"{run['current_heldout_specificity_mean']:.3f} |")
    lines += ["", f"Drift monitor (window {m['window']}, alarm band {m['alarm_threshold']:.4f}: "
              f"{m['false_alarm_rate']:.0%} false alarms per {m['stream_images']} validation-like images). Each "
              f"stream: a fresh monitor fed the {r['n_films']} test films in a fixed random order, then the shifted "
              f"films. Test positive rate {m['test_positive_rate']:.3f} (validation {m['reference_positive_rate']:.3f}), "
              f"refusal rate {m['test_refusal_rate']:.3f} (validation {m['reference_refusal_rate']:.3f}).", "",
              "| then | alarm trips on the test films | share of their windows in alarm | alarm already on | "
              "shifted images before the alarm |", "|---|---|---|---|---|"]
    for name, s in m["streams"].items():
        before = "never" if s["images_before_alarm"] is None else str(s["images_before_alarm"])
        lines.append(f"| {name} ({s['shifted_images']}) | {s['unperturbed_trips']} | "
                     f"{_pc(s['unperturbed_windows_in_alarm'])} | {'yes' if s['alarm_on_when_shift_starts'] else 'no'}"
                     f" | {before} |")
    return "\n".join(lines) + "\n"
