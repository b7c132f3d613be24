"""Batch inference loses nothing and skips nothing silently: locking, resume repair, every input a row."""

import csv
import fcntl
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import xray_like
from pneumo_edge.cli import main
from pneumo_edge.edge import atomic
from pneumo_edge.edge.infer import find_inputs


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_name(path):
    return {os.path.basename(r["path"]): r for r in rows_of(path)}


def save_xray(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(xray_like(np.random.default_rng(seed), seed % 2 == 0)).save(path, format="PNG")
    return path


@pytest.fixture()
def three(tmp_path):
    d = tmp_path / "in"
    for i in range(3):
        save_xray(d / f"x{i}.png", i)
    return d


@pytest.fixture()
def infer(tiny_bundle):
    def run(*args):
        return CliRunner().invoke(main, ["infer", "--model", str(tiny_bundle / "model.onnx"), *map(str, args)])
    return run


# ---------------------------------------------------------------- data loss

def test_a_second_writer_is_refused_and_changes_nothing(infer, three, tmp_path):
    out = tmp_path / "p.csv"
    assert infer(three, "--out", out).exit_code == 0
    before = out.read_bytes()
    with open(out, "rb") as held:  # a first run still writing
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for flag in ("--force", "--resume"):
            r = infer(three, "--out", out, flag)
            assert r.exit_code == 2 and "another run" in r.output and len(r.output.strip().splitlines()) == 1
        assert out.read_bytes() == before  # --force did not empty the first writer's file


def test_output_is_created_and_locked_before_the_model_loads(infer, three, tmp_path, monkeypatch):
    import pneumo_edge.edge.model as edge_model

    out = tmp_path / "p.csv"
    real = edge_model.EdgeModel.__init__
    seen = {}

    def check_then_load(self, *a, **k):
        with open(out, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["locked"] = False
            except BlockingIOError:
                seen["locked"] = True
        real(self, *a, **k)

    monkeypatch.setattr(edge_model.EdgeModel, "__init__", check_then_load)
    assert infer(three, "--out", out).exit_code == 0
    assert seen == {"locked": True}
    missing = infer(three, "--out", tmp_path / "q.csv", "--model", tmp_path / "nope.onnx")
    assert missing.exit_code == 2 and not (tmp_path / "q.csv").exists()  # a failed start leaves no file


def test_resume_repairs_a_torn_last_record(infer, three, tmp_path):
    out, js = tmp_path / "p.csv", tmp_path / "p.jsonl"
    assert infer(three, "--out", out, "--json", js).exit_code == 0
    for f in (out, js):  # a crash in the middle of the last record
        f.write_bytes(f.read_bytes()[:-7])
    r = infer(three, "--out", out, "--json", js, "--resume")
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    assert sorted(os.path.basename(x["path"]) for x in rows) == ["x0.png", "x1.png", "x2.png"]
    assert all(x["status"] == "ok" and float(x["probability"]) >= 0 for x in rows)
    assert out.read_bytes().endswith(b"\r\n")
    assert [json.loads(line)["status"] for line in js.read_text().splitlines()] == ["ok"] * 3
    assert "2 already done" in r.output and "1 incomplete row(s) re-done" in r.output


def test_resume_retries_error_rows_and_fails_while_they_remain(infer, three, tmp_path):
    out = tmp_path / "p.csv"
    (three / "late.png").write_bytes(b"still being copied")
    assert infer(three, "--out", out).exit_code == 1
    again = infer(three, "--out", out, "--resume")
    assert again.exit_code == 1 and "could not be classified" in again.output  # the error remains
    save_xray(three / "late.png", 7)  # the copy finished
    r = infer(three, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    assert len(rows) == 4 and by_name(out)["late.png"]["status"] == "ok"


def test_json_and_guard_report_outputs_obey_force(infer, three, tmp_path, tiny_bundle):
    out, js = tmp_path / "p.csv", tmp_path / "p.jsonl"
    js.write_text("keep me\n")
    r = infer(three, "--out", out, "--json", js)
    assert r.exit_code == 2 and "exists" in r.output and js.read_text() == "keep me\n"
    assert not out.exists()  # the run did not start half-way
    foreign = infer(three, "--out", out, "--json", js, "--force")  # not one of our outputs: kept even so
    assert foreign.exit_code == 2 and "not a pneumo-edge output" in foreign.output and js.read_text() == "keep me\n"
    js.unlink()
    assert infer(three, "--out", out, "--json", js, "--force").exit_code == 0
    assert len(js.read_text().splitlines()) == 3

    before = out.read_bytes()
    same = infer(three, "--out", out, "--json", out, "--force")
    assert same.exit_code == 2 and "same file" in same.output and out.read_bytes() == before

    report = tmp_path / "guard.json"
    report.write_text("{}")
    g = CliRunner().invoke(main, ["guard-report", "--model", str(tiny_bundle / "model.onnx"), "--data", "",
                                  "--out", str(report)])
    assert g.exit_code == 2 and "--force" in g.output and report.read_text() == "{}"


def test_explain_gives_same_named_inputs_distinct_overlays_and_goes_on_after_errors(tiny_bundle, tmp_path):
    a, b = save_xray(tmp_path / "a" / "x.png", 1), save_xray(tmp_path / "b" / "x.png", 2)
    out = tmp_path / "cams"
    r = CliRunner().invoke(main, ["explain", str(a), str(tmp_path / "missing.png"), str(tmp_path / "a"), str(b),
                                  "--bundle", str(tiny_bundle), "--out", str(out)])
    assert r.exit_code == 1, r.output
    pngs = sorted(p.name for p in out.glob("*.gradcam.png"))
    assert len(pngs) == 2 and all(p.startswith("x-") for p in pngs)
    errors = [line for line in r.output.splitlines() if ": error: " in line]
    assert len(errors) == 2 and "Traceback" not in r.output
    assert (out / "contact_sheet.png").exists()


def test_copy_file_is_all_or_nothing(tmp_path, monkeypatch):
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")

    def half_then_fail(s, d):
        with open(d, "wb") as f:
            f.write(b"new")
        raise OSError("disk full")

    monkeypatch.setattr(atomic.shutil, "copyfile", half_then_fail)
    with pytest.raises(OSError):
        atomic.copy_file(src, dst)
    assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]
    monkeypatch.undo()
    atomic.copy_file(src, dst)
    assert dst.read_bytes() == src.read_bytes()


# ---------------------------------------------------------------- silent drops

def test_symlinked_unreadable_and_hidden_entries_each_get_a_row(infer, tmp_path, monkeypatch):
    d, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    save_xray(d / "a.png", 0)
    save_xray(elsewhere / "linked.png", 1)
    os.symlink(elsewhere, d / "link")  # a symlinked subfolder
    os.symlink(d, d / "loop")  # and a loop back to the top
    save_xray(d / "locked" / "inside.png", 2)
    save_xray(d / ".hidden.png", 3)
    real_scandir = os.scandir

    def scandir(path="."):  # root reads anything: refuse like the permission bits would
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "p.csv"
    (d / "locked").chmod(0)
    try:
        r = infer(d, "--out", out)
    finally:
        (d / "locked").chmod(0o755)
    rows = by_name(out)
    assert r.exit_code == 1, r.output
    assert rows["linked.png"]["status"] == "ok" and rows["a.png"]["status"] == "ok"
    assert rows["locked"]["status"] == "error" and rows["locked"]["error"] == "cannot list folder: permission denied"
    assert rows[".hidden.png"]["status"] == "skipped"
    assert len(rows_of(out)) == 4  # the loop added no second row for a.png


def test_the_same_file_twice_is_classified_once(infer, three, tmp_path, monkeypatch):
    monkeypatch.chdir(three)
    out = tmp_path / "p.csv"
    r = infer("x0.png", "./x0.png", three / "x0.png", three, "--out", out)
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    assert [x["path"] for x in rows].count("x0.png") == 1 and len(rows) == 3
    assert "3 duplicate(s) ignored" in r.output


def test_find_inputs_reports_a_fifo_instead_of_blocking_on_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    found = find_inputs([str(tmp_path)])
    assert found.files == [] and found.problems == [(str(tmp_path / "pipe.png"), "error", "not a regular file")]


# ---------------------------------------------------------------- output safety

def test_control_characters_in_names_are_escaped_on_the_terminal(infer, tmp_path):
    save_xray(tmp_path / "in" / "bell\x07\x1b[2J\n.png")
    r = infer(tmp_path / "in", "--out", tmp_path / "p.csv", "--verbose")
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\\x1b[2J\\n.png" in r.output
    assert len(r.output.strip().splitlines()) == 2  # the row and the summary


def test_relative_formula_names_get_a_quote_and_resume_still_matches_them(infer, tmp_path, monkeypatch):
    d = tmp_path / "in"
    save_xray(d / "=cmd.png", 0)
    save_xray(d / "-0.5", 1)  # a name that is also a number
    monkeypatch.chdir(d)
    out = tmp_path / "p.csv"
    assert infer("--out", out, "--", "=cmd.png", "-0.5").exit_code == 0
    with open(out, newline="", encoding="utf-8") as f:
        cells = list(csv.reader(f))[1:]
    assert [row[0] for row in cells] == ["'=cmd.png", "-0.5"]
    assert all(not row[1].startswith("'") for row in cells)  # probabilities stay numbers
    r = infer("--out", out, "--resume", "--", "=cmd.png", "-0.5")
    assert r.exit_code == 0 and "2 already done" in r.output and len(rows_of(out)) == 2


@pytest.mark.parametrize("make", ["folder", "binary"])
def test_unusable_outputs_are_one_line_errors(infer, three, tmp_path, make):
    out = tmp_path / "p.csv"
    if make == "folder":
        out.mkdir()
    else:
        out.write_bytes(os.urandom(4000))
    before = None if make == "folder" else out.read_bytes()
    for flags in ([], ["--resume"], ["--force"]) if make == "folder" else (["--resume"],):
        r = infer(three, "--out", out, *flags)
        assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    if before is not None:
        assert out.read_bytes() == before


def test_rows_are_fsynced_at_intervals(infer, three, tmp_path, monkeypatch):
    import pneumo_edge.edge.outputs as rt

    calls = []
    real = os.fsync
    monkeypatch.setattr(rt, "SYNC_ROWS", 1)
    monkeypatch.setattr(rt.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    assert infer(three, "--out", tmp_path / "p.csv", "--batch-size", "1").exit_code == 0
    assert len(calls) >= 4  # one per batch of one row, and at exit
