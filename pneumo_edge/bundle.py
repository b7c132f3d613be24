"""Assemble the shipped bundle: export + evaluation results + Grad-CAM examples + guard report + model card.

    build_bundle("runs/default", results="runs/default/eval", data="../shared/data/chest_xray", out="export")
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .edge.atomic import copy_file, write_text

EVAL_FILES = ("results.json", "report.md", "confusion_matrix.png", "roc.png", "reliability.png")
CAM_EXAMPLES = 3  # per class


def build_bundle(checkpoint: str, results: str, data: str, out: str = "export", gate=None, force: bool = False) -> Path:
    from .gradcam import explain
    from .onnx_export import GateConfig, export
    from .ood import guard_report, render_guard_report
    from .report import model_card

    out_p = Path(out)
    export(checkpoint, out_p, data, gate or GateConfig(), results=results, force=force)
    for name in EVAL_FILES:
        copy_file(Path(results) / name, out_p / name)
    copy_file(Path(checkpoint) / "train_results.json", out_p / "train_results.json")
    test = Path(data) / "test"
    picks = [str(p) for label in ("NORMAL", "PNEUMONIA") for p in sorted((test / label).iterdir())[:CAM_EXAMPLES]]
    cam_dir = out_p / "gradcam"
    if cam_dir.exists():
        shutil.rmtree(cam_dir)  # no stale overlays
    explain(picks, out_p, cam_dir, force=True)
    for png in cam_dir.glob("*.gradcam.png"):  # keep only the contact sheet: the bundle stays small
        png.unlink()
    g = guard_report(str(out_p / "model.onnx"), data, str(out_p / "guard.json"))
    write_text(out_p / "guard.md", render_guard_report(g))
    write_text(out_p / "README.md", model_card(out_p))
    return out_p
