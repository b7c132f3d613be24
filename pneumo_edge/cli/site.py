"""A model at a site: validate, calibrate, monitor (the light install)."""

from __future__ import annotations

from pathlib import Path

import click

from pneumo_edge.cli.common import (
    MODEL_HELP,
    ConfigDefaults,
    folder_run_options,
    friendly,
    no_traceback,
)
from pneumo_edge.site.adapt import REPORT, AdaptConfig, run_head_refit
from pneumo_edge.site.calibrate import CalibrateConfig, render_summary
from pneumo_edge.site.calibrate import calibrate as run
from pneumo_edge.site.monitoring import monitor_rows


# Defaults: ValidateConfig's fields (ConfigDefaults); each option is named after its field.
@click.command(cls=ConfigDefaults, config="pneumo_edge.site.validate:ValidateConfig")
@click.argument("folder")
@click.option("--model", help=MODEL_HELP)
@click.option("--split", help="Use this split of a dataset root laid out {train,val,test}/{NORMAL,PNEUMONIA}/, e.g. test.")
@click.option("--out", show_default=True, help="Output folder: metrics.json, predictions.csv and the plots.")
@click.option("--guard/--no-guard", show_default=True,
              help="Apply the file's out-of-distribution guard; rejected images are counted apart from the metrics.")
@click.option("--bootstrap", "n_bootstrap", type=int, show_default=True,
              help="Bootstrap resamples for the 95% intervals; 0 skips them.")
@click.option("--auc-floor", type=float, show_default=True,
              help="The verdict: fit only if the ROC-AUC interval's lower end reaches this.")
@click.option("--max-refused", type=float, show_default=True,
              help="The verdict: fit only if the guard refuses no more than this share of the films.")
@folder_run_options
def validate(**options) -> None:
    """Score an exported ONNX model (fp32 or INT8) on labelled X-rays, with its own threshold and guard.

    FOLDER holds NORMAL/ and PNEUMONIA/ (or is a dataset root: add --split test). Writes metrics
    with 95% intervals (resampling patients when file names carry them), predictions.csv and ROC,
    precision-recall, confusion-matrix and reliability plots into --out.
    """
    from pneumo_edge.site.validate import (  # here, not at the top: the name is taken in this module
        ValidateConfig,
        render_summary,
        validate,
    )

    r = validate(ValidateConfig(**options, progress=True))
    click.echo(render_summary(r))
    click.echo(f"wrote {options['out']}/metrics.json, predictions.csv, {', '.join(r['plots'])}")


# Defaults: CalibrateConfig's fields (ConfigDefaults); each option is named after its field.
@click.command(cls=ConfigDefaults, config="pneumo_edge.site.calibrate:CalibrateConfig")
@click.argument("folder")
@click.option("--model", help="Bundle folder (each of its ONNX files is calibrated) or one .onnx file "
                              "(default: the shipped export/model.onnx).")
@click.option("--out", required=True, help="Folder for the new bundle: the restamped ONNX file(s) and calibration.json.")
@click.option("--target-sensitivity", type=float, show_default=True, help="Sensitivity the threshold must guarantee.")
@click.option("--confidence", type=float, show_default=True, help="Confidence of the guarantee (one-sided).")
@click.option("--count", type=click.Choice(["patients", "films"]), show_default=True,
              help="The guarantee's trials: positive patients (each by its lowest film; exact when a patient has "
                   "several films) or positive films (needs fewer films; optimistic when patients have several).")
@click.option("--site", help="Label recorded for this site (default: the folder's name).")
@click.option("--refit-temperature", is_flag=True,
              help="Refit the temperature on the site's films; kept only if it lowers held-out NLL.")
@click.option("--min-specificity", type=float, show_default=True,
              help="Refuse a bundle whose guaranteed threshold leaves less specificity than this on the site's films.")
@click.option("--accept-low-specificity", is_flag=True,
              help="Write the bundle even below --min-specificity; its provenance record says so.")
@click.option("--split", help="Use this split of a dataset root laid out {train,val,test}/{NORMAL,PNEUMONIA}/.")
@folder_run_options
def calibrate(**options) -> None:
    """Set the operating point on a site's labelled films (NORMAL/ + PNEUMONIA/) with a sensitivity guarantee.

    The threshold is the largest whose exact one-sided lower confidence bound on sensitivity reaches the
    target; the new bundle holds the same graphs and guard with the new operating point and its provenance.
    """
    r = run(CalibrateConfig(**options, progress=True))
    click.echo(render_summary(r))
    click.echo(f"wrote {options['out']}: {', '.join(f['file'] for f in r['files'])}, calibration.json")


@click.command()
@click.argument("rows", type=click.Path(exists=True))
@click.option("--model", help=MODEL_HELP + " Its metadata holds the monitoring reference.")
@click.option("--out", default="monitor.png", show_default=True, help="The PNG; a JSON summary is written beside it.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@friendly
@no_traceback
def monitor(rows, model, out, force) -> None:
    """Replay the drift monitor over infer's rows (ROWS.csv or ROWS.parquet), in order, and draw it over time."""
    r = monitor_rows(rows, model, out, force)
    drift = (f"statistic {r['statistic']:.4f} (band {r['alarm_threshold']:.4f})" if r.get("statistic") is not None
             else r.get("drift", "unavailable"))
    first = f", first alarm at image {r['first_alarm_at']}" if r["first_alarm_at"] else ", no alarm"
    click.echo(f"{r['images']} scored rows: last window positive rate {r['positive_rate']:.3f}, refusal rate "
               f"{r['refusal_rate']:.3f}, {drift}, {r['alarm_trips']} alarm trip(s){first}")
    click.echo(f"wrote {out} and {Path(out).with_suffix('.json')}")



# Defaults: AdaptConfig's fields (ConfigDefaults); each option is named after its field.
@click.command(cls=ConfigDefaults, config="pneumo_edge.site.adapt:AdaptConfig")
@click.argument("folder")
@click.option("--model", help="The parent bundle folder (model.onnx and model.int8.onnx; default: the shipped one).")
@click.option("--out", required=True, help="Folder for the site's bundle and adaptation.json.")
@click.option("--site", help="Label recorded for this site (default: the folder's name).")
@click.option("--data", help="Home data (as train --data): home training films replayed in the fit, home "
                             "validation measured ([train] extra).")
@click.option("--fine-tune", is_flag=True, help="Fine-tune the PyTorch twin instead of refitting the head "
                                                "([train] extra; needs --data).")
@click.option("--seed", type=int, show_default=True, help="Seed of the patient split.")
@click.option("--fit-fraction", type=float, show_default=True, help="Share of the patients that fit.")
@click.option("--calibrate-fraction", type=float, show_default=True,
              help="Share of the patients that set the threshold; the rest is held out for the report.")
@click.option("--target-sensitivity", type=float, show_default=True, help="Sensitivity the threshold must guarantee.")
@click.option("--confidence", type=float, show_default=True, help="Confidence of the guarantee (one-sided).")
@click.option("--bootstrap", "n_bootstrap", type=int, show_default=True, help="Bootstrap resamples for the intervals.")
@folder_run_options
def adapt(**options) -> None:
    """Adapt a bundle to a site's labelled films (NORMAL/ + PNEUMONIA/): a new head, a guaranteed threshold.

    The site's patients are split (fit / calibrate / held out) before any film is scored; the head is refitted
    on the embeddings in numpy and written into both ONNX files (the rest of each graph byte-identical), the
    guard and drift reference refitted, and the held-out patients measured before and after.
    """
    from pneumo_edge.site.adaptreport import (
        render_summary,  # here, not at the top: the name is taken in this module
    )

    cfg = AdaptConfig(**options, progress=True)
    if cfg.fine_tune:
        from pneumo_edge.train.adapt_tune import fine_tune  # the [train] extra: torch

        r = fine_tune(cfg)
    else:
        r = run_head_refit(cfg)
    click.echo(render_summary(r))
    click.echo(f"wrote {options['out']}: {', '.join(r['files'])}, {REPORT}")
