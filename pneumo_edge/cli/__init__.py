"""The `pneumo-edge` command: a thin click layer over the library, one file per group.

The user's modes are top-level commands; maintainer tools live in the `bench`, `study` and `bundle` groups.
Every PneumoEdgeError becomes one line on stderr and its exit code (cli.common.friendly).
"""

from __future__ import annotations

import copy
import functools

import click

from pneumo_edge import __version__
from pneumo_edge.cli import bench, bundle, infer, node, serve, site, study, train

COMMANDS = (train.train, train.evaluate, train.export, infer.infer, site.validate, infer.explain, infer.info,
            site.calibrate, site.adapt, site.monitor, serve.serve, node.listen, infer.page, serve.push, serve.token,
            bench.bench_group, study.study_group, bundle.bundle_group)
# Names from before the groups: each still runs, hidden from --help, and says its new name once.
RENAMED = {"bench-memory": ("bench", "memory"), "bench-heatmaps": ("bench", "heatmaps"), "bench-node": ("bench", "node"),
           "bench-engines": ("bench", "engines"), "bench-pipeline": ("bench", "pipeline"),
           "bench-browser": ("bench", "browser"), "bench-serve": ("bench", "serve"),
           "heatmap-study": ("study", "heatmaps"), "site-sim": ("study", "sites"), "seeds": ("study", "seeds"),
           "soup": ("study", "soup"), "guard-report": ("bundle", "guard-report"),
           "guard-polarity": ("bundle", "guard-polarity"), "heatmap-parity": ("bundle", "heatmap-parity"),
           "monitor-reference": ("bundle", "monitor-reference"), "readme": ("bundle", "readme"),
           "bench-node-bounds": ("bench", "node-bounds"), "bench-adapt": ("bench", "adapt")}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pneumo-edge")
def main() -> None:
    """Pneumonia-vs-normal chest X-ray classifier: train, export, infer, explain, and run at a hospital."""


def renamed(old: str, group: click.Group, name: str) -> click.Command:
    """A hidden copy of `group name` under its old name that says the new one on stderr."""
    target = group.commands[name]
    alias = copy.copy(target)
    alias.name, alias.hidden = old, True

    @functools.wraps(target.callback)
    def callback(*args, **kwargs):
        click.echo(f"note: `pneumo-edge {old}` is now `pneumo-edge {group.name} {name}`", err=True)
        return target.callback(*args, **kwargs)

    alias.callback = callback
    return alias


for _command in COMMANDS:
    main.add_command(_command)
for _old, (_group, _name) in RENAMED.items():
    main.add_command(renamed(_old, main.commands[_group], _name))
