"""Evaluate a checkpoint: calibrate on validation, then read the test split once.

    results = evaluate("runs/lite0", data="../shared/data/chest_xray", out="runs/lite0/eval")
    plots_from_predictions("runs/lite0/eval", out="runs/lite0/eval")  # redraw the plots: no test read

Temperature and operating point (default: sensitivity 0.95) are fitted on the
patient-level validation set carved from train with the checkpoint's own seed
and fraction. The test split is only ever scored, and each scoring appends one
line to the test ledger so that reuse of the test set is visible.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

from pneumo_edge.edge.atomic import prepare_out_dir, write_json, write_text
from pneumo_edge.edge.errors import DataError, ModelError
from pneumo_edge.edge.imaging import PreprocessSpec
from pneumo_edge.edge.progress import stage
from pneumo_edge.site.metrics import (
    METRIC_NAMES,
    binary_metrics,
    bootstrap_ci,
    calibrate,
    expected_calibration_error,
    prob_from_logits,
)
from pneumo_edge.site.plots import (
    confusion_matrix_plot,
    reliability_curves,
    reliability_plot,
    roc_pr_plot,
)
from pneumo_edge.site.validate import band_groups
from pneumo_edge.train.checkpoint import load_checkpoint
from pneumo_edge.train.data import (
    LABELS,
    decode_all,
    fingerprint,
    load_splits,
    rebuild_split,
)

DEFAULT_LEDGER = "test_ledger.jsonl"


def append_ledger(ledger: str | Path, entry: dict) -> None:
    """One JSON line per read of the test split; appended and fsynced, never rewritten."""
    ledger = Path(ledger)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def count_ledger(ledger: str | Path) -> int:
    ledger = Path(ledger)
    return sum(1 for line in ledger.read_text().splitlines() if line.strip()) if ledger.exists() else 0


def evaluate(checkpoint: str | Path, data: str, out: str | Path, target_sensitivity: float | None = None,
             n_bootstrap: int = 1000, ledger: str | Path | None = DEFAULT_LEDGER, force: bool = False,
             note: str = "", progress: bool = True, rule_commit: str | None = None) -> dict:
    from pneumo_edge.train.fit import (
        predict_logits,  # torch: training side only, kept off the light install
    )

    if str(checkpoint).lower().endswith(".onnx"):  # its folder's PyTorch twin is not what the user named
        raise ModelError(f"'{checkpoint}' is an ONNX model: evaluate scores PyTorch checkpoints; "
                         f"run `pneumo-edge validate FOLDER --model {checkpoint}` to score the ONNX file itself")
    model, config = load_checkpoint(checkpoint)
    out = prepare_out_dir(out, force)
    spec = PreprocessSpec.from_dict(config["preprocess"])
    tcfg = config.get("train_config", {})
    target = target_sensitivity or config.get("target_sensitivity", 0.95)

    splits, _, val_s, info = rebuild_split(config, data)
    fp = fingerprint(splits.train_pool)
    stage("evaluate", f"validation: {len(val_s)} images (operating point and temperature)")
    x_val, y_val, _ = decode_all(val_s, spec.size, progress=progress, rule=spec.resize)
    val_logits = predict_logits(model, x_val, spec)
    cal = calibrate(val_logits, y_val, target)
    temperature, threshold = cal["temperature"], cal["threshold"]
    p_val_raw = prob_from_logits(val_logits)
    p_val = prob_from_logits(val_logits, temperature)

    # The one read of the test split.
    stage("evaluate", f"test split: {len(splits.test)} images (one read, recorded in the ledger)")
    x_test, y_test, bad_test = decode_all(splits.test, spec.size, progress=progress, rule=spec.resize)
    unreadable = {n for n, _ in bad_test}
    names = [s.name for s in splits.test if s.name not in unreadable]  # decode_all keeps the rest, in order
    test_logits = predict_logits(model, x_test, spec)
    p_test_raw = prob_from_logits(test_logits)
    p_test = prob_from_logits(test_logits, temperature)

    at_op = binary_metrics(y_test, p_test, threshold)
    at_half = binary_metrics(y_test, p_test, 0.5)
    stage("evaluate", f"bootstrap: {n_bootstrap} resamples")
    ci = bootstrap_ci(y_test, p_test, threshold, n=n_bootstrap)
    results = {
        "checkpoint": str(checkpoint),
        "model": config["model"],
        "weights_sha256": config.get("weights_sha256"),
        "data": splits.origin,
        "data_fingerprint": fp,
        "input_size": spec.size,
        "validation": {**info.__dict__, "metrics_at_0.5": binary_metrics(y_val, p_val, 0.5)},
        "operating_point": {"target_sensitivity": target, "threshold": threshold,
                            "chosen_on": "validation", "temperature": temperature,
                            "temperature_check": cal["temperature_check"]},
        "test": {"n": int(len(y_test)), "class_counts": {LABELS[k]: int((y_test == k).sum()) for k in range(2)},
                 "unreadable": [n for n, _ in bad_test],
                 "at_operating_point": at_op, "at_0.5": at_half, "ci95_at_operating_point": ci},
        "calibration": {
            "val_ece_before": expected_calibration_error(y_val, p_val_raw),
            "val_ece_after": expected_calibration_error(y_val, p_val),
            "test_ece_before": expected_calibration_error(y_test, p_test_raw),
            "test_ece_after": expected_calibration_error(y_test, p_test),
        },
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "results.json", results)
    np.savez_compressed(out / "test_predictions.npz", logits=test_logits, labels=y_test, names=np.array(names))
    draw_plots(results, y_test, test_logits, names, out, n_bootstrap)
    write_text(out / "report.md", render_report(results))
    if ledger:
        append_ledger(ledger, {
            "time": results["evaluated_at"], "model": config["model"], "input_size": spec.size,
            "recipe": {**{k: tcfg.get(k) for k in ("epochs", "lr", "batch_size", "ema_decay", "label_smoothing",
                                                    "sampler", "weighted_loss", "seed")}, "resize": spec.resize,
                       **{k: tcfg[k] for k in ("augment", "probe_epochs", "freeze_bn") if k in tcfg}},
            **({"rule_commit": rule_commit} if rule_commit else {}),
            "weights_sha256": (config.get("weights_sha256") or "")[:16], "note": note,
            "roc_auc": round(at_op["roc_auc"], 4), "accuracy": round(at_op["accuracy"], 4),
            "sensitivity": round(at_op["recall"], 4), "specificity": round(at_op["specificity"], 4),
        })
    print(render_summary(results))
    return results


def draw_plots(results: dict, y: np.ndarray, logits: np.ndarray, names: list[str] | None, out: Path,
               n_bootstrap: int = 1000) -> list[Path]:
    """Confusion matrix, ROC + PR (bootstrap band by patient where names carry one), reliability with ECE.

    Drawn from predictions and the results they gave, so stored predictions redraw them without a test read.
    """

    op = results["operating_point"]
    t, temperature = op["threshold"], op["temperature"]
    p = prob_from_logits(logits, temperature)
    groups, unit = band_groups(names) if names is not None else (None, "images")
    title = f"test, {results['model']} @ {results['input_size']}px"
    return [
        confusion_matrix_plot(binary_metrics(y, p, t)["confusion_matrix"], list(LABELS), out / "confusion_matrix.png",
                              f"test, threshold {t:.3f} (val sensitivity {op['target_sensitivity']:.2f})"),
        roc_pr_plot(y, p, out / "roc.png", {"operating point": t, "0.5": 0.5}, title, groups, unit, n_bootstrap),
        reliability_plot(reliability_curves(y, {"before (T=1)": prob_from_logits(logits),
                                                f"after (T={temperature:.2f})": p}),
                         out / "reliability.png", "test reliability, temperature fitted on validation"),
    ]


def stored_predictions(eval_dir: str | Path, data: str | None = None
                       ) -> tuple[dict, np.ndarray, np.ndarray, list[str] | None]:
    """An evaluation's results.json, test labels, test logits and each prediction's file name.

    Predictions stored before names were: the names are listed again from `data`'s test split, in the
    order evaluate read it (listed only, nothing decoded or scored), and must line up with the stored labels.
    """
    d = Path(eval_dir)
    results = json.loads((d / "results.json").read_text())
    with np.load(d / "test_predictions.npz") as z:
        y, logits = z["labels"], z["logits"]
        names = [str(n) for n in z["names"]] if "names" in z.files else None
    if names is None and data:
        unreadable = set(results["test"]["unreadable"])
        test = [s for s in load_splits(data).test if s.name not in unreadable]
        if len(test) != len(y) or any(s.label != k for s, k in zip(test, y)):
            raise DataError(f"the test split of '{data}' does not line up with {d / 'test_predictions.npz'}")
        names = [s.name for s in test]
    return results, y, logits, names


def plots_from_predictions(eval_dir: str | Path, out: str | Path, data: str | None = None,
                           n_bootstrap: int = 1000) -> list[Path]:
    """Redraw an evaluation's plots from its stored predictions: no test read, no ledger line."""
    results, y, logits, names = stored_predictions(eval_dir, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return draw_plots(results, y, logits, names, out, n_bootstrap)


def render_summary(r: dict) -> str:
    op, h = r["test"]["at_operating_point"], r["test"]["at_0.5"]
    return (f"test ({r['test']['n']} images): ROC-AUC {op['roc_auc']:.4f}  PR-AUC {op['pr_auc']:.4f}\n"
            f"  at validation operating point t={op['threshold']:.3f}: accuracy {op['accuracy']:.4f}  "
            f"sensitivity {op['recall']:.4f}  specificity {op['specificity']:.4f}  F1 {op['f1']:.4f}\n"
            f"  at 0.5: accuracy {h['accuracy']:.4f}  sensitivity {h['recall']:.4f}  specificity {h['specificity']:.4f}")


def render_report(r: dict) -> str:
    op, h, ci = r["test"]["at_operating_point"], r["test"]["at_0.5"], r["test"]["ci95_at_operating_point"]
    cal, v = r["calibration"], r["validation"]
    rows = "\n".join(
        f"| {k} | {op[k]:.4f} [{ci[k][0]:.4f}, {ci[k][1]:.4f}] | {h[k]:.4f} |" for k in METRIC_NAMES)
    (tn, fp), (fn, tp) = op["confusion_matrix"]
    return f"""# Evaluation: {r['model']} @ {r['input_size']} px

Test split: {r['test']['n']} images ({', '.join(f'{k} {n}' for k, n in r['test']['class_counts'].items())}), read once.
Validation: {v['n_val']} images from {v['n_groups_val']} {v['grouping']} groups, carved from train.

Operating point chosen on validation for sensitivity >= {r['operating_point']['target_sensitivity']}:
threshold {op['threshold']:.4f} on P(pneumonia) after temperature scaling (T = {r['operating_point']['temperature']:.3f}).

| metric (test) | at operating point [95% bootstrap CI] | at 0.5 |
|---|---|---|
{rows}

Confusion matrix at the operating point: TN {tn}, FP {fp}, FN {fn}, TP {tp}.

Calibration (expected calibration error, 15 bins): validation {cal['val_ece_before']:.4f} -> {cal['val_ece_after']:.4f},
test {cal['test_ece_before']:.4f} -> {cal['test_ece_after']:.4f} (before -> after temperature scaling).

![confusion matrix](confusion_matrix.png) ![ROC](roc.png) ![reliability](reliability.png)
"""


def summarize_seeds(result_dirs: list[str | Path], out_json: str | Path | None = None) -> dict:
    """Mean and standard deviation of the headline test metrics over runs that differ only in seed."""
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in result_dirs]
    keys = ("accuracy", "roc_auc", "pr_auc", "recall", "specificity", "f1")
    values = {k: [r["test"]["at_operating_point"][k] for r in runs] for k in keys}
    seeds = []
    for d in result_dirs:
        config_path = Path(d).parent / "config.json"
        seeds.append(json.loads(config_path.read_text())["train_config"]["seed"] if config_path.exists() else None)
    summary = {"seeds": seeds, "runs": [str(d) for d in result_dirs], "per_run": values,
               "summary": {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                           for k, v in values.items()}}
    if out_json:
        write_json(out_json, summary)
    return summary
