"""Heat maps on the edge: CAM from the ONNX 'features' output equals the twin's Grad-CAM at that layer."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from conftest import REAL, run_cli_without_torch, write_xrays, xray_like
from pneumo_edge.cli import main
from pneumo_edge.edge.decision import decide
from pneumo_edge.edge.cam import CamHead, heatmap_name, upsample_bilinear
from pneumo_edge.edge.errors import ModelError
from pneumo_edge.edge.imaging import load_image, normalize, resize_gray
from pneumo_edge.edge.meta import META_KEY
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.bundle.export import map_correlation

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "export"


def twin_gradcam(model, layer, x: np.ndarray, classes) -> np.ndarray:
    from pneumo_edge.bundle.gradcam import GradCAM

    with GradCAM(model, layer) as cam:
        return np.concatenate([cam(torch.from_numpy(x[i:i + 1]), int(c))[0] for i, c in enumerate(classes)])


def edge_vs_twin(edge: EdgeModel, twin, resized: np.ndarray) -> list[float]:
    from pneumo_edge.bundle.gradcam import features_layer

    x = normalize(resized, edge.spec)
    out = edge.run(x)
    classes = [list(edge.labels).index(decide(edge.meta, p).label) for p in edge.probability(out["logits"])]
    ours = edge.require_cam().maps(out["features"], classes, edge.spec.size)
    theirs = twin_gradcam(twin, features_layer(twin), x, classes)
    assert ours.shape == theirs.shape == (len(x), edge.spec.size, edge.spec.size)
    return [map_correlation(a, b) for a, b in zip(ours, theirs)]


def strip_heatmaps(src: Path, dst: Path) -> Path:
    """The file an older pneumo-edge wrote: no 'features' output, no 'cam' metadata."""
    proto = onnx.load(str(src))
    keep = [o for o in proto.graph.output if o.name != "features"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    meta = json.loads(proto.metadata_props[0].value)
    meta.pop("cam")
    meta["outputs"].pop("features")
    proto.metadata_props[0].value = json.dumps(meta)
    assert proto.metadata_props[0].key == META_KEY
    onnx.save(proto, str(dst))
    return dst


# ---------------------------------------------------------------- the maths

def test_upsampling_is_torch_bilinear_without_aligned_corners():
    a = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32)
    for h, w in ((224, 224), (64, 48), (7, 5), (3, 2)):
        ref = F.interpolate(torch.from_numpy(a)[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        np.testing.assert_allclose(upsample_bilinear(a, h, w), ref.numpy(), atol=1e-5)


def test_cam_head_round_trip_and_bad_metadata():
    rng = np.random.default_rng(1)
    head = CamHead.from_linear(rng.normal(size=(2, 16)), rng.normal(size=2))
    back = CamHead.from_meta(json.loads(json.dumps(head.to_meta())))
    np.testing.assert_array_equal(back.weights, head.weights)
    np.testing.assert_array_equal(back.bias, head.bias)
    feats = np.abs(rng.normal(size=(2, 16, 3, 3))).astype(np.float32)
    maps = back.maps(feats, [0, 1], 12)
    assert maps.shape == (2, 12, 12) and maps.min() >= 0 and np.isclose(maps.max(), 1)
    m = head.to_meta()
    for broken, why in (({**m, "shape": [3, 16]}, "cam.shape"), ({**m, "weights": "!!"}, "cam.weights"),
                        ({**m, "shape": [2, 8]}, "cam.weights"), ({k: v for k, v in m.items() if k != "bias"},
                                                                   "cam.bias")):
        with pytest.raises(ModelError, match=why):
            CamHead.from_meta(broken)


def test_heatmap_names_are_safe_and_distinct(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    names = {heatmap_name(p) for p in (a / "x.png", b / "x.png", a / "X.png", a / "x.jpeg")}
    assert len(names) == 4
    assert heatmap_name(a / "x.png") == heatmap_name(str(a / "." / "x.png"))  # one name per file
    for odd in ("../../etc/passwd", "a/..", ".hidden.png", "wei rd\n\x1b[31m.png", "/", "",
                os.fsdecode(b"caf\xe9.png"), "x" * 300 + ".png"):
        name = heatmap_name(odd)
        assert "/" not in name and not name.startswith(".") and name.endswith(".heatmap.png") and len(name) < 100
        assert all(c.isalnum() or c in "._-" for c in name), name


# ---------------------------------------------------------------- the exported file

def test_bundle_outputs_features_and_cam_equals_gradcam(tiny_bundle, tiny_checkpoint):
    from pneumo_edge.train.checkpoint import load_checkpoint

    edge = EdgeModel(tiny_bundle / "model.onnx")
    assert edge.output_names == ["logits", "embedding", "features"]
    assert edge.cam is not None and edge.meta.to_dict()["outputs"]["features"]
    twin, _ = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(5)
    resized = np.stack([resize_gray(xray_like(rng, i % 2 == 1), 64) for i in range(6)])
    assert min(edge_vs_twin(edge, twin, resized)) >= 0.99
    parity = json.loads((tiny_bundle / "parity.json").read_text())
    assert parity["cam"]["available"] and parity["cam"]["onnx_vs_twin_gradcam"]["min"] >= 0.99
    assert parity["cam"]["twin_layer"] == "bn2" and "int8_vs_fp32" in parity["cam"]
    int8 = EdgeModel(tiny_bundle / "model.int8.onnx")
    assert int8.cam is not None and "features" in int8.output_names


def test_old_bundle_has_no_cam_but_draws_the_shipped_maps(tiny_bundle, tmp_path):
    """The shipped map needs forward passes only: a file without the 'features' output still draws it."""
    import pneumo_edge
    from pneumo_edge.edge.heatmap import METHODS

    old = strip_heatmaps(tiny_bundle / "model.onnx", tmp_path / "old.onnx")
    m = EdgeModel(old)
    assert m.cam is None and m.predict_outputs == ["logits", "embedding"]
    with pytest.raises(ModelError, match="cannot make heat maps.*re-export"):
        m.require_cam()
    with pytest.raises(ModelError, match="cannot make heat maps"):
        METHODS["cam-contrast"].film_map(m, np.zeros((64, 64), np.uint8))
    img = tmp_path / "x.png"
    Image.fromarray(xray_like(np.random.default_rng(0), True)).save(img)
    assert "heatmap" in pneumo_edge.load(old, guard=False).predict(str(img), heatmap=True)
    r = CliRunner().invoke(main, ["infer", str(img), "--model", str(old), "--out", str(tmp_path / "p.csv"),
                                  "--heatmaps", str(tmp_path / "maps"), "--no-guard"])
    assert r.exit_code == 0 and len(list((tmp_path / "maps").iterdir())) == 1, r.output


def test_infer_writes_one_safe_overlay_per_classified_input(tiny_bundle, tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "in"
    (d / "one").mkdir(parents=True)
    (d / "two").mkdir()
    for folder in ("one", "two"):  # the same file name in two folders: two heat maps
        Image.fromarray(xray_like(rng, True)).save(d / folder / "same.png")
    Image.fromarray(xray_like(rng, False)).save(d / "one" / "weird name;$(x)..png")
    (d / "one" / "broken.png").write_bytes(b"not a png")
    maps = tmp_path / "maps"
    r = CliRunner().invoke(main, ["infer", str(d), "--model", str(tiny_bundle / "model.onnx"),
                                  "--out", str(tmp_path / "p.csv"), "--heatmaps", str(maps)])
    assert r.exit_code == 1, r.output  # the broken file is an error row
    assert "heat maps in" in r.output
    pngs = sorted(maps.iterdir())
    assert len(pngs) == 3 and all(p.name.endswith(".heatmap.png") for p in pngs)
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.width == 64 and im.height > 64
    assert not list(tmp_path.glob("*.heatmap.png")) and not list(d.rglob("*.heatmap.png"))


def test_explain_with_an_onnx_file_needs_no_torch(tiny_bundle, tmp_path):
    paths = write_xrays(tmp_path, seed=4)
    out = tmp_path / "cams"
    r = run_cli_without_torch(["explain", *paths, "--model", tiny_bundle / "model.onnx", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "P(pneumonia)" in r.stdout and "contact sheet" in r.stdout
    assert (out / "x0.cam.png").stat().st_size > 0 and (out / "contact_sheet.png").stat().st_size > 0
    # an .onnx file given as --bundle takes the same route; --layer belongs to the twin
    r2 = CliRunner().invoke(main, ["explain", paths[0], "--bundle", str(tiny_bundle / "model.onnx"),
                                   "--out", str(tmp_path / "c2"), "--target", "normal"])
    assert r2.exit_code == 0 and (tmp_path / "c2" / "x0.cam.png").is_file(), r2.output
    r3 = CliRunner().invoke(main, ["explain", paths[0], "--model", str(tiny_bundle / "model.onnx"),
                                   "--out", str(tmp_path / "c3"), "--layer", "conv_stem"])
    assert r3.exit_code == 2 and "--layer" in r3.output


def test_api_returns_the_heat_map_png(tiny_bundle, tmp_path):
    import io

    import pneumo_edge

    m = pneumo_edge.load(tiny_bundle)
    arr = xray_like(np.random.default_rng(0), True)
    r = m.predict(arr, heatmap=True)
    assert r.get("explained_class") == "PNEUMONIA" or r["guard_verdict"] == "rejected"  # evidence for PNEUMONIA
    with Image.open(io.BytesIO(r["heatmap_png"])) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert "heatmap_png" not in m.predict(arr)


BLANK = np.zeros((96, 80), np.uint8)  # every guard refuses an empty film (intensity check)


def test_no_heat_map_for_an_image_the_guard_refuses(tiny_bundle, tmp_path):
    import pneumo_edge

    m = pneumo_edge.load(tiny_bundle)
    refused = m.predict(BLANK, heatmap=True)
    assert refused["guard_verdict"] == "rejected" and "heatmap_png" not in refused
    assert "grey levels" in refused["guard_reason"]
    assert "heatmap_png" in pneumo_edge.load(tiny_bundle, guard=False).predict(BLANK, heatmap=True)

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(BLANK).save(d / "blank.png")
    Image.fromarray(xray_like(np.random.default_rng(3), True)).save(d / "x.png")
    maps = tmp_path / "maps"
    r = CliRunner().invoke(main, ["infer", str(d), "--model", str(tiny_bundle / "model.onnx"),
                                  "--out", str(tmp_path / "p.csv"), "--heatmaps", str(maps)])
    rows = {Path(row["path"]).name: row for row in csv.DictReader(open(tmp_path / "p.csv"))}
    assert rows["blank.png"]["status"] == "rejected", r.output
    assert rows["blank.png"]["guard_reason"] and not rows["blank.png"]["error"]  # refused: said why, no map
    accepted = [n for n, row in rows.items() if row["status"] == "ok"]
    assert len(list(maps.iterdir())) == len(accepted)
    assert not list(maps.glob("blank-*"))


@pytest.mark.parametrize("route", ["--model", "--bundle"])
def test_explain_draws_no_map_for_a_refused_image_and_says_why(tiny_bundle, tmp_path, route):
    paths = write_xrays(tmp_path, seed=5)[:1]
    Image.fromarray(BLANK).save(tmp_path / "blank.png")
    target = tiny_bundle / "model.onnx" if route == "--model" else tiny_bundle
    out = tmp_path / "maps"
    r = CliRunner().invoke(main, ["explain", paths[0], str(tmp_path / "blank.png"), route, str(target),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output  # a refusal is an answer, not a failure
    assert "blank.png: REJECTED_OOD, no heat map: guard: " in r.output and "grey levels outside" in r.output
    assert not list(out.glob("blank*")) and len([p for p in out.iterdir() if p.name != "contact_sheet.png"]) == 1
    drawn = CliRunner().invoke(main, ["explain", str(tmp_path / "blank.png"), route, str(target),
                                      "--out", str(tmp_path / "all"), "--no-guard"])
    assert drawn.exit_code == 0 and len(list((tmp_path / "all").glob("blank*"))) == 1, drawn.output


# ---------------------------------------------------------------- real X-rays, the shipped twin

@pytest.fixture(scope="module")
def shipped_with_features(tmp_path_factory):
    """The shipped twin's ONNX file with a 'features' output: the shipped one, else exported here."""
    if not (SHIPPED / "model.safetensors").is_file() or not REAL.is_dir():
        pytest.skip("needs the shipped twin (export/model.safetensors) and ../shared/data/chest_xray")
    from dataclasses import replace

    from pneumo_edge.train.checkpoint import load_checkpoint
    from pneumo_edge.edge.meta import read_meta
    from pneumo_edge.bundle.export import cam_metadata, export_onnx

    twin, _ = load_checkpoint(SHIPPED)
    shipped = EdgeModel(SHIPPED / "model.onnx")
    if shipped.cam is not None:
        return shipped, twin
    path = tmp_path_factory.mktemp("lite0") / "model.onnx"
    meta = replace(read_meta(SHIPPED / "model.onnx"), cam=cam_metadata(twin))
    export_onnx(twin, meta.preprocess, path, meta)
    return EdgeModel(path), twin


def test_cam_matches_twin_gradcam_on_real_test_xrays(shipped_with_features):
    edge, twin = shipped_with_features
    files = [sorted((REAL / "test" / c).iterdir())[i] for c in ("NORMAL", "PNEUMONIA") for i in (0, 7, 21)]
    spec = edge.spec
    resized = np.stack([resize_gray(load_image(f, size=spec.size)[0], spec.size, spec.resize) for f in files])
    corr = edge_vs_twin(edge, twin, resized)
    assert min(corr) >= 0.99, dict(zip([f.name for f in files], corr))
