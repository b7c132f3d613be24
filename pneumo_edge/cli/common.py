"""What every command shares: one-line errors, the quiet flag, option defaults read from the library."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys

import click

from pneumo_edge.edge.api import resolve_model
from pneumo_edge.edge.errors import PneumoEdgeError
from pneumo_edge.edge.progress import set_quiet
from pneumo_edge.edge.targets import (
    DEFAULT_DATA,  # noqa: F401 - every --data's default, for the commands
    INT8,
)

MODEL_HELP = ("Model to run: an .onnx file (fp32 or INT8), a bundle folder or a hub id 'user/repo' "
              "(default: the shipped export/model.onnx).")


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

    return str(resolve_model(model) if model else resolve_model(None).parent / INT8.file)


def quiet_option(fn):
    """`-q/--quiet` for a long command: no bar, heartbeat or step line; results and errors still print."""

    @functools.wraps(fn)
    def wrapper(*args, quiet: bool = False, **kwargs):
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



class DefaultGroup(click.Group):
    """A group that runs its default subcommand when the first argument names none of its commands.

    `pneumo-edge bench --bundle export` (the command before it became a group) still runs `bench variants`.
    """

    def __init__(self, *args, default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        help_names = set(ctx.help_option_names)
        if not (args and (args[0] in self.commands or args[0] in help_names)):
            click.echo(f"note: `pneumo-edge {self.name} ...` is now `pneumo-edge {self.name} {self.default} ...`",
                       err=True)
            args = [self.default, *args]
        return super().parse_args(ctx, args)
