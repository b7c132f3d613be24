"""One vocabulary on the command line: help everywhere, one --data default, train defaults from TrainConfig; info."""

import dataclasses
import subprocess
import sys

import click
from click.testing import CliRunner

from pneumo_edge.cli import main
from pneumo_edge.cli.common import DEFAULT_DATA
from pneumo_edge.edge.meta import read_meta


def leaves(group=main, prefix=""):
    """Every runnable command, groups walked: {"train": cmd, "bench variants": cmd, ...}."""
    out = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(leaves(cmd, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = cmd
    return out


def options(name):
    cmd = leaves()[name]
    cmd.make_context(name, [], resilient_parsing=True)  # fills ConfigDefaults options, as a real run does
    return {p.name: p for p in cmd.params if isinstance(p, click.Option)}


def test_every_option_has_help():
    missing = [f"{name} {'/'.join(p.opts)}" for name, cmd in leaves().items()
               for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not missing


def test_data_has_one_default_everywhere():
    from pneumo_edge.train.data import DEFAULT_HUB_DATASET
    from pneumo_edge.train.fit import TrainConfig

    assert DEFAULT_DATA == DEFAULT_HUB_DATASET == TrainConfig.data
    optional = {"adapt"}  # --data there adds home films to a run that needs none
    with_data = {name: opts["data"].default for name in leaves() if "data" in (opts := options(name)) and name not in optional}
    assert {"train", "evaluate", "export", "bench variants", "bundle guard-report", "bundle build"} <= set(with_data)
    assert set(with_data.values()) == {DEFAULT_DATA}, with_data


def test_train_defaults_are_train_config_fields_and_arch_names_the_architecture():
    from pneumo_edge.train.fit import RunConfig, TrainConfig

    fields = {f.name: f.default for cls in (TrainConfig, RunConfig) for f in dataclasses.fields(cls)}
    opts = options("train")
    assert opts["model"].opts == ["--arch"] and not any("--model" in p.opts for p in opts.values())
    assert "split_seed" in opts
    for name, p in opts.items():
        if name == "quiet":  # the display switch every long command has, not a training setting
            continue
        assert name in fields and p.default == fields[name], name
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert f"[default: {TrainConfig.lr}]" in help_text and "--arch" in help_text


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom pneumo_edge.cli import main\n"
            "for args in (['--help'], ['infer', '--help'], ['info', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules\nprint('NO_TORCH')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "NO_TORCH" in r.stdout, r.stderr


def test_info_prints_the_metadata_of_a_file_or_bundle(tiny_bundle):
    meta = read_meta(tiny_bundle / "model.onnx")
    r = CliRunner().invoke(main, ["info", str(tiny_bundle)])
    assert r.exit_code == 0, r.output
    table, _, about = r.output.partition("\n\n")  # the metadata rows, then the file's doc_string
    lines = dict(line.split(None, 1) for line in table.splitlines() if not line.startswith(" "))
    assert "Research use only" in about
    assert f"{meta.threshold:.4f}" in r.output and f"{meta.temperature:.4f}" in r.output
    assert "NORMAL, PNEUMONIA" in r.output and meta.preprocess.resize in r.output and "MB" in r.output
    assert lines["quantization"] == "none (fp32)" and lines["guard"].startswith("on") and "  embedding" in r.output
    assert meta.weights_sha256 in r.output
    int8 = CliRunner().invoke(main, ["info", str(tiny_bundle / "model.int8.onnx")])
    assert int8.exit_code == 0 and "int8" in int8.output.lower()
    missing = CliRunner().invoke(main, ["info", str(tiny_bundle / "nope.onnx")])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1


def test_commands_take_their_defaults_from_the_library():
    from pneumo_edge.cli.common import ConfigDefaults

    backed = {name: cmd for name, cmd in leaves().items() if isinstance(cmd, ConfigDefaults)}
    assert {"train", "validate", "infer", "export", "evaluate", "bench variants", "bench memory", "bench engines",
            "bench pipeline", "serve", "bench serve", "bench-serve"} <= set(backed)
    from pneumo_edge.edge.serve import DEFAULT_MAX_UPLOAD_MB

    from pneumo_edge.benchmarks.serve import LoadConfig

    assert options("serve")["max_upload_mb"].default == DEFAULT_MAX_UPLOAD_MB
    assert options("bench-serve")["n_requests"].default == LoadConfig.requests
    for name, cmd in backed.items():
        lib = cmd.library_defaults()
        assert CliRunner().invoke(main, [*name.split(), "--help"]).exit_code == 0
        shared = [p for p in cmd.params if p.name in lib and lib[p.name] is not None]
        assert shared, name
        for p in shared:
            assert p.default == lib[p.name], (name, p.name)


def test_help_lists_at_most_20_names_and_old_names_still_run_saying_the_new_one():
    listed = [name for name, cmd in main.commands.items() if not cmd.hidden]
    assert len(listed) <= 20 and {"train", "infer", "export", "bench", "study", "bundle"} <= set(listed)
    top = CliRunner().invoke(main, ["--help"]).output
    assert "bench-serve" not in top and "guard-report" not in top
    old = CliRunner().invoke(main, ["bench-serve", "--help"])
    assert old.exit_code == 0 and "--slow-clients" in old.output
    r = CliRunner().invoke(main, ["seeds", "nope"])  # the old name runs the new command (and its checks)
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["bench", "--smoke", "--bundle", "no/such/folder"])  # old `bench`: bench variants
    assert "is now `pneumo-edge bench variants" in r.output and r.exit_code != 0
