"""`pneumo-edge bundle ...`: build the shipped bundle and the tools that restamp or report on one."""

from __future__ import annotations

import click

from pneumo_edge.bundle.build import build_bundle
from pneumo_edge.bundle.guardfit import stamp_polarity, write_guard_report
from pneumo_edge.bundle.population_fit import RESULT, stamp_population
from pneumo_edge.cli.common import (
    DEFAULT_DATA,
    DefaultGroup,
    friendly,
    no_traceback,
    quiet_option,
)
from pneumo_edge.edge.model import default_model_path
from pneumo_edge.edge.targets import SHIPPED_BUNDLE
from pneumo_edge.site.monitoring import stamp_references


@click.group("bundle", cls=DefaultGroup, default="build")
def bundle_group() -> None:
    """Build the shipped bundle, and report on or restamp one (guard, heat-map parity, drift reference, README)."""


@bundle_group.command("build")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--results", required=True, type=click.Path(exists=True, file_okay=False),
              help="evaluate's output folder for this checkpoint (its operating point and metrics ship).")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Dataset the checkpoint was trained on.")
@click.option("--out", default=SHIPPED_BUNDLE, show_default=True, help="Bundle folder.")
@click.option("--force", is_flag=True, help="Rebuild into a non-empty --out.")
@quiet_option
@friendly
def bundle(checkpoint, results, data, out, force) -> None:
    """Build the shipped bundle: export + gates, evaluation, Grad-CAM sheet, guard report, model card."""
    click.echo(f"bundle written to {build_bundle(checkpoint=checkpoint, results=results, data=data, out=out, force=force)}")


@bundle_group.command("guard-report")
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

    _, table = write_guard_report(model_path or default_model_path(), data or None, out_json, force, ledger or None)
    click.echo(table)


@bundle_group.command("guard-polarity")
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
    r = stamp_polarity(bundle, data, force=force)
    t = r["polarity"]["threshold"]
    for name, f in r["files"].items():
        v = f["validation_rejected"]
        click.echo(f"{name}: polarity threshold {t:.4g}; validation refused: clean {v['clean']:.2%}, "
                   f"inverted grey levels {v['inverted grey levels']:.2%}")
    click.echo(f"the guard scores changed, so the drift reference was removed: refit it with `pneumo-edge "
               f"monitor-reference {bundle} --data {data} --force`")


@bundle_group.command("heatmap-parity")
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
    from pneumo_edge.bundle.export import (
        regate_heatmap,  # torch: training side only, kept off the light install
    )

    r = regate_heatmap(bundle, data)
    h = r["heatmap"]
    click.echo(f"{h['method']} on {h['n']} films: ONNX vs twin min {h['onnx_vs_twin']['min']:.4f}"
               + (f", INT8 vs fp32 mean {h['int8_vs_fp32']['mean']:.4f}" if "int8_vs_fp32" in h else "")
               + f"; parity {'PASSED' if r['passed'] else 'FAILED: ' + '; '.join(r['failures'])}")
    if not r["passed"]:
        raise SystemExit(1)


@bundle_group.command("monitor-reference")
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
    r = stamp_references(bundle, data, out=out, force=force)
    for name, f in r["files"].items():
        click.echo(f"{name}: reference on {f['n_reference']} validation films, alarm band {f['alarm_threshold']:.4f} "
                   f"({f['false_alarm_rate']:.0%} false alarms per {f['stream_images']} images), graph bytes "
                   f"identical, outputs bit-identical on {f['outputs_bit_identical_on']} films")


@bundle_group.command("readme")
@click.argument("readme_path", default="README.md", type=click.Path(exists=True, dir_okay=False))
@click.option("--bundle", "bundle_dir", default=SHIPPED_BUNDLE, show_default=True, help="Bundle whose result files fill the README.")
@friendly
def readme(readme_path, bundle_dir) -> None:
    """Rewrite README's generated sections and the bundle's model card from the result files."""
    from pneumo_edge.bundle.report import (  # torch: training side only, kept off the light install
        update_readme,
        write_model_card,
    )

    done = update_readme(readme=readme_path, bundle=bundle_dir)
    click.echo("updated sections: " + (", ".join(done) or "none"))
    card = write_model_card(bundle_dir)
    if card:
        click.echo(f"model card: {card}")



@bundle_group.command("guard-population")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="The data the bundle's checkpoint was trained on.")
@click.option("--others", required=True, type=click.Path(exists=True, file_okay=False),
              help="Films of another population, named by patient (e.g. ../shared/data/site_nih): half the patients "
                   "fit the check, the rest measure it.")
@click.option("--force", is_flag=True, help="Required: the ONNX files in BUNDLE are restamped in place.")
@quiet_option
@friendly
@no_traceback
def guard_population(bundle, data, others, force) -> None:
    """State the bundle's population and add the image-based population check to its guard.

    The check refuses films that look like another population's (for films whose header gives no age); its
    threshold lies half way (in log-odds) between the bundle's validation films and the fitting patients' films
    scored out of fold. Graph bytes are copied unchanged and outputs checked
    bit-identical before a file is replaced. Writes BUNDLE/population.json. Run `bundle monitor-reference` afterwards.
    """
    r = stamp_population(bundle, data, others, force=force)
    held = r["others"]["heldout"]
    for name, f in r["files"].items():
        v, h = f["validation_rejected"], f["heldout"]
        click.echo(f"{name}: population threshold {f['threshold']:.4g}; validation refused: clean {v['clean']:.2%}; "
                   f"held-out {held['films']} films of {held['patients']} patients refused {h['refused']:.2%}")
    click.echo(f"wrote {bundle}/{RESULT}; the guard scores changed, so the drift reference was removed: refit it "
               f"with `pneumo-edge bundle monitor-reference {bundle} --data {data} --force`")
