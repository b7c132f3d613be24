"""Training-side commands: train, evaluate, export (the [train] extra)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pneumo_edge.cli.common import DEFAULT_DATA, ConfigDefaults, friendly, quiet_option
from pneumo_edge.edge.targets import PARITY


# Defaults: TrainConfig's fields (the recipe) and RunConfig's (this run); each option is named after its field.
@click.command(cls=ConfigDefaults, config="pneumo_edge.train.fit:TrainConfig,pneumo_edge.train.fit:RunConfig")
@click.option("--data", show_default=True,
              help="Local folder {train,val,test}/{NORMAL,PNEUMONIA}/ or a hub dataset id.")
@click.option("--out", show_default=True, help="Output folder for the checkpoint.")
@click.option("--arch", "model", show_default=True, help="Architecture to fine-tune: any timm model name.")
@click.option("--pretrained", type=click.Choice(["auto", "package", "hub", "none"]), show_default=True,
              help="Starting weights: auto = the best offline-capable source, package / hub force one, "
                   "none = from scratch.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Start from a local state dict (.safetensors/.pth).")
@click.option("--img-size", type=int, help="Input size (default: the architecture's).")
@click.option("--resize", type=click.Choice(["center-crop-bilinear", "squash-bilinear"]), show_default=True,
              help="How an image becomes a square input.")
@click.option("--epochs", type=int, show_default=True, help="Passes over the training images.")
@click.option("--batch-size", type=int, show_default=True, help="Images per optimisation step.")
@click.option("--lr", type=float, show_default=True, help="Peak learning rate (warm-up + cosine).")
@click.option("--weight-decay", type=float, show_default=True, help="AdamW weight decay.")
@click.option("--ema-decay", type=float, show_default=True, help="Weight averaging; 0 disables.")
@click.option("--label-smoothing", type=float, show_default=True, help="Cross-entropy label smoothing.")
@click.option("--sampler/--no-sampler", show_default=True, help="Class-balanced sampling.")
@click.option("--weighted-loss/--no-weighted-loss", show_default=True, help="Inverse-frequency weighted cross entropy.")
@click.option("--val-fraction", type=float, show_default=True, help="Validation carved from train, by patient.")
@click.option("--target-sensitivity", type=float, show_default=True,
              help="The decision threshold is set to reach this sensitivity on validation.")
@click.option("--seed", type=int, show_default=True, help="Seed for the split, sampling, augmentation and init.")
@click.option("--split-seed", type=int,
              help="Seed that carves validation instead of --seed: members of a weight soup share one split.")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(exists=True),
              help="Distil from this checkpoint folder (repeat for an ensemble); it must share the split.")
@click.option("--distill-weight", type=float, show_default=True,
              help="With --teacher: share of the loss that follows the teachers.")
@click.option("--distill-temperature", type=float, show_default=True, help="With --teacher: softmax temperature.")
@click.option("--max-train-images", type=int, help="Subsample training images (smoke runs).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out.")
@quiet_option
@friendly
def train(**options) -> None:
    """Fine-tune on the CPU; keep the best epoch by validation AUROC."""
    from pneumo_edge.train.fit import (  # torch: training side only, kept off the light install
        RunConfig,
        TrainConfig,
        fit,
    )

    ctx = click.get_current_context()
    given = [n for n in ("distill_weight", "distill_temperature")
             if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given and not options["teachers"]:
        raise click.UsageError("--distill-weight and --distill-temperature go with --teacher")
    run = RunConfig(**{k: options.pop(k) for k in ("out", "resume", "force")})
    r = fit(TrainConfig(**options), run)
    click.echo(f"best epoch {r['best_epoch']} (val AUROC {r['best']['val_auroc']:.4f}); wall time "
               f"{r['wall_time_s'] / 60:.1f} min; checkpoint {Path(run.out) / 'model.safetensors'}")


# Defaults: evaluate()'s parameters (ConfigDefaults).
@click.command(cls=ConfigDefaults, config="pneumo_edge.train.evaluate:evaluate")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Same data the checkpoint was trained on.")
@click.option("--out", help="Output folder (default: CHECKPOINT/eval).")
@click.option("--target-sensitivity", type=float, help="Operating point on validation (default: the checkpoint's).")
@click.option("--bootstrap", "n_bootstrap", type=int, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--ledger", show_default=True, help="Append one line per test-split read here; '' disables.")
@click.option("--note", help="Free text for the ledger line.")
@click.option("--rule-commit", help="Commit that fixed the recipe-selection rule, recorded in the ledger line.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out.")
@quiet_option
@friendly
def evaluate(checkpoint, data, out, target_sensitivity, n_bootstrap, ledger, note, rule_commit, force) -> None:
    """Calibrate on validation, then score the test split once (metrics, CIs, plots, ledger)."""
    from pneumo_edge.train.evaluate import (
        evaluate,  # torch: training side only, kept off the light install
    )

    out = out or str(Path(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent) / "eval")
    evaluate(checkpoint=checkpoint, data=data, out=out, target_sensitivity=target_sensitivity, n_bootstrap=n_bootstrap,
             ledger=ledger or None, force=force, note=note, progress=True, rule_commit=rule_commit)
    click.echo(f"wrote {out}/results.json, report.md and plots")


# Defaults: GateConfig's fields and export()'s parameters (ConfigDefaults).
@click.command(cls=ConfigDefaults, config="pneumo_edge.bundle.export:GateConfig,pneumo_edge.bundle.export:export")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, help="Bundle folder.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Data whose test split the gates run on.")
@click.option("--results", type=click.Path(file_okay=False), help="evaluate's output folder: its operating point is used.")
@click.option("--atol", type=float, show_default=True, help="Max |delta probability| PyTorch vs ONNX.")
@click.option("--int8/--no-int8", show_default=True, help="Also write model.int8.onnx.")
@click.option("--min-int8-agreement", "int8_min_agreement", type=float, show_default=True,
              help="Min fraction of test labels INT8 must share with fp32.")
@click.option("--max-int8-auroc-delta", "int8_max_auroc_delta", type=float, show_default=True,
              help="Max ROC-AUC the INT8 file may lose against fp32.")
@click.option("--min-int8-heatmap-corr", "heatmap_int8_min_corr", type=float, show_default=True,
              help="Min median correlation of the INT8 file's heat maps with the fp32 file's.")
@click.option("--calib-images", type=int, show_default=True, help="Training images for INT8 calibration.")
@click.option("--guard/--no-guard", show_default=True, help="Fit the out-of-distribution guard.")
@click.option("--population-others", type=click.Path(exists=True, file_okay=False),
              help="Films of another population (e.g. ../shared/data/site_nih, adults): the guard's population check "
                   "is fitted on half its patients and measured on the rest (population.json).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out.")
@quiet_option
@friendly
def export(checkpoint, out, data, results, atol, int8, int8_min_agreement, int8_max_auroc_delta,
           heatmap_int8_min_corr, calib_images, guard, population_others, force) -> None:
    """Export to ONNX (+ INT8) with metadata, and gate on metric parity over the test split."""

    from pneumo_edge.bundle.export import (
        GateConfig,  # torch: training side only, kept off the light install
        export,  # torch: training side only, kept off the light install
    )
    from pneumo_edge.bundle.report import (
        write_model_card,  # torch: training side only, kept off the light install
    )

    t0 = time.perf_counter()
    gate = GateConfig(atol=atol, int8_min_agreement=int8_min_agreement, int8_max_auroc_delta=int8_max_auroc_delta,
                      heatmap_int8_min_corr=heatmap_int8_min_corr)
    try:
        r = export(checkpoint=checkpoint, out=out, data=data, gate=gate, int8=int8, calib_images=calib_images,
                   results=results, force=force, progress=True, guard=guard, population_others=population_others)
    finally:
        parity = Path(out) / PARITY
        if parity.exists():  # the card states the gates' verdict, failed or passed
            write_model_card(out)
            click.echo(f"parity report: {parity}")
    for name, mb in r["sizes_mb"].items():
        click.echo(f"wrote {Path(out) / name}  ({mb} MB)")
    f = r["fp32"]
    click.echo(f"parity PASSED on {f['n']} test images: max |delta prob| {f['max_abs_prob_diff']:.2e}, "
               f"labels agree {f['label_agreement']:.2%}"
               + (f"; INT8 agreement {r['int8']['label_agreement']:.2%}, delta AUROC {r['int8']['roc_auc_delta']:+.4f}"
                  if "int8" in r else ""))
    click.echo(f"done in {time.perf_counter() - t0:.1f}s. Next: pneumo-edge infer ./xrays --model {Path(out) / 'model.onnx'}")

