"""--force replaces this project's outputs only: never through a symbolic link, never another file."""

from pathlib import Path

from click.testing import CliRunner

from pneumo_edge.cli import main

ROOT = Path(__file__).resolve().parents[2]
XRAY = sorted((ROOT / "examples" / "xrays" / "PNEUMONIA").iterdir())[0]


def _infer(tiny_bundle, *args):
    return CliRunner().invoke(main, ["infer", str(XRAY), "--model", str(tiny_bundle / "model.onnx"), *map(str, args)])


def _wrote(r) -> bool:
    """Rows written (exit 1 is an image the tiny model's guard rejects, not a refusal)."""
    return r.exit_code in (0, 1) and "error:" not in r.output


def test_force_never_follows_a_symlink(tiny_bundle, tmp_path):
    victim = tmp_path / "input.jpeg"
    victim.write_bytes(XRAY.read_bytes())
    link = tmp_path / "rows.csv"
    link.symlink_to(victim)
    r = _infer(tiny_bundle, "--out", link, "--force")
    assert r.exit_code != 0 and "symbolic link" in r.output
    assert victim.read_bytes() == XRAY.read_bytes() and link.is_symlink()
    json_link = tmp_path / "rows.jsonl"
    json_link.symlink_to(victim)
    r = _infer(tiny_bundle, "--out", tmp_path / "real.csv", "--json", json_link, "--force")
    assert r.exit_code != 0 and "symbolic link" in r.output and victim.read_bytes() == XRAY.read_bytes()


def test_force_never_empties_a_file_that_is_not_an_output(tiny_bundle, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("patient,finding\nA,clear\n")
    r = _infer(tiny_bundle, "--out", notes, "--force")
    assert r.exit_code != 0 and "not a pneumo-edge output" in r.output
    assert notes.read_text() == "patient,finding\nA,clear\n"


def test_force_still_replaces_its_own_outputs(tiny_bundle, tmp_path):
    out, js = tmp_path / "rows.csv", tmp_path / "rows.jsonl"
    assert _wrote(_infer(tiny_bundle, "--out", out, "--json", js))
    first = out.read_text()
    r = _infer(tiny_bundle, "--out", out, "--json", js, "--force")
    assert _wrote(r), r.output
    assert out.read_text().splitlines()[0] == first.splitlines()[0] and len(out.read_text().splitlines()) == 2
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert _wrote(_infer(tiny_bundle, "--out", empty, "--force"))


def test_force_empties_no_output_when_another_is_refused(tiny_bundle, tmp_path):
    """--force with --out ours.csv and a --json that is not ours: refused before the CSV is emptied."""
    import numpy as np
    from PIL import Image

    from conftest import xray_like

    films = tmp_path / "in"
    films.mkdir()
    Image.fromarray(xray_like(np.random.default_rng(0), True)).save(films / "a.png")
    out = tmp_path / "p.csv"
    args = ["infer", str(films), "--model", str(tiny_bundle / "model.onnx"), "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = out.read_bytes()
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my own notes\n")
    r = CliRunner().invoke(main, [*args, "--json", str(foreign), "--force"])
    assert r.exit_code == 2 and "not a pneumo-edge output" in r.output
    assert out.read_bytes() == before and foreign.read_text() == "my own notes\n"
