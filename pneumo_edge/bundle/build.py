"""Assemble the shipped bundle: export + evaluation results + Grad-CAM examples + guard report + model card.

    build_bundle("runs/default", results="runs/default/eval", data="../shared/data/chest_xray", out="export")
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from pneumo_edge.bundle.guardfit import write_guard_report
from pneumo_edge.edge.atomic import copy_file
from pneumo_edge.edge.decision import positive
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.targets import FP32
from pneumo_edge.site.metrics import outcome, prob_from_logits
from pneumo_edge.train.data import LABELS, patient_id

EVAL_FILES = ("report.md", "confusion_matrix.png", "roc.png", "reliability.png")  # export copies results.json
CAM_CASES = 6  # panels on the contact sheet
CAM_SEED = 0
CAM_ORDER = ("true positive", "true negative", "false positive", "false negative")  # taken in turn


def build_bundle(checkpoint: str, results: str, data: str, out: str = "export", gate=None, force: bool = False) -> Path:
    from pneumo_edge.bundle.export import (  # torch: training side only, kept off the light install
        GateConfig,
        export,
    )
    from pneumo_edge.bundle.report import (
        write_model_card,  # torch: training side only, kept off the light install
    )

    out_p = Path(out)
    export(checkpoint, out_p, data, gate or GateConfig(), results=results, force=force)
    for name in EVAL_FILES:
        copy_file(Path(results) / name, out_p / name)
    copy_file(Path(checkpoint) / "train_results.json", out_p / "train_results.json")
    stage("bundle", "Grad-CAM examples from the stored test predictions")
    gradcam_examples(out_p, results, data, out_p / "gradcam")
    stage("bundle", "guard report")
    write_guard_report(str(out_p / FP32.file), data, out_p / "guard.json", force=True)
    write_model_card(out_p)  # again, now that the guard report and the heat maps are in
    return out_p


def pick_cam_cases(names: list[str], labels: np.ndarray, probs: np.ndarray, threshold: float, n: int = CAM_CASES,
                   seed: int = CAM_SEED) -> list[int]:
    """Indices of the test images to explain: outcomes in CAM_ORDER in turn, never two of one patient.

    Random with a fixed seed, so the sheet shows typical cases and the model's mistakes rather than the first
    files of each folder; an outcome with nothing (left) to show is skipped.
    """

    rng = np.random.default_rng(seed)
    kinds = [outcome(int(t), int(q)) for t, q in zip(labels, positive(np.asarray(probs), threshold))]
    pools = {k: [int(i) for i in rng.permutation([i for i, x in enumerate(kinds) if x == k])] for k in CAM_ORDER}
    def patient(i: int) -> str:
        return patient_id(names[i]) or names[i]  # a file name without a patient id is its own patient

    picks: list[int] = []
    while len(picks) < n and any(pools.values()):
        for pool in pools.values():
            while pool and patient(pool[0]) in {patient(i) for i in picks}:
                pool.pop(0)
            if pool and len(picks) < n:
                picks.append(pool.pop(0))
    return picks


def gradcam_examples(bundle: str | Path, results: str | Path, data: str, out: str | Path) -> list[dict]:
    """The contact sheet (out/contact_sheet.png) of test films picked from the evaluation's stored predictions.

    Picking reads results/test_predictions.npz, not the test split: no new test read, no ledger line.
    The picked films are explained with the bundle's twin, each titled with its outcome.
    """
    from pneumo_edge.bundle.gradcam import (
        explain,  # torch: training side only, kept off the light install
    )
    from pneumo_edge.train.evaluate import (
        stored_predictions,  # torch: training side only, kept off the light install
    )

    res, y, logits, names = stored_predictions(results, data)
    op = res["operating_point"]
    p = prob_from_logits(logits, op["temperature"])
    picks = pick_cam_cases(names, y, p, op["threshold"])
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # no stale overlays
    records = explain([str(Path(data) / "test" / LABELS[y[i]] / names[i]) for i in picks], bundle, out, force=True,
                      truth=[LABELS[y[i]] for i in picks])
    for png in out.glob("*.gradcam.png"):  # keep only the contact sheet: the bundle stays small
        png.unlink()
    for i, r in zip(picks, records):
        stored = outcome(int(y[i]), int(positive(p[i], op["threshold"])))
        if r.get("outcome", stored) != stored:  # the twin and the stored predictions disagree on this film
            warnings.warn(f"{names[i]}: stored predictions say {stored}, the bundle says {r['outcome']}", stacklevel=2)
    return records
