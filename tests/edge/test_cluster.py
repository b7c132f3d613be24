"""`infer --engine ray`: the local engine's rows from Ray Data, through faults, resumes and manifests."""

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import REAL, run_cli_without_torch
from pneumo_edge.cli import main

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

ray = pytest.importorskip("ray", reason="the cluster extra (pip install '.[cluster]') is not installed")

SHIPPED = Path(__file__).resolve().parents[2] / "export" / "model.int8.onnx"
needs_real = pytest.mark.skipif(not REAL.is_dir() or not SHIPPED.is_file(),
                                reason="needs ../shared/data/chest_xray and the shipped export/model.int8.onnx")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def bad_files(folder: Path) -> None:
    (folder / "text.png").write_text("not an image")
    (folder / "empty.jpeg").write_bytes(b"")
    good = next((REAL / "test" / "NORMAL").iterdir()).read_bytes()
    (folder / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (64, 64), "red").save(folder / "anim.gif")
    (folder / "notes.txt").write_text("skipped: not an image suffix")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """300 real test X-rays (links) and a handful of bad files in one folder."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((REAL / "test" / cls).iterdir())
        for f in rng.choice(files, 150, replace=False):
            (folder / f.name).symlink_to(f)
    bad_files(folder)
    return folder


def csv_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def run(args: list[str]):
    r = CliRunner().invoke(main, ["infer", *map(str, args)])
    assert r.exit_code in (0, 1), r.output
    return r


@needs_real
def test_ray_rows_equal_local_rows(mixed, tmp_path):
    run([mixed, "--model", SHIPPED, "--out", tmp_path / "local.csv", "--json", tmp_path / "local.jsonl"])
    run([mixed, "--model", SHIPPED, "--out", tmp_path / "ray.csv", "--engine", "ray"])
    run([mixed, "--model", SHIPPED, "--out", tmp_path / "ray.parquet", "--engine", "ray", "--batch-size", "7"])
    local, by_ray = csv_rows(tmp_path / "local.csv"), csv_rows(tmp_path / "ray.csv")
    assert len(local) == 305 and by_ray == local  # every column, to the last printed digit
    statuses = {r["status"] for r in local.values()}
    assert {"ok", "error", "skipped"} <= statuses
    errors = sorted(Path(p).name for p, r in local.items() if r["status"] == "error")
    assert errors == ["empty.jpeg", "text.png", "truncated.jpeg"]
    assert {Path(p).name for p, r in local.items() if r["status"] == "skipped"} == {"anim.gif", "notes.txt"}

    from pneumo_edge.edge.cluster import read_rows

    typed = {json.loads(line)["path"]: json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()}
    parquet = {r["path"]: r for r in read_rows(tmp_path / "ray.parquet")}
    assert len(parquet) == len(typed)
    for path, row in typed.items():  # exact floats, same errors, with another batch size
        got = {k: v for k, v in parquet[path].items() if v is not None}
        assert got == {k: v for k, v in row.items() if v not in (None, "")}, path


def _classifier_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"Classify" in cmd and cmd.startswith(b"ray::"):
                pids.append(int(d.name))
    return pids


@needs_real
def test_a_killed_actor_is_replaced_and_every_input_ends_once(mixed, tmp_path):
    from pneumo_edge.edge.cluster import ClusterConfig, ParquetOutputs, predict_cluster, read_rows

    killed: list[int] = []

    def kill_first_actor(row: dict) -> None:  # called on the driver as rows stream in
        if not killed:
            pids = _classifier_pids()
            assert pids, "no classifier actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    with ParquetOutputs(tmp_path / "rows.parquet") as out:
        s = predict_cluster([str(mixed)], str(SHIPPED), out, ClusterConfig(batch_size=4), echo=kill_first_actor,
                            progress=False)
    rows = read_rows(tmp_path / "rows.parquet")
    paths = [r["path"] for r in rows]
    assert killed and len(paths) == len(set(paths)) == 305  # every input, exactly once
    assert sum(r["status"] == "error" for r in rows) == 3 and s.n_failed == 3  # only the bad files
    assert killed[0] not in _classifier_pids()


def test_resume_skips_done_inputs_and_retries_errors(tiny_bundle, tmp_path):
    from conftest import write_xrays
    from pneumo_edge.edge.cluster import read_rows

    d = tmp_path / "in"
    d.mkdir()
    write_xrays(d, n=4)
    (d / "later.png").write_text("not yet an image")
    out = tmp_path / "rows.parquet"
    model = str(tiny_bundle / "model.int8.onnx")
    first = run([d, "--model", model, "--engine", "ray", "--out", out])
    assert first.exit_code == 1 and "could not be classified" in first.output
    refused = CliRunner().invoke(main, ["infer", str(d), "--model", model, "--engine", "ray", "--out", str(out)])
    assert refused.exit_code == 2 and "--resume" in refused.output  # never overwritten silently
    Image.fromarray(np.asarray(Image.open(d / "x0.png"))).save(d / "later.png", format="PNG")  # now readable
    (d / "more").mkdir()
    write_xrays(d / "more", n=2, seed=3)
    (out / ".part-x.parquet.abc.tmp").write_bytes(b"PAR1 half a part")  # a writer killed before its rename
    again = run([d, "--model", model, "--engine", "ray", "--out", out, "--resume"])
    assert again.exit_code == 0 and "4 already done" in again.output, again.output
    rows = read_rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 7 and all(r["status"] == "ok" or r["status"] == "rejected" for r in rows)
    assert not list(out.glob(".part-*.tmp"))


def test_manifest_with_uris_missing_files_and_bad_manifests(tiny_bundle, tmp_path):
    from conftest import write_xrays

    (tmp_path / "imgs").mkdir()
    paths = write_xrays(tmp_path / "imgs", n=2)
    manifest = tmp_path / "m.csv"
    uri = Path(paths[1]).resolve().as_uri()  # file:///...: read through pyarrow's file systems
    manifest.write_text(f"path,note\n{paths[0]},a\n{uri},b\nfile:///nowhere/x.png,c\n{tmp_path}/missing.png,d\n")
    out = tmp_path / "rows.csv"
    r = run(["--manifest", manifest, "--model", tiny_bundle / "model.onnx", "--engine", "ray", "--out", out])
    rows = csv_rows(out)
    assert r.exit_code == 1 and len(rows) == 4
    assert rows[uri]["status"] in ("ok", "rejected") and rows[paths[0]]["status"] in ("ok", "rejected")
    assert rows["file:///nowhere/x.png"]["error"] == "file does not exist"
    assert rows[f"{tmp_path}/missing.png"]["status"] == "error"
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.png\n")
    r = CliRunner().invoke(main, ["infer", "--manifest", str(bad), "--model", str(tiny_bundle / "model.onnx"),
                                  "--engine", "ray", "--out", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and "'path' column" in r.output
    local = CliRunner().invoke(main, ["infer", "--manifest", str(manifest), "--out", str(tmp_path / "l.csv")])
    assert local.exit_code == 2 and "--engine ray" in local.output


def test_local_engine_never_imports_ray(tiny_bundle, tmp_path):
    from conftest import write_xrays

    paths = write_xrays(tmp_path, n=1)
    r = run_cli_without_torch(["infer", *paths, "--model", tiny_bundle / "model.onnx", "--out", tmp_path / "p.csv"],
                              cwd=tmp_path, also_block=("ray",))
    assert r.returncode == 0, r.stderr


def test_bench_engines_reports_both_engines_and_labels_the_estimate(tiny_bundle, tmp_path):
    from conftest import write_xrays

    (tmp_path / "imgs").mkdir()
    write_xrays(tmp_path / "imgs", n=6)
    r = CliRunner().invoke(main, ["bench-engines", "--model", str(tiny_bundle / "model.int8.onnx"), "--images",
                                  str(tmp_path / "imgs"), "--out", str(tmp_path / "res"), "--rounds", "1", "-q"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "res" / "engines.json").read_text())
    assert res["runs"]["local"][0]["files"] == res["runs"]["ray"][0]["files"] == 6
    assert res["runs"]["ray"][0]["first_rows_after_s"] > 0 and res["classify"]["ms_per_image"] > 0
    assert res["estimate"]["kind"] == "estimate, not measured" and "ESTIMATE" in r.output
    hours = res["estimate"]["hours_by_cores"]["folder"]
    assert hours["16"] > hours["64"] > hours["256"]  # linear in cores, by construction of the estimate


def test_foreign_datasets_uri_outputs_and_engine_options_are_refused(tiny_bundle, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import write_xrays

    (tmp_path / "imgs").mkdir()
    write_xrays(tmp_path / "imgs", n=1)
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), foreign / "part-0.parquet")
    model = str(tiny_bundle / "model.onnx")
    for extra in ([], ["--force"], ["--resume"]):
        r = CliRunner().invoke(main, ["infer", str(tmp_path / "imgs"), "--model", model, "--engine", "ray",
                                      "--out", str(foreign), *extra])
        assert r.exit_code == 2 and "not a pneumo-edge row file" in r.output, r.output
    assert pq.read_table(foreign / "part-0.parquet").column("id").to_pylist() == [1, 2]  # untouched
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "imgs"), "--model", model, "--engine", "ray",
                                  "--out", "s3://bucket/rows"])
    assert r.exit_code == 2 and "local path" in r.output and not (Path.cwd() / "s3:").exists()
    for args in (["--workers", "2", "--engine", "ray"], ["--threads-per-actor", "2"]):
        r = CliRunner().invoke(main, ["infer", str(tmp_path / "imgs"), "--model", model, *args,
                                      "--out", str(tmp_path / "x.csv")])
        assert r.exit_code == 2, args


def test_output_inside_the_input_folder_is_marked_as_ours_not_classified(tiny_bundle, tmp_path):
    from conftest import write_xrays
    from pneumo_edge.edge.cluster import read_rows

    write_xrays(tmp_path, n=2)
    out = tmp_path / "rows.parquet"
    model = str(tiny_bundle / "model.onnx")
    run([tmp_path, "--model", model, "--engine", "ray", "--out", out])
    run([tmp_path, "--model", model, "--engine", "ray", "--out", out, "--resume"])
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert {n for n, r in rows.items() if r["status"] in ("ok", "rejected")} == {"x0.png", "x1.png"}
    own = {n: r for n, r in rows.items() if n == ".lock" or n.startswith("part-")}
    assert own and all(r["status"] == "skipped" and r["error"] == "an output of this run" for r in own.values())


def test_a_run_that_fails_before_its_first_row_leaves_no_dataset_folder(tmp_path):
    from conftest import write_xrays

    (tmp_path / "imgs").mkdir()
    write_xrays(tmp_path / "imgs", n=1)
    bad_model = tmp_path / "model.onnx"
    bad_model.write_text("not a model")
    out = tmp_path / "rows"
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "imgs"), "--model", str(bad_model), "--engine", "ray",
                                  "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert not out.exists()
    out.mkdir()  # a folder the user made is left as it was
    (out / "mine.txt").write_text("keep")
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "imgs"), "--model", str(bad_model), "--engine", "ray",
                                  "--out", str(out)])
    assert r.exit_code == 2 and sorted(p.name for p in out.iterdir()) == ["mine.txt"]
