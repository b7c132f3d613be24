"""The `pneumo-edge` command: a thin click layer over the library.

Every PneumoEdgeError becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .edge.errors import PneumoEdgeError

DEFAULT_DATA = "hf-vision/chest-xray-pneumonia"  # every --data; = data.DEFAULT_HUB_DATASET (not imported: start-up)
MODEL_HELP = ("Model to run: an .onnx file (fp32 or INT8), a bundle folder or a hub id 'user/repo' "
              "(default: the shipped export/model.onnx).")
SHOW_ROWS = 20  # infer prints one line per input up to this many without -v


def friendly(fn):
    """Turn library errors into `error: ...` and a non-zero exit, never a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PneumoEdgeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def no_traceback(fn):
    """For commands that handle user files: an unexpected error is one line and exit 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PneumoEdgeError, click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - a file system surprise, reported as such
            raise PneumoEdgeError(f"unexpected {e.__class__.__name__}: {e}") from e

    return wrapper


def model_or_shipped_int8(model: str | None) -> str:
    """--model as given (file, bundle folder or hub id), else the shipped bundle's INT8 file: what the benches time."""
    from .edge.api import resolve_model
    from .edge.targets import INT8

    return str(resolve_model(model) if model else resolve_model(None).parent / INT8.file)


def quiet_option(fn):
    """`-q/--quiet` for a long command: no bar, heartbeat or step line; results and errors still print."""

    @functools.wraps(fn)
    def wrapper(*args, quiet: bool = False, **kwargs):
        from .edge.progress import set_quiet

        before = set_quiet(quiet)
        try:
            return fn(*args, **kwargs)
        finally:  # one quiet command leaves the next one (in the same process: the API, tests) as it was
            set_quiet(before)

    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress bar (on a terminal) or heartbeat lines (elsewhere); results and errors "
                             "still print.")(wrapper)


def folder_run_options(fn):
    """The options and wrappers of a command that scores a labelled folder into --out (validate, calibrate)."""
    stack = (click.option("--patient-pattern", help="Regex for the patient id in the file names (its group "
                                                    "'patient', else its first group); patients.csv or metadata.csv "
                                                    "in FOLDER names them first; default: the names pneumo-edge knows."),
             click.option("--batch-size", type=int, show_default=True, help="Images per onnxruntime call."),
             click.option("--workers", type=int, help="Decode threads (default: all cores)."),
             click.option("--force", is_flag=True, help="Write into a non-empty --out."),
             quiet_option, friendly, no_traceback)
    for deco in reversed(stack):  # as if written one above the other, top first
        fn = deco(fn)
    return fn


class ConfigDefaults(click.Command):
    """A command whose option defaults come from the library: the same-named fields of config dataclasses, or
    parameters of library functions ("module:Name", several joined by commas, the first that names it wins).

    Read when the command parses its arguments or shows its help, not when the CLI is imported:
    the config's module may import torch, which `pneumo-edge infer` must never load.
    """

    def __init__(self, *args, config: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = config

    def library_defaults(self) -> dict:
        import dataclasses
        import importlib
        import inspect

        defaults: dict = {}
        for source in reversed(self.config.split(",")):
            module, name = source.split(":")
            obj = getattr(importlib.import_module(module, __package__), name)
            if dataclasses.is_dataclass(obj):
                found = {f.name: f.default for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING}
            else:
                found = {k: p.default for k, p in inspect.signature(obj).parameters.items()
                         if p.default is not inspect.Parameter.empty}
            defaults.update(found)
        return defaults

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        defaults = self.library_defaults()
        unset = click.Option(["--unset"]).default  # what click holds for an option given no default
        for param in self.params:  # a library None ("not given") leaves an option's own default alone
            own = param.default is not None and param.default is not unset
            if param.name in defaults and not (defaults[param.name] is None and own):
                param.default = defaults[param.name]
        return super().parse_args(ctx, args)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pneumo-edge")
def main() -> None:
    """Pneumonia-vs-normal chest X-ray classifier: train, evaluate, export, infer, explain, bench."""


# Defaults: TrainConfig's fields (the recipe) and RunConfig's (this run); each option is named after its field.
@main.command(cls=ConfigDefaults, config=".train:TrainConfig,.train:RunConfig")
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
    from .train import RunConfig, TrainConfig, fit

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
@main.command(cls=ConfigDefaults, config=".evaluate:evaluate")
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
    from pathlib import Path

    from .evaluate import evaluate

    out = out or str(Path(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent) / "eval")
    evaluate(checkpoint=checkpoint, data=data, out=out, target_sensitivity=target_sensitivity, n_bootstrap=n_bootstrap,
             ledger=ledger or None, force=force, note=note, progress=True, rule_commit=rule_commit)
    click.echo(f"wrote {out}/results.json, report.md and plots")


# Defaults: GateConfig's fields and export()'s parameters (ConfigDefaults).
@main.command(cls=ConfigDefaults, config=".onnx_export:GateConfig,.onnx_export:export")
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
@click.option("--force", is_flag=True, help="Write into a non-empty --out.")
@quiet_option
@friendly
def export(checkpoint, out, data, results, atol, int8, int8_min_agreement, int8_max_auroc_delta,
           heatmap_int8_min_corr, calib_images, guard, force) -> None:
    """Export to ONNX (+ INT8) with metadata, and gate on metric parity over the test split."""
    import time
    from pathlib import Path

    from .edge.targets import PARITY
    from .onnx_export import GateConfig
    from .onnx_export import export
    from .report import write_model_card

    t0 = time.perf_counter()
    gate = GateConfig(atol=atol, int8_min_agreement=int8_min_agreement, int8_max_auroc_delta=int8_max_auroc_delta,
                      heatmap_int8_min_corr=heatmap_int8_min_corr)
    try:
        r = export(checkpoint=checkpoint, out=out, data=data, gate=gate, int8=int8, calib_images=calib_images,
                   results=results, force=force, progress=True, guard=guard)
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


# Defaults: InferConfig's fields (ConfigDefaults; edge.infer imports no torch).
@main.command(cls=ConfigDefaults, config=".edge.infer:InferConfig")
@click.argument("paths", nargs=-1)
@click.option("--model", "model_path", help=MODEL_HELP)
@click.option("--out", "out_csv", default=None,
              help="CSV with one row per input; '-' writes it to standard output. With --engine ray, a name not "
                   "ending in .csv is a Parquet dataset folder. [default: predictions.csv; with --engine ray: "
                   "predictions.parquet]")
@click.option("--json", "json_path", type=click.Path(), help="Also write the rows as JSON Lines here.")
@click.option("--resume", is_flag=True,
              help="Keep the rows already in --out (and --json), re-try error and torn rows, append the rest.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out (and --json).")
@click.option("--batch-size", type=int, show_default=True, help="Images per onnxruntime call.")
@click.option("--workers", type=int, help="Decode threads (default: all cores).")
@click.option("--guard/--no-guard", show_default=True,
              help="Give out-of-distribution inputs status 'rejected' (label REJECTED_OOD) instead of a class.")
@click.option("-v", "--verbose", is_flag=True, help=f"Print one line per input even when there are over {SHOW_ROWS}.")
@click.option("--heatmaps", "heatmaps", type=click.Path(file_okay=False),
              help="Also write one heat-map overlay PNG (evidence for PNEUMONIA, edge.heatmap.FOLDER) per classified "
                   "input into this folder.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: threads on this machine. ray: Ray Data (pip install 'pneumo-edge[cluster]'), same rows.")
@click.option("--address", help="--engine ray: a running cluster ('auto' or ray://host:10001); default: local Ray.")
@click.option("--manifest", help="--engine ray: a CSV or Parquet file whose 'path' column lists inputs "
                                 "(local paths or URIs such as s3://bucket/x.dcm).")
@click.option("--actors", type=int, help="--engine ray: classifier actors (default: CPUs / --threads-per-actor).")
@click.option("--threads-per-actor", type=int,
              help="--engine ray: onnxruntime threads inside each actor [default: 1].")
@quiet_option
@friendly
@no_traceback
def infer(paths, model_path, out_csv, json_path, resume, force, batch_size, workers, guard, verbose,
          heatmaps, engine, address, manifest, actors, threads_per_actor) -> None:
    """Classify X-ray files and folders with onnxruntime (JPEG, PNG, BMP, TIFF, DICOM).

    Each row has the probability, the model's stored threshold, the label, the guard score and an
    'ood' flag; an input the guard refused has status 'rejected'. One line per input is printed
    when there are at most 20 inputs (always with -v).

    Exit code 0 when every input was classified, 1 when error rows remain in --out
    (every other input was classified, and every input has a row) or when nothing at
    all was classified (every input skipped, rejected or failed), 2 for usage errors
    (an existing or locked --out, an unusable model, ...).
    """
    from .edge.api import resolve_model
    from .edge.infer import EXIT_SOME_FAILED, InferConfig, predict_paths
    from .edge.inputs import printable
    from .edge.outputs import SCORED, STDOUT, Outputs
    from .edge.model import EdgeModel

    if engine == "local" and (manifest or address or actors or threads_per_actor):
        raise click.UsageError("--manifest, --address, --actors and --threads-per-actor go with --engine ray")
    if engine == "ray" and workers:
        raise click.UsageError("--workers sets the local engine's decode threads; with --engine ray use --actors")
    if not paths and not manifest:
        raise click.UsageError("name at least one file or folder (or, with --engine ray, a --manifest)")
    out_csv = out_csv or ("predictions.parquet" if engine == "ray" else "predictions.csv")
    to_stderr = out_csv == STDOUT  # then standard output carries the CSV alone
    say = functools.partial(click.echo, err=to_stderr)
    where = "standard output" if to_stderr else printable(out_csv)

    def echo(row: dict) -> None:
        path = printable(row["path"])
        if row["status"] in SCORED:
            score = f"  guard {row['guard_score']:.4f}" if row.get("guard_score") is not None else ""
            why = f"  ({printable(row['guard_reason'] or row['error'])})" if row.get("guard_reason") or row.get("error") else ""
            say(f"{row['label']:<13} p={row['probability']:.4f}{score}  {path}{why}")
        else:
            say(f"{row['status'].upper():<13} {printable(row['error'])}  {path}")

    held: list[dict] = []  # without -v: printed at the end if there are few

    def hold(row: dict) -> None:
        if len(held) <= SHOW_ROWS:
            held.append(row)

    if engine == "ray":
        from .edge.cluster import ClusterConfig, open_outputs, predict_cluster

        if heatmaps:
            raise click.UsageError("--heatmaps runs with the local engine only")
        with open_outputs(out_csv, json_path, resume, force) as outputs:  # before the model loads
            model = EdgeModel(resolve_model(model_path), threads=1)
            cfg = ClusterConfig(address=address, actors=actors, threads_per_actor=threads_per_actor or 1,
                                batch_size=batch_size, guard=guard)
            s = predict_cluster(list(paths), model, outputs, cfg, manifest=manifest,
                                echo=echo if verbose else hold)
    else:
        with Outputs(out_csv, json_path, resume, force) as outputs:  # before the model loads: refuse early
            model = EdgeModel(resolve_model(model_path))
            cfg = InferConfig(batch_size=batch_size, workers=workers, guard=guard, heatmaps=heatmaps)
            s = predict_paths(list(paths), model, outputs, cfg, echo=echo if verbose else hold)
    for row in held if len(held) <= SHOW_ROWS else ():
        echo(row)
    labels = ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items())) or "nothing"
    notes = [f"{s.n_skipped_resume} already done" if s.n_skipped_resume else "",
             f"{s.n_duplicates} duplicate(s) ignored" if s.n_duplicates else "",
             f"{s.n_incomplete} incomplete row(s) re-done" if s.n_incomplete else ""]
    say(f"{s.n_files} inputs: {labels}" + "".join(f"; {n}" for n in notes if n)
               + f"; {s.images_per_s:.1f} images/s. Rows in {where}"
               + (f"; heat maps in {printable(str(heatmaps))}" if heatmaps else ""))
    if s.n_failed or s.n_old_errors:
        old = f" (and {s.n_old_errors} error row(s) from earlier runs)" if s.n_old_errors else ""
        click.echo(f"{s.n_failed} file(s) could not be classified{old}: see the 'error' column; "
                   "--resume re-tries them", err=True)
    nothing = not any(s.counts[label] for label in model.labels) and not s.n_skipped_resume
    if nothing:
        click.echo("nothing was classified: every input was skipped, rejected by the guard or failed", err=True)
    if s.n_failed or s.n_old_errors or nothing:
        sys.exit(EXIT_SOME_FAILED)


# Defaults: ValidateConfig's fields (ConfigDefaults); each option is named after its field.
@main.command(cls=ConfigDefaults, config=".validate:ValidateConfig")
@click.argument("folder")
@click.option("--model", help=MODEL_HELP)
@click.option("--split", help="Use this split of a dataset root laid out {train,val,test}/{NORMAL,PNEUMONIA}/, e.g. test.")
@click.option("--out", show_default=True, help="Output folder: metrics.json, predictions.csv and the plots.")
@click.option("--guard/--no-guard", show_default=True,
              help="Apply the file's out-of-distribution guard; rejected images are counted apart from the metrics.")
@click.option("--bootstrap", "n_bootstrap", type=int, show_default=True,
              help="Bootstrap resamples for the 95% intervals; 0 skips them.")
@folder_run_options
def validate(**options) -> None:
    """Score an exported ONNX model (fp32 or INT8) on labelled X-rays, with its own threshold and guard.

    FOLDER holds NORMAL/ and PNEUMONIA/ (or is a dataset root: add --split test). Writes metrics
    with 95% intervals (resampling patients when file names carry them), predictions.csv and ROC,
    precision-recall, confusion-matrix and reliability plots into --out.
    """
    from .validate import ValidateConfig, render_summary, validate

    r = validate(ValidateConfig(**options, progress=True))
    click.echo(render_summary(r))
    click.echo(f"wrote {options['out']}/metrics.json, predictions.csv, {', '.join(r['plots'])}")


@main.command()
@click.argument("model", required=False)
@friendly
def info(model) -> None:
    """What a model file carries: labels, preprocessing, decision rule, guard, quantization.

    MODEL: an .onnx file, a bundle folder or a hub id 'user/repo' (default: the shipped model).
    """
    from .edge.api import resolve_model
    from .edge.meta import describe
    from .edge.model import EdgeModel

    loaded = EdgeModel(resolve_model(model), threads=1)  # checks the metadata and guard like infer does
    size = f"{loaded.path.stat().st_size / 1e6:.2f} MB"
    rows = [("file", f"{loaded.path}  ({size})"), *describe(loaded.meta)]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    about = loaded.runtime.description  # the graph's doc_string, as other ONNX tools show it
    if about:
        import textwrap

        click.echo("\n" + textwrap.fill(" ".join(about.split()), width=100))


# Defaults: CalibrateConfig's fields (ConfigDefaults); each option is named after its field.
@main.command(cls=ConfigDefaults, config=".calibrate:CalibrateConfig")
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
@click.option("--split", help="Use this split of a dataset root laid out {train,val,test}/{NORMAL,PNEUMONIA}/.")
@folder_run_options
def calibrate(**options) -> None:
    """Set the operating point on a site's labelled films (NORMAL/ + PNEUMONIA/) with a sensitivity guarantee.

    The threshold is the largest whose exact one-sided lower confidence bound on sensitivity reaches the
    target; the new bundle holds the same graphs and guard with the new operating point and its provenance.
    """
    from .calibrate import CalibrateConfig, calibrate as run, render_summary

    r = run(CalibrateConfig(**options, progress=True))
    click.echo(render_summary(r))
    click.echo(f"wrote {options['out']}: {', '.join(f['file'] for f in r['files'])}, calibration.json")


# Defaults: AdaptConfig's fields (ConfigDefaults); each option is named after its field.
@main.command(cls=ConfigDefaults, config=".adapt:AdaptConfig")
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
    from .adapt import AdaptConfig, REPORT, run_head_refit
    from .adaptreport import render_summary

    cfg = AdaptConfig(**options, progress=True)
    if cfg.fine_tune:  # the [train] extra
        from .adapt_tune import fine_tune

        r = fine_tune(cfg)
    else:
        r = run_head_refit(cfg)
    click.echo(render_summary(r))
    click.echo(f"wrote {options['out']}: {', '.join(r['files'])}, {REPORT}")


@main.command("bench-adapt")
@click.argument("site")
@click.option("--bundle", default="export", show_default=True, help="The parent bundle folder.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Home data (replayed; home validation).")
@click.option("--out", default="bench/results/adapt.json", show_default=True, help="The result file.")
@click.option("--work", default="bench/adapt", show_default=True, help="Folder for the adapted bundles.")
@click.option("--fine-tune", is_flag=True, help="Also the fine-tune depth (about 10 minutes on 2 cores).")
@click.option("--reuse", multiple=True, type=(click.Choice(["head refit", "fine-tune"]), click.Path(exists=True)),
              help="METHOD FOLDER: summarise an adapted bundle written before instead of running it again.")
@click.option("--force", is_flag=True, help="Overwrite the bundles in --work.")
@quiet_option
@friendly
def bench_adapt(site, bundle, data, out, work, fine_tune, reuse, force) -> None:
    """Adapt BUNDLE to the labelled SITE folder and hold the result against the targets (bench/results/adapt.json)."""
    from .adapt_bench import bench_adapt as run, render_bench

    r = run(site, bundle, data, out, work, fine_tune, dict(reuse), force)
    click.echo(render_bench(r))
    click.echo(f"wrote {out}")


@main.command("monitor-reference")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="The data the bundle's checkpoint was trained on.")
@click.option("--out", type=click.Path(file_okay=False), help="Write the restamped files here instead of in place.")
@click.option("--force", is_flag=True, help="Restamp the files in BUNDLE in place (or overwrite those in --out).")
@quiet_option
@friendly
@no_traceback
def monitor_reference(bundle, data, out, force) -> None:
    """Fit the drift monitor's reference on validation and stamp it into each ONNX file's metadata.

    Graph bytes are copied unchanged and outputs are checked bit-identical before a file is replaced.
    """
    from .monitoring import stamp_references

    r = stamp_references(bundle, data, out=out, force=force)
    for name, f in r["files"].items():
        click.echo(f"{name}: reference on {f['n_reference']} validation films, alarm band {f['alarm_threshold']:.4f} "
                   f"({f['false_alarm_rate']:.0%} false alarms per {f['stream_images']} images), graph bytes "
                   f"identical, outputs bit-identical on {f['outputs_bit_identical_on']} films")


@main.command("heatmap-parity")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="The data the bundle was exported with.")
@quiet_option
@friendly
@no_traceback
def heatmap_parity(bundle, data) -> None:
    """Re-run export's gate for the shipped heat map on BUNDLE's files, updating parity.json and parity.md.

    For a bundle exported before the shipped method changed; the model files are not touched. Exit 1 if
    the gate fails.
    """
    from .onnx_export import regate_heatmap

    r = regate_heatmap(bundle, data)
    h = r["heatmap"]
    click.echo(f"{h['method']} on {h['n']} films: ONNX vs twin min {h['onnx_vs_twin']['min']:.4f}"
               + (f", INT8 vs fp32 mean {h['int8_vs_fp32']['mean']:.4f}" if "int8_vs_fp32" in h else "")
               + f"; parity {'PASSED' if r['passed'] else 'FAILED: ' + '; '.join(r['failures'])}")
    if not r["passed"]:
        raise SystemExit(1)


@main.command("guard-polarity")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="The data the bundle's checkpoint was trained on.")
@click.option("--force", is_flag=True, help="Required: the ONNX files in BUNDLE are restamped in place.")
@quiet_option
@friendly
@no_traceback
def guard_polarity(bundle, data, force) -> None:
    """Add the inverted-grey-level check to the guard of a bundle exported before it existed.

    Fitted on the bundle's training films, thresholded on its validation films; graph bytes are copied
    unchanged and outputs are checked bit-identical before a file is replaced. Run `monitor-reference`
    afterwards: the guard scores it summarises change.
    """
    from .ood import stamp_polarity

    r = stamp_polarity(bundle, data, force=force)
    t = r["polarity"]["threshold"]
    for name, f in r["files"].items():
        v = f["validation_rejected"]
        click.echo(f"{name}: polarity threshold {t:.4g}; validation refused: clean {v['clean']:.2%}, "
                   f"inverted grey levels {v['inverted grey levels']:.2%}")
    click.echo(f"the guard scores changed, so the drift reference was removed: refit it with `pneumo-edge "
               f"monitor-reference {bundle} --data {data} --force`")


@main.command("site-sim")
@click.option("--bundle", default="export", show_default=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle whose model.onnx, config.json (validation split) and guard are used.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="The data the bundle's checkpoint was trained on.")
@click.option("--out", default="bench/results", show_default=True, help="Folder for site-calibration.json and .md.")
@click.option("--splits", type=int, default=200, show_default=True, help="Random splits per site and size.")
@click.option("--size", "sizes", type=int, multiple=True, help="Films per simulated site (repeatable; default 100, 200, 400).")
@click.option("--test-read", is_flag=True,
              help="Instead: one read of the test split played as a site and streamed through the drift monitor "
                   "(a line in --ledger; changes nothing that ships).")
@click.option("--ledger", default="test_ledger.jsonl", show_default=True, help="With --test-read: the test ledger.")
@click.option("--cache", default="runs/site-sim", show_default=True,
              help="Folder keeping the validation scores (by the model file's digest): a re-run only resamples them.")
@quiet_option
@friendly
def site_sim(bundle, data, out, splits, sizes, test_read, ledger, cache) -> None:
    """Site calibration simulated on validation: each declared perturbation as a site, calibrated on half."""
    from .sitesim import SIZES, render_sites, render_test_read, simulate_sites, test_read as read_test

    if test_read:
        click.echo(render_test_read(read_test(bundle, data, out, ledger=ledger)))
        click.echo(f"wrote {out}/test-read-simulation.json, .md and monitoring-test.png; one line in {ledger}")
        return
    r = simulate_sites(bundle, data, out, splits=splits, sizes=tuple(sizes) or SIZES, cache=cache or None)
    click.echo(render_sites(r))
    click.echo(f"wrote {out}/site-calibration.json and site-calibration.md")


@main.command()
@click.argument("rows", type=click.Path(exists=True))
@click.option("--model", help=MODEL_HELP + " Its metadata holds the monitoring reference.")
@click.option("--out", default="monitor.png", show_default=True, help="The PNG; a JSON summary is written beside it.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@friendly
@no_traceback
def monitor(rows, model, out, force) -> None:
    """Replay the drift monitor over infer's rows (ROWS.csv or ROWS.parquet), in order, and draw it over time."""
    from .monitoring import monitor_rows

    r = monitor_rows(rows, model, out, force)
    drift = (f"statistic {r['statistic']:.4f} (band {r['alarm_threshold']:.4f})" if r.get("statistic") is not None
             else r.get("drift", "unavailable"))
    first = f", first alarm at image {r['first_alarm_at']}" if r["first_alarm_at"] else ", no alarm"
    click.echo(f"{r['images']} scored rows: last window positive rate {r['positive_rate']:.3f}, refusal rate "
               f"{r['refusal_rate']:.3f}, {drift}, {r['alarm_trips']} alarm trip(s){first}")
    click.echo(f"wrote {out} and {Path(out).with_suffix('.json')}")


@main.command()
@click.option("--out", required=True, type=click.Path(), help="Folder to write: the page, its JavaScript, WASM, model.")
@click.option("--model", default=None,
              help="An .onnx file or bundle folder (default: the shipped export/model.int8.onnx).")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@friendly
def page(out, model, force) -> None:
    """The web page as static files that classify in the browser: no server, nothing uploaded.

    Host the folder with any static file server (python3 -m http.server inside it); the model runs
    in onnxruntime-web with the threshold, preprocessing and guard read from the ONNX file itself.
    """
    from .edge.page import write_page

    r = write_page(out, model=model, force=force)
    click.echo(f"wrote {r['out']}: {r['files']} files, {r['bytes'] / 1e6:.1f} MB (model {Path(r['model']).name})")


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--bundle", default=None, help="Folder with model.safetensors + config.json (default: the shipped export/).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Explain an .onnx file with onnxruntime alone (forward passes only; no torch).")
@click.option("--out", required=True, help="Folder for the overlay PNGs and the contact sheet.")
@click.option("--layer", default=None,
              help="Grad-CAM of the decided class at this layer instead (PyTorch twin only; default: the shipped "
                   "map, the same as --model draws).")
@click.option("--target", type=click.Choice(["NORMAL", "PNEUMONIA"], case_sensitive=False),
              help="Explain this class instead of the predicted one.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out.")
@click.option("--guard/--no-guard", default=True, show_default=True,
              help="Draw no heat map for an image the out-of-distribution guard refuses (it says why instead).")
@quiet_option
@friendly
@no_traceback
def explain(images, bundle, model_path, out, layer, target, force, guard) -> None:
    """Heat maps of the evidence for PNEUMONIA (occlusion sensitivity), on an .onnx file (--model) or the twin.

    One overlay per input (inputs sharing a file name get a short hash suffix); a file that
    cannot be explained is one error line and the others go on (exit 1). An image the bundle's guard
    refuses gets a line saying why and no heat map: a map of an image the model should not judge
    would look like evidence. With --model (or a --bundle that names an .onnx file) only onnxruntime
    runs, no torch; on the twin the same method runs on its forward passes. The method is the one
    `pneumo-edge heatmap-study` picked (bench/heatmaps/results.md).
    """
    from .edge.inputs import printable
    from .edge.model import EdgeModel, default_model_path

    if model_path is None and bundle and bundle.lower().endswith(".onnx"):
        model_path, bundle = bundle, None
    if model_path is not None:
        from .edge.heatmap import explain as explain_onnx

        if bundle or layer is not None:
            raise click.UsageError("--bundle and --layer are for the PyTorch twin; --model explains an .onnx file")
        records = explain_onnx(images=list(images), model=EdgeModel(model_path), out=out, target=target, force=force,
                               guard=guard)
    else:
        from .gradcam import explain

        records = explain(images=list(images), bundle=bundle or default_model_path().parent, out=out, layer=layer,
                          target=target, force=force, guard=guard)
    for r in records:
        if r["status"] == "ok":
            click.echo(f"{printable(r['png'])}: P(pneumonia) {r['probability']:.3f} -> {r['label']}")
        elif r["status"] == "rejected":
            click.echo(f"{printable(r['path'])}: REJECTED_OOD, no heat map: guard: {printable(r['guard_reason'] or '')}",
                       err=True)
        else:
            click.echo(f"{printable(r['path'])}: error: {printable(r['error'])}", err=True)
    ok = sum(r["status"] == "ok" for r in records)
    if ok > 1:
        click.echo(f"contact sheet: {out}/contact_sheet.png")
    if any(r["status"] == "error" for r in records):
        sys.exit(1)


# Defaults: BenchConfig's fields (ConfigDefaults).
@main.command(cls=ConfigDefaults, config=".bench:BenchConfig")
@click.option("--bundle", default=None, help="Bundle folder (default: the shipped export/).")
@click.option("--data", default=DEFAULT_DATA, show_default=True,
              help="Local folder or hub dataset id whose test split is timed; '' times the committed X-rays.")
@click.option("--out", show_default=True, help="Folder for the results table, JSON and plot.")
@click.option("--iters", type=int, show_default=True, help="Timed batch-1 calls per variant.")
@click.option("--batch-iters", type=int, show_default=True, help="Timed batch-16 calls per variant.")
@click.option("--smoke", is_flag=True, help="A few iterations, no end-to-end run: checks the machinery only.")
@click.option("--min-auroc", type=float, help="Fail (exit 4) if any variant's ROC-AUC is lower.")
@click.option("--max-p50-ms", type=float, help="Fail (exit 4) if INT8 batch-1 p50 latency is higher.")
@quiet_option
@friendly
def bench(bundle, data, out, iters, batch_iters, smoke, min_auroc, max_p50_ms) -> None:
    """Latency, throughput and accuracy of PyTorch eager vs onnxruntime fp32 vs INT8."""
    from .bench import BenchConfig, run_benchmark
    from .edge.model import default_model_path

    cfg = BenchConfig(bundle=bundle or str(default_model_path().parent), data=data, out=out,
                      iters=5 if smoke else iters, batch_iters=2 if smoke else batch_iters,
                      warmup=1 if smoke else 10, end_to_end=not smoke, min_auroc=min_auroc, max_p50_ms=max_p50_ms)
    run_benchmark(cfg)


# Defaults: ServeConfig's fields and serve()'s parameters (ConfigDefaults; edge.serve imports no fastapi until it runs).
@main.command(cls=ConfigDefaults, config=".edge.serve:ServeConfig,.edge.serve:serve")
@click.option("--model", "model_path", help="ONNX model, bundle folder or hub id (default: the shipped export/model.onnx).")
@click.option("--host", show_default=True, help="Address to bind; 0.0.0.0 exposes it to the network.")
@click.option("--port", type=int, show_default=True, help="TCP port to listen on.")
@click.option("--workers", type=int, show_default=True, help="Processes, each with its own onnxruntime session.")
@click.option("--threads", type=int, help="onnxruntime threads per worker (default: cores / workers).")
@click.option("--concurrency", type=int, show_default=True, help="Images classified at once per worker.")
@click.option("--queue", type=int, show_default=True, help="Requests waiting per worker before 503 Busy.")
@click.option("--max-upload-mb", type=float, default=50, show_default=True,  # = serve.DEFAULT_MAX_UPLOAD_MB (a test)
              help="Larger uploads get 413.")
@click.option("--guard/--no-guard", show_default=True, help="Refuse out-of-distribution images.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM): serve HTTPS.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--insecure-http", is_flag=True, help="Allow a non-loopback bind without TLS (warned at every start).")
@click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False),
              help="API token file (see `pneumo-edge token`); always used off loopback [default: ~/.config/pneumo-edge/tokens.json].")
@click.option("--allow-host", multiple=True, help="Another Host name clients may use (besides the bind name and loopback).")
@click.option("--per-client", type=int, show_default=True, help="Requests in progress per client address.")
@click.option("--header-timeout", type=float, show_default=True, help="Seconds for a request's headers.")
@click.option("--body-timeout", type=float, show_default=True, help="Seconds for a request's body.")
@friendly
def serve(model_path, host, port, workers, threads, concurrency, queue, max_upload_mb, guard, certfile, keyfile,
          insecure_http, tokens_file, allow_host, per_client, header_timeout, body_timeout) -> None:
    """HTTP service and web page: POST /v1/predict, GET /v1/model, /healthz, / (page), /docs (OpenAPI)."""
    from .edge.access import bind_names, check_bind, is_loopback
    from .edge.serve import ServeConfig, serve
    from .edge.tokens import TokenStore, default_path

    if tokens_file is None and not is_loopback(host):
        tokens_file = str(default_path())
    n_tokens = len(TokenStore(tokens_file).records) if tokens_file else None
    for line in check_bind(host, tls=bool(certfile), insecure_http=insecure_http, tokens=n_tokens):
        click.echo(line, err=True)
    config = ServeConfig(model=model_path, max_upload_bytes=int(max_upload_mb * 1024 * 1024), queue=queue,
                         concurrency=concurrency, threads=threads, guard=guard, tokens=tokens_file,
                         allowed_hosts=(*bind_names(host), *allow_host), per_client=per_client,
                         body_timeout=body_timeout)
    serve(config=config, host=host, port=port, workers=workers, certfile=certfile, keyfile=keyfile,
          insecure_http=insecure_http, header_timeout=header_timeout)


@main.group()
def token() -> None:
    """API tokens for `serve` off loopback: create (shown once), list, revoke. Only hashes are stored."""


def _token_file_option(f):
    return click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False),
                        help="Token file [default: ~/.config/pneumo-edge/tokens.json].")(f)


@token.command("create")
@click.argument("name")
@_token_file_option
@friendly
def token_create(name, tokens_file) -> None:
    """Make a token named NAME and print it once (it is not stored, only its hash)."""
    from .edge.tokens import TokenStore

    store = TokenStore(tokens_file)
    secret = store.create(name)
    click.echo(f"created token '{name}' in {store.path}; it is shown only now:", err=True)
    click.echo(secret)


@token.command("list")
@_token_file_option
@friendly
def token_list(tokens_file) -> None:
    """The tokens' names and creation times."""
    from .edge.tokens import TokenStore

    store = TokenStore(tokens_file)
    for r in store.records:
        click.echo(f"{r.name}\tcreated {r.created}")
    click.echo(f"{len(store.records)} token(s) in {store.path}", err=True)


@token.command("revoke")
@click.argument("name")
@_token_file_option
@friendly
def token_revoke(name, tokens_file) -> None:
    """Remove the token named NAME; a running server refuses it from its next request."""
    from .edge.tokens import TokenStore

    TokenStore(tokens_file).revoke(name)
    click.echo(f"revoked token '{name}'")


# Defaults: NodeConfig's fields (ConfigDefaults).
@main.command(cls=ConfigDefaults, config=".edge.node.service:NodeConfig")
@click.option("--port", type=int, required=True, help="DICOM port to listen on.")
@click.option("--ae-title", required=True, help="This node's AE title (what senders call).")
@click.option("--send-to", "send_to", multiple=True, required=True,
              help="Where each result goes: AET@HOST:PORT (C-STORE) or a DICOMweb base URL https://host/path "
                   "(STOW-RS). Repeat for several destinations.")
@click.option("--spool", required=True, type=click.Path(file_okay=False),
              help="Folder for received instances, queued results, the dead-letter folder and audit.jsonl.")
@click.option("--model", "model_path", help=MODEL_HELP)
@click.option("--host", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--calling-ae", "calling_aes", multiple=True,
              help="Accept associations only from this calling AE title (repeatable; default: any).")
@click.option("--max-attempts", type=int, show_default=True,
              help="Refused sends of one result before it goes to the dead-letter folder.")
@click.option("--retry-after", "retry_after_s", type=float, show_default=True,
              help="Seconds before the first retry; doubles per failure, capped at 30 s.")
@click.option("--guard/--no-guard", show_default=True, help="Refuse out-of-distribution images.")
@click.option("--heatmaps", is_flag=True,
              help="Also send a Secondary Capture of the heat-map overlay ('NOT FOR DIAGNOSIS' burned in) for each "
                   "image the guard accepts.")
@click.option("--links", type=int, show_default=True,
              help="Associations at once to each C-STORE destination (a PACS may allow fewer per caller).")
@quiet_option
@friendly
def listen(port, ae_title, send_to, spool, model_path, host, calling_aes, max_attempts, retry_after_s, guard,
           heatmaps, links) -> None:
    """Receive X-rays by DICOM C-STORE, classify each, and send a DICOM SR per image to --send-to.

    An instance is on disk before C-STORE success is answered; results go out through a durable outbox.
    SIGTERM (or Ctrl-C) stops accepting, finishes what is in hand, flushes and exits 0.
    """
    try:
        from .edge.node.service import NodeConfig, listen as run
    except ImportError as e:
        raise PneumoEdgeError(f"`listen` needs the node extra ({e.name} is missing): pip install \".[node]\"") from None
    run(NodeConfig(port=port, ae_title=ae_title, destinations=list(send_to), spool=spool, model=model_path, host=host,
                   calling_aes=tuple(calling_aes), guard=guard, max_attempts=max_attempts, retry_after_s=retry_after_s,
                   heatmaps=heatmaps, links=links))


# Defaults: MemoryConfig's fields (ConfigDefaults).
@main.command("bench-memory", cls=ConfigDefaults, config=".memory:MemoryConfig")
@click.option("--model", "model_path", help="ONNX model or bundle folder (default: the shipped model).")
@click.option("--out", show_default=True, help="Folder for decode-memory.json.")
@click.option("--files", "at_limit", type=int, show_default=True,
              help="DICOMs at the pixel limit, and as many decompression bombs.")
@quiet_option
@friendly
def bench_memory(model_path, out, at_limit) -> None:
    """Peak memory of `infer` over DICOMs at the pixel limit and decompression bombs, 1 and 2 decode workers."""
    from .memory import MemoryConfig, measure_decode_memory, render

    click.echo(render(measure_decode_memory(MemoryConfig(model=model_path, out=out, at_limit=at_limit, bombs=at_limit))))
    click.echo(f"wrote {out}/decode-memory.json")


@main.command("bench-heatmaps")
@click.option("--bundle", default="export", show_default=True, help="Bundle whose model.int8.onnx and model.onnx are timed.")
@click.option("--images", default="examples/xrays", show_default=True, help="Folder of films (validation or demo films).")
@click.option("--out", default="bench/results/heatmaps.json", show_default=True, help="Result JSON.")
@click.option("--films", "n_films", type=int, default=16, show_default=True, help="Films timed per method and file.")
@quiet_option
@friendly
def bench_heatmaps(bundle, images, out, n_films) -> None:
    """Cost per film of every edge heat-map method, INT8 and fp32, one film at a time."""
    from .heatmap_bench import bench_heatmaps as run, render

    click.echo(render(run(bundle=bundle, images=images, out=out, n_films=n_films)))
    click.echo(f"wrote {out}")


# Defaults: NodeBenchConfig's fields (ConfigDefaults).
@main.command("bench-node", cls=ConfigDefaults, config=".node_bench:NodeBenchConfig")
@click.option("--images", required=True,
              help="Folder with NORMAL/ and PNEUMONIA/ JPEG films (e.g. ../shared/data/chest_xray/train).")
@click.option("--films", "n", type=int, show_default=True, help="Films storescu sends.")
@click.option("--senders", type=int, show_default=True,
              help="storescu processes sending at once (modalities), the films dealt among them.")
@click.option("--model", "model_path", help=MODEL_HELP)
@click.option("--out", show_default=True, help="Folder for node.json (node-N-senders.json with --senders N).")
@quiet_option
@friendly
def bench_node(images, n, senders, model_path, out) -> None:
    """Films by storescu through `listen` to a local Orthanc: instances/s, C-STORE-to-SR latency, peak memory."""
    from .node_bench import NodeBenchConfig, bench_node as run, render, result_name

    click.echo(render(run(NodeBenchConfig(images=images, n=n, model=model_path, out=out, senders=senders))))
    click.echo(f"wrote {out}/{result_name(senders)}")


# Defaults: EnginesConfig's fields (ConfigDefaults).
@main.command("bench-engines", cls=ConfigDefaults, config=".cluster_bench:EnginesConfig")
@click.option("--model", "model_path", help="ONNX model both engines run [default: the shipped bundle's INT8 file].")
@click.option("--images", required=True, help="Folder of X-rays both engines classify (e.g. ../shared/data/chest_xray/test).")
@click.option("--out", show_default=True, help="Folder for engines.json and engines.md.")
@click.option("--rounds", type=int, show_default=True, help="Alternating local/Ray rounds (best is reported).")
@quiet_option
@friendly
def bench_engines(model_path, images, out, rounds) -> None:
    """infer's local engine against --engine ray in local mode, and an estimate for a 10M-image archive."""
    from .cluster_bench import EnginesConfig, bench_engines as run, render

    model = model_or_shipped_int8(model_path)
    click.echo(render(run(EnginesConfig(folder=images, model=model, out=out, rounds=rounds))))
    click.echo(f"wrote {out}/engines.json and engines.md")


# Defaults: PipelineConfig's fields (ConfigDefaults).
@main.command("bench-pipeline", cls=ConfigDefaults, config=".pipeline_bench:PipelineConfig")
@click.option("--images", required=True, help="Folder of X-rays (e.g. ../shared/data/chest_xray/test).")
@click.option("--model", "model_path", help="ONNX file both run [default: the shipped bundle's INT8 file].")
@click.option("--out", show_default=True, help="Folder for pipeline.json and pipeline.md.")
@click.option("--rounds", type=int, show_default=True, help="Alternating rounds (the best of each is reported).")
@click.option("--batch-size", type=int, show_default=True, help="Images per onnxruntime call, in both.")
@quiet_option
@friendly
def bench_pipeline(images, model_path, out, rounds, batch_size) -> None:
    """The whole `infer` process against a bare INT8 onnxruntime session over the same images."""
    from .pipeline_bench import PipelineConfig, bench_pipeline as run, render

    model = model_or_shipped_int8(model_path)
    click.echo(render(run(PipelineConfig(images=images, model=model, out=out, rounds=rounds, batch_size=batch_size))))
    click.echo(f"wrote {out}/pipeline.json and pipeline.md")


# Defaults: BrowserBenchConfig's fields (ConfigDefaults).
@main.command("bench-browser", cls=ConfigDefaults, config=".browser:BrowserBenchConfig")
@click.option("--model", show_default=True, help="ONNX file both runtimes run.")
@click.option("--images", show_default=True,
              help="Folder with NORMAL/ and PNEUMONIA/ films (a runtime comparison: no metric is read).")
@click.option("--per-class", type=int, show_default=True, help="Films of each class.")
@click.option("--examples", show_default=True, help="The demo X-rays, also compared.")
@click.option("--threads", multiple=True, type=int, default=(1, 2), show_default=True,
              help="onnxruntime-web threads, one run each (more than 1: the page is cross-origin isolated).")
@click.option("--fp32-model", show_default=True,
              help="The same films through this file too ('' to skip): the page's code without INT8 rounding.")
@click.option("--external", show_default=True, help="Other films, reported apart for decoding ('' to skip).")
@click.option("--heatmap-films", type=int, show_default=True,
              help="Films whose heat map (about 50 model runs each) is drawn and compared, per run.")
@click.option("--out", show_default=True, help="Result file.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@quiet_option
@friendly
def bench_browser(model, images, per_class, examples, threads, fp32_model, external, heatmap_films, out,
                  force) -> None:
    """The page's in-browser runtime (headless Chromium) against `infer`: parity per film and ms per film."""
    from .browser import BrowserBenchConfig, bench_browser as run, render

    click.echo(render(run(BrowserBenchConfig(out=out, model=model, images=images, per_class=per_class,
                                             examples=examples, threads=list(threads), fp32_model=fp32_model or None,
                                             external=external or None, heatmap_films=heatmap_films,
                                             force=force))))
    click.echo(f"wrote {out}")


# Defaults: LoadConfig's fields (ConfigDefaults).
@main.command("bench-serve", cls=ConfigDefaults, config=".loadtest:LoadConfig")
@click.option("--model", "model_path", help="Model the server under test runs [default: the shipped bundle's INT8 file].")
@click.option("--images", required=True, help="Folder of X-rays to send (e.g. ../shared/data/chest_xray/test).")
@click.option("--requests", "n_requests", type=int, default=2000, show_default=True,  # = LoadConfig.requests (a test)
              help="Requests to send in all.")
@click.option("--clients", type=int, show_default=True, help="Concurrent clients on loopback.")
@click.option("--heatmap", is_flag=True, help="Ask every request for a heat map.")
@click.option("--workers", type=int, show_default=True, help="Server worker processes.")
@click.option("--threads", type=int, help="onnxruntime threads per server worker.")
@click.option("--out", show_default=True, help="Folder for the serve-*.json result.")
@click.option("--slow-clients", type=int, show_default=True,
              help="Instead: a normal client's latency (--requests of them) while this many slow clients are connected.")
@friendly
def bench_serve(model_path, images, n_requests, clients, heatmap, workers, threads, out, slow_clients) -> None:
    """Load-test `pneumo-edge serve` on loopback: throughput, p50/p95/p99, errors, memory growth."""
    from .loadtest import LoadConfig, load_test, render

    model_path = model_or_shipped_int8(model_path)
    r = load_test(LoadConfig(model=model_path, images=images, requests=n_requests, clients=clients, heatmap=heatmap,
                             workers=workers, threads=threads, out=out, slow_clients=slow_clients))
    click.echo(render(r))
    if r.get("errors") or r.get("status_codes", {}).keys() - {"200"}:
        raise SystemExit(1)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--repo-id", required=True, help="Hugging Face model repository, e.g. me/pneumo-edge-lite0.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@click.option("--public", is_flag=True, help="Make a new repository public (default: private).")
@click.option("--include-patient-images", is_flag=True,
              help="Also upload the files that show patients' films (the bundle's contact sheet).")
@friendly
def push(bundle, repo_id, dry_run, public, include_patient_images) -> None:
    """Upload a bundle's own files (model card included) to the Hugging Face hub, privately unless --public."""
    from .hub import left_out, push

    files = push(bundle=bundle, repo_id=repo_id, dry_run=dry_run, public=public,
                 include_patient_images=include_patient_images)
    total = sum(f.stat().st_size for f in files) / 1e6
    for f in files:
        click.echo(f"{'would upload' if dry_run else 'uploaded'} {f}  ({f.stat().st_size / 1e6:.2f} MB)")
    for f, why in left_out(bundle, include_patient_images):
        click.echo(f"left out {f}: {why}")
    click.echo(f"{len(files)} files, {total:.1f} MB {'(dry run)' if dry_run else f'-> https://huggingface.co/{repo_id}'}"
               f" ({'public' if public else 'private'})")


@main.command("guard-report")
@click.option("--model", "model_path", type=click.Path(), help="Bundle model (default: the shipped export/model.onnx).")
@click.option("--data", default=DEFAULT_DATA, show_default=True,
              help="Local folder or hub dataset id: its test split measures how many real X-rays the guard "
                   "wrongly rejects; '' skips that part.")
@click.option("--out", "out_json", type=click.Path(), help="Write the report as JSON here (and .md beside it).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out (and its .md).")
@click.option("--ledger", default="test_ledger.jsonl", show_default=True,
              help="Where reading the test split's films is recorded ('' for none).")
@quiet_option
@friendly
@no_traceback
def guard_report(model_path, data, out_json, force, ledger) -> None:
    """How often the OOD guard rejects real X-rays, and each kind of non-X-ray image."""
    from pathlib import Path

    from .edge.atomic import refuse_existing, write_text
    from .edge.errors import PneumoEdgeError
    from .ood import guard_report
    from .ood import render_guard_report
    from .edge.model import default_model_path

    if out_json:  # checked before the (long) run
        if Path(out_json).suffix.lower() == ".md":
            raise PneumoEdgeError("--out names the JSON report; the .md table is written beside it")
        for p in (out_json, Path(out_json).with_suffix(".md")):
            refuse_existing(p, force)
    r = guard_report(model_path=str(model_path or default_model_path()),
                     data=data or None, out_json=out_json, ledger=ledger or None)
    table = render_guard_report(r)
    if out_json:
        write_text(Path(out_json).with_suffix(".md"), table)
    click.echo(table)


@main.command()
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--only", multiple=True, help="Run only this candidate (repeatable).")
@quiet_option
@friendly
def study(study_file, only) -> None:
    """Train and score a declared list of recipes on validation; pick one by the committed rule."""
    from .study import run_study

    run_study(study_file, only=list(only) or None, progress=True)


@main.command("heatmap-study")
@click.option("--bundle", default="export", show_default=True, help="Bundle whose validation films and models are studied.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Dataset the bundle was trained on.")
@click.option("--out", default="bench/heatmaps", show_default=True, help="Folder for results.json, results.md, deletion.png.")
@click.option("--films", "n_films", type=int, help="Validation films to score (default: the protocol's).")
@click.option("--random-films", "n_random", type=int, help="Films for the randomization check (default: the protocol's).")
@click.option("--force", is_flag=True, help="Replace an existing results.json.")
@quiet_option
@friendly
def heatmap_study(bundle, data, out, n_films, n_random, force) -> None:
    """Score every heat-map method by the committed protocol on validation films; pick one by its rule."""
    from .heatmap_study import StudyConfig, run_study

    r = run_study(StudyConfig(bundle=bundle, data=data, out=out, n_films=n_films, n_random=n_random, force=force))
    p = r["pick"]
    click.echo(f"pick: {p['method']} ({'every target met' if p['all_targets_met'] else 'missed: ' + ', '.join(p['missed'])}); "
               f"wrote {out}/results.json")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--results", required=True, type=click.Path(exists=True, file_okay=False),
              help="evaluate's output folder for this checkpoint (its operating point and metrics ship).")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Dataset the checkpoint was trained on.")
@click.option("--out", default="export", show_default=True, help="Bundle folder.")
@click.option("--force", is_flag=True, help="Rebuild into a non-empty --out.")
@quiet_option
@friendly
def bundle(checkpoint, results, data, out, force) -> None:
    """Build the shipped bundle: export + gates, evaluation, Grad-CAM sheet, guard report, model card."""
    from .bundle import build_bundle

    click.echo(f"bundle written to {build_bundle(checkpoint=checkpoint, results=results, data=data, out=out, force=force)}")


@main.command()
@click.argument("members", nargs=-1, required=True)
@click.option("--out", required=True, help="Folder for the averaged checkpoint (model.safetensors + config.json).")
@click.option("--force", is_flag=True, help="Overwrite a checkpoint already in --out.")
@friendly
def soup(members, out, force) -> None:
    """Average the weights of fine-tunes of one recipe (same architecture and validation split) into one model."""
    from .soup import average_checkpoints

    click.echo(f"soup of {len(members)} written to {average_checkpoints(list(members), out, force)}")


@main.command()
@click.argument("result_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False),
              help="Summary JSON (mean and sd of the test metrics over the runs).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@friendly
def seeds(result_dirs, out_json, force) -> None:
    """Summarise evaluations of one recipe trained with different seeds."""
    from .edge.atomic import refuse_existing
    from .evaluate import summarize_seeds

    refuse_existing(out_json, force)
    s = summarize_seeds(result_dirs=list(result_dirs), out_json=out_json)
    for k, v in s["summary"].items():
        click.echo(f"{k:>12}: {v['mean']:.4f} ± {v['sd']:.4f}")
    click.echo(f"wrote {out_json}")


@main.command()
@click.argument("readme_path", default="README.md", type=click.Path(exists=True, dir_okay=False))
@click.option("--bundle", "bundle_dir", default="export", show_default=True, help="Bundle whose result files fill the README.")
@friendly
def readme(readme_path, bundle_dir) -> None:
    """Rewrite README's generated sections and the bundle's model card from the result files."""
    from .report import update_readme, write_model_card

    done = update_readme(readme=readme_path, bundle=bundle_dir)
    click.echo("updated sections: " + (", ".join(done) or "none"))
    card = write_model_card(bundle_dir)
    if card:
        click.echo(f"model card: {card}")
