"""Bundle metadata is checked field by field at load: a guard or monitor whose numbers are NaN, infinite, out of
range, of the wrong type or size, or JSON nested without end, is refused in one line naming the field, by the API
and by every command that opens a model. Each bad file is a copy of the shipped model restamped (edge/stamp.py)."""

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pneumo_edge
from conftest import write_xrays
from pneumo_edge.cli import main
from pneumo_edge.edge.errors import ModelError
from pneumo_edge.edge.meta import BundleMeta, check_flat, read_meta
from pneumo_edge.edge.metafields import MAX_DEPTH, MAX_ITEMS, parse
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.stamp import graph_bytes, stamp_file

SHIPPED = Path(__file__).resolve().parents[2] / "export" / "model.int8.onnx"
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped export/model.int8.onnx is absent")


@dataclasses.dataclass(frozen=True)
class RawMeta(BundleMeta):
    """A BundleMeta whose stored JSON is `raw`, as written: what a hand edit or a hostile file holds."""

    raw: str = ""

    def to_json(self) -> str:
        return self.raw


@pytest.fixture(scope="module")
def shipped() -> BundleMeta:
    return read_meta(SHIPPED)


def restamp(shipped: BundleMeta, folder: Path, raw: str, name: str = "bad.onnx") -> Path:
    fields = {f.name: getattr(shipped, f.name) for f in dataclasses.fields(BundleMeta)}
    dst = folder / name
    stamp_file(SHIPPED, dst, RawMeta(**fields, raw=raw))
    assert graph_bytes(dst) == graph_bytes(SHIPPED)  # only the metadata differs
    return dst


def edited(shipped: BundleMeta, dotted: str, value) -> str:
    """The shipped metadata's JSON with one field (a.b.c) set to `value` (NaN and inf as JSON's NaN/Infinity)."""
    d = copy.deepcopy(shipped.to_dict())
    *parents, last = dotted.split(".")
    target = d
    for p in parents:
        target = target[p]
    target[last] = value
    return json.dumps(d)


def _repack(s: str, n: int, value: float) -> str:
    import base64

    a = np.frombuffer(base64.b64decode(s), np.float32).copy()
    a[n] = value
    return base64.b64encode(a.tobytes()).decode()


def _bad_cases(m: BundleMeta) -> list[tuple[str, object, str]]:
    """(field, bad value, words the one-line error must hold)."""
    ood, mon = m.ood, m.monitor
    return [
        ("ood.threshold", math.nan, "'ood.threshold' must be a finite number"),
        ("ood.threshold", math.inf, "'ood.threshold' must be a finite number"),
        ("ood.threshold", 0, "'ood.threshold'"),
        ("ood.max_chroma", math.nan, "'ood.max_chroma'"),
        ("ood.max_chroma", 1.0, "'ood.max_chroma'"),
        ("ood.stat_lo", [-1e308] * 3, "'ood.stat_lo/stat_hi'"),
        ("ood.stat_hi", [1e308] * 3, "'ood.stat_lo/stat_hi'"),
        ("ood.stat_hi", list(ood["stat_lo"]), "lo < hi"),
        ("ood.stat_lo", [0.1, 0.01], "'ood.stat_lo' must be a list of 3 numbers"),
        ("ood.dim", "1280", "'ood.dim' must be an integer"),
        ("ood.k", ood["dim"] + 1, "'ood.k'"),
        ("ood.classes", True, "'ood.classes'"),
        ("ood.means", "!!!!" + ood["means"][4:], "'ood.means' is not base64"),
        ("ood.means", ood["means"][:-8], "'ood.means' holds"),
        ("ood.means", _repack(ood["means"], 3, np.nan), "'ood.means' holds non-finite"),
        ("ood.components", 12345, "'ood.components' must be base64"),
        ("ood.eigvals", [-1.0] * ood["k"], "'ood.eigvals'"),
        ("ood.eigvals", [1.0] * (ood["k"] - 1), "'ood.eigvals' must be a list of"),
        ("ood.residual_var", "0.02", "'ood.residual_var'"),
        ("ood.margin", math.nan, "'ood.margin'"),
        ("ood.orientation.threshold", math.nan, "'ood.orientation.threshold'"),
        ("ood.orientation.threshold", 1.0, "'ood.orientation.threshold'"),
        ("ood.orientation.bias", "x", "'ood.orientation.bias'"),
        ("ood.polarity.grid", 3, "'ood.polarity.weights'"),
        ("ood.polarity", "on", "'ood.polarity' must be an object"),
        ("ood", [1, 2], "'ood' must be an object"),
        ("monitor.alarm_threshold", math.nan, "'monitor.alarm_threshold'"),
        ("monitor.alarm_threshold_probability_only", -math.inf, "'monitor.alarm_threshold_probability_only'"),
        ("monitor.window", 0, "'monitor.window' must be an integer in [1, "),
        ("monitor.window", -5, "'monitor.window'"),
        ("monitor.window", 200.5, "'monitor.window'"),
        ("monitor.prob_freq", mon["prob_freq"][:-1], "'monitor.prob_freq'"),
        ("monitor.prob_edges", sorted(mon["prob_edges"], reverse=True), "'monitor.prob_edges' must be in increasing"),
        ("monitor.guard_freq", [0.5] * len(mon["guard_freq"]), "'monitor.guard_freq' must sum to 1"),
        ("monitor.positive_rate", 1.5, "'monitor.positive_rate'"),
        ("cam.weights", _repack(m.cam["weights"], 0, np.inf), "'cam.weights' holds non-finite"),
        ("cam.shape", "2x1280", "'cam.shape'"),
        ("preprocess.mean", math.nan, "'preprocess.mean'"),
        ("target_sensitivity", "high", "'target_sensitivity'"),
        ("model", {"name": "x"}, "'model' must be a string"),
    ]


CASES = [c[0] + "=" + repr(c[1])[:20] for c in _bad_cases(read_meta(SHIPPED))] if SHIPPED.is_file() else []


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text[-2000:]
    return lines[0]


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_the_api_refuses_each_bad_field_by_name(shipped, tmp_path, case):
    field, value, words = _bad_cases(shipped)[case]
    bad = restamp(shipped, tmp_path, edited(shipped, field, value))
    with pytest.raises(ModelError) as e:
        pneumo_edge.load(bad)
    message = str(e.value)
    assert words in message and "\n" not in message and str(bad) in message, message


def test_every_command_gives_one_line_naming_the_field(shipped, tmp_path):
    from test_serve import free_port

    (tmp_path / "films").mkdir()
    film = write_xrays(tmp_path / "films", 1)[0]
    rows = tmp_path / "rows.csv"
    rows.write_text("path,status,label,probability,guard_score\nx.png,ok,NORMAL,0.1,0.2\n")
    runner = CliRunner()
    for field, value, words in (("ood.threshold", math.nan, "'ood.threshold'"),
                                ("ood.dim", "1280", "'ood.dim'"),
                                ("monitor.window", 0, "'monitor.window'"),
                                ("monitor.alarm_threshold", math.nan, "'monitor.alarm_threshold'")):
        bad = str(restamp(shipped, tmp_path, edited(shipped, field, value)))
        for args in (["info", bad], ["infer", film, "--model", bad, "--out", str(tmp_path / "out.csv"), "--force"],
                     ["monitor", str(rows), "--model", bad, "--out", str(tmp_path / "m.png"), "--force"],
                     ["serve", "--model", bad, "--port", str(free_port())]):
            r = runner.invoke(main, args)
            assert r.exit_code == 2, (args[0], r.output, r.exception)
            assert words in one_error_line(r.output), (args[0], r.output)
    assert not (tmp_path / "m.png").exists()


def test_json_nested_without_end_is_one_line_not_a_traceback(shipped, tmp_path):
    d = shipped.to_dict()
    deep = json.dumps(d)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    bad = restamp(shipped, tmp_path, deep)
    with pytest.raises(ModelError, match="nests deeper than"):
        pneumo_edge.load(bad)
    assert "nests deeper" in one_error_line(CliRunner().invoke(main, ["info", str(bad)]).output)
    shallow = json.dumps({**d, "x": json.loads("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2))})
    with pytest.raises(ModelError, match=r"field 'x(\[0\])+' nests deeper than 16 levels"):
        pneumo_edge.load(restamp(shipped, tmp_path, shallow, "shallow.onnx"))
    wide = json.dumps({**d, "x": [0] * (MAX_ITEMS + 1)})
    with pytest.raises(ModelError, match=f"field 'x' holds {MAX_ITEMS + 1} entries"):
        pneumo_edge.load(restamp(shipped, tmp_path, wide, "wide.onnx"))
    with pytest.raises(ModelError, match="not valid JSON"):
        pneumo_edge.load(restamp(shipped, tmp_path, json.dumps(d)[:-3], "cut.onnx"))


def test_a_guard_of_another_width_than_the_graph_is_refused(shipped, tmp_path):
    from pneumo_edge.edge.guard import Guard

    rng = np.random.default_rng(0)
    g = Guard.from_meta(shipped.ood)
    small = Guard(means=rng.normal(size=(2, 4)), components=np.eye(4)[:2], eigvals=np.array([2.0, 1.0]),
                  residual_var=0.5, threshold=7.0, stat_lo=g.stat_lo, stat_hi=g.stat_hi)
    text = json.dumps({**shipped.to_dict(), "ood": small.to_meta()})
    assert BundleMeta.from_json(text).ood["dim"] == 4  # consistent in itself
    with pytest.raises(ModelError, match=r"'ood.dim' \(4\) does not match the graph's 'embedding' output \(1280"):
        EdgeModel(restamp(shipped, tmp_path, text))


def test_the_shipped_metadata_passes_and_scores_as_before(shipped, tmp_path):
    same = restamp(shipped, tmp_path, shipped.to_json(), "same.onnx")
    (tmp_path / "films").mkdir()
    films = write_xrays(tmp_path / "films", 2)
    a, b = pneumo_edge.load(SHIPPED).predict(films), pneumo_edge.load(same).predict(films)
    assert [r["probability"] for r in a] == [r["probability"] for r in b]
    assert [r["guard_score"] for r in a] == [r["guard_score"] for r in b]
    fp32 = SHIPPED.with_name("model.onnx")
    if fp32.is_file():
        assert EdgeModel(fp32, threads=1).guard is not None


def test_a_flat_key_nested_without_end_disagrees_instead_of_crashing(shipped):
    with pytest.raises(ModelError, match="metadata key 'threshold'.*disagrees"):
        check_flat({"threshold": "[" * 100_000}, shipped, "x.onnx")


def test_parse_bounds_size_before_reading():
    from pneumo_edge.edge import metafields

    with pytest.raises(ModelError, match="MB of JSON"):
        parse(" " * (metafields.MAX_META_CHARS + 1), "x.onnx")
    with pytest.raises(ModelError, match="is not text"):
        parse(b"{}", "x.onnx")
