"""`pneumo-edge study ...`: recipe and heat-map studies, simulated sites, seeds and soups."""

from __future__ import annotations

import click

from pneumo_edge.cli.common import DEFAULT_DATA, DefaultGroup, friendly, quiet_option
from pneumo_edge.edge.atomic import refuse_existing
from pneumo_edge.edge.targets import SHIPPED_BUNDLE
from pneumo_edge.studies.sites import (
    SIZES,
    render_sites,
    render_test_read,
    simulate_sites,
)
from pneumo_edge.studies.sites import test_read as read_test


@click.group("study", cls=DefaultGroup, default="recipes")
def study_group() -> None:
    """Studies that pick by a committed rule: recipes, heat-map methods, simulated sites; seeds and soups."""


@study_group.command("recipes")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--only", multiple=True, help="Run only this candidate (repeatable).")
@quiet_option
@friendly
def study(study_file, only) -> None:
    """Train and score a declared list of recipes on validation; pick one by the committed rule."""
    from pneumo_edge.studies.recipes import (
        run_study,  # torch: training side only, kept off the light install
    )

    run_study(study_file, only=list(only) or None, progress=True)


@study_group.command("heatmaps")
@click.option("--bundle", default=SHIPPED_BUNDLE, show_default=True, help="Bundle whose validation films and models are studied.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Dataset the bundle was trained on.")
@click.option("--out", default="bench/heatmaps", show_default=True, help="Folder for results.json, results.md, deletion.png.")
@click.option("--films", "n_films", type=int, help="Validation films to score (default: the protocol's).")
@click.option("--random-films", "n_random", type=int, help="Films for the randomization check (default: the protocol's).")
@click.option("--force", is_flag=True, help="Replace an existing results.json.")
@quiet_option
@friendly
def heatmap_study(bundle, data, out, n_films, n_random, force) -> None:
    """Score every heat-map method by the committed protocol on validation films; pick one by its rule."""
    from pneumo_edge.studies.heatmaps import (  # torch: training side only, kept off the light install
        StudyConfig,
        run_study,
    )

    r = run_study(StudyConfig(bundle=bundle, data=data, out=out, n_films=n_films, n_random=n_random, force=force))
    p = r["pick"]
    click.echo(f"pick: {p['method']} ({'every target met' if p['all_targets_met'] else 'missed: ' + ', '.join(p['missed'])}); "
               f"wrote {out}/results.json")


@study_group.command("sites")
@click.option("--bundle", default=SHIPPED_BUNDLE, show_default=True, type=click.Path(exists=True, file_okay=False),
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
    if test_read:
        click.echo(render_test_read(read_test(bundle, data, out, ledger=ledger)))
        click.echo(f"wrote {out}/test-read-simulation.json, .md and monitoring-test.png; one line in {ledger}")
        return
    r = simulate_sites(bundle, data, out, splits=splits, sizes=tuple(sizes) or SIZES, cache=cache or None)
    click.echo(render_sites(r))
    click.echo(f"wrote {out}/site-calibration.json and site-calibration.md")


@study_group.command("seeds")
@click.argument("result_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False),
              help="Summary JSON (mean and sd of the test metrics over the runs).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@friendly
def seeds(result_dirs, out_json, force) -> None:
    """Summarise evaluations of one recipe trained with different seeds."""
    from pneumo_edge.train.evaluate import (
        summarize_seeds,  # torch: training side only, kept off the light install
    )

    refuse_existing(out_json, force)
    s = summarize_seeds(result_dirs=list(result_dirs), out_json=out_json)
    for k, v in s["summary"].items():
        click.echo(f"{k:>12}: {v['mean']:.4f} ± {v['sd']:.4f}")
    click.echo(f"wrote {out_json}")


@study_group.command("soup")
@click.argument("members", nargs=-1, required=True)
@click.option("--out", required=True, help="Folder for the averaged checkpoint (model.safetensors + config.json).")
@click.option("--force", is_flag=True, help="Overwrite a checkpoint already in --out.")
@friendly
def soup(members, out, force) -> None:
    """Average the weights of fine-tunes of one recipe (same architecture and validation split) into one model."""
    from pneumo_edge.train.soup import (
        average_checkpoints,  # torch: training side only, kept off the light install
    )

    click.echo(f"soup of {len(members)} written to {average_checkpoints(list(members), out, force)}")

