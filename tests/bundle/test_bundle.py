import json

from click.testing import CliRunner

from pneumo_edge.bundle.build import build_bundle
from pneumo_edge.cli import main


def test_build_bundle_end_to_end(tiny_checkpoint, tiny_data, tiny_eval, tmp_path):
    """The last step of `make reproduce`: export, copy evaluation, Grad-CAM, guard report, model card."""
    import pneumo_edge.bundle.export as ox

    ev = tiny_eval
    out = tmp_path / "bundle"
    # The tiny model's INT8 twin is not held to the real model's INT8 gate; fp32 parity still is.
    build_bundle(str(tiny_checkpoint), str(ev), str(tiny_data), str(out),
                 gate=ox.GateConfig(int8_min_agreement=0.0, int8_max_auroc_delta=1.0,
                 heatmap_int8_min_corr=0.0))
    for f in ("model.onnx", "model.int8.onnx", "model.safetensors", "config.json", "results.json", "roc.png",
              "parity.json", "guard.json", "guard.md", "README.md", "train_results.json",
              "gradcam/contact_sheet.png"):
        assert (out / f).is_file(), f
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "\nlicense: apache-2.0\n" in card
    assert "Not a medical device" in card.replace("**", "")
    assert json.loads((out / "guard.json").read_text())["ood_overall"]["n"] > 50


def test_bundle_cli_refuses_a_non_empty_out_without_force(tiny_checkpoint, tiny_data, tiny_eval, tmp_path):
    ev = tiny_eval
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    r = CliRunner().invoke(main, ["bundle", str(tiny_checkpoint), "--results", str(ev), "--data", str(tiny_data),
                                  "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output and "Traceback" not in r.output
    assert (out / "keep.txt").read_text() == "user file" and not (out / "model.onnx").exists()
