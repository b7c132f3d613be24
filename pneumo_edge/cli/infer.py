"""Running a model: infer, explain, info, page."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from pneumo_edge.cli.common import (
    MODEL_HELP,
    ConfigDefaults,
    friendly,
    no_traceback,
    quiet_option,
)
from pneumo_edge.edge.api import resolve_model
from pneumo_edge.edge.console import SHOW_ROWS, RowPrinter, exit_code, summary
from pneumo_edge.edge.engines import run_engine
from pneumo_edge.edge.inputs import printable
from pneumo_edge.edge.meta import describe
from pneumo_edge.edge.model import EdgeModel, default_model_path
from pneumo_edge.edge.outputs import STDOUT
from pneumo_edge.edge.page import write_page


# Defaults: InferConfig's fields (ConfigDefaults; edge.infer imports no torch).
@click.command(cls=ConfigDefaults, config="pneumo_edge.edge.infer:InferConfig")
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

    if engine == "local" and (manifest or address or actors or threads_per_actor):
        raise click.UsageError("--manifest, --address, --actors and --threads-per-actor go with --engine ray")
    if engine == "ray" and workers:
        raise click.UsageError("--workers sets the local engine's decode threads; with --engine ray use --actors")
    if engine == "ray" and heatmaps:
        raise click.UsageError("--heatmaps runs with the local engine only")
    if not paths and not manifest:
        raise click.UsageError("name at least one file or folder (or, with --engine ray, a --manifest)")
    out_csv = out_csv or ("predictions.parquet" if engine == "ray" else "predictions.csv")
    to_stderr = out_csv == STDOUT  # then standard output carries the CSV alone
    printer = RowPrinter(functools.partial(click.echo, err=to_stderr), verbose)
    s, labels = run_engine(engine, list(paths), model_path, out_csv, json_path, resume, force, printer,
                           batch_size=batch_size, workers=workers, guard=guard, heatmaps=heatmaps, address=address,
                           manifest=manifest, actors=actors, threads_per_actor=threads_per_actor)
    printer.flush()
    for line, err in summary(s, "standard output" if to_stderr else printable(out_csv), heatmaps, labels):
        click.echo(line, err=err or to_stderr)
    sys.exit(exit_code(s, labels))


@click.command()
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

    if model_path is None and bundle and bundle.lower().endswith(".onnx"):
        model_path, bundle = bundle, None
    if model_path is not None:
        from pneumo_edge.edge.heatmap import explain as explain_onnx

        if bundle or layer is not None:
            raise click.UsageError("--bundle and --layer are for the PyTorch twin; --model explains an .onnx file")
        records = explain_onnx(images=list(images), model=EdgeModel(model_path), out=out, target=target, force=force,
                               guard=guard)
    else:
        from pneumo_edge.bundle.gradcam import explain

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


@click.command()
@click.argument("model", required=False)
@friendly
def info(model) -> None:
    """What a model file carries: labels, preprocessing, decision rule, guard, quantization.

    MODEL: an .onnx file, a bundle folder or a hub id 'user/repo' (default: the shipped model).
    """

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


@click.command()
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
    r = write_page(out, model=model, force=force)
    click.echo(f"wrote {r['out']}: {r['files']} files, {r['bytes'] / 1e6:.1f} MB (model {Path(r['model']).name})")

