"""Hub-facing metadata of a bundle: the model card, config.json in timm's layout, flat ONNX metadata keys."""

import json
import re
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from pneumo_edge.train.checkpoint import hub_config, load_checkpoint, read_config
from pneumo_edge.edge.errors import ModelError
from pneumo_edge.edge.meta import META_KEY, read_meta
from pneumo_edge.edge.model import EdgeModel

SHIPPED = Path(__file__).resolve().parents[2] / "export"
FLAT_KEYS = ("description", "labels", "image_size", "threshold", "temperature", "version", "license", "date")
TIMM_KEYS = ("architecture", "num_classes", "num_features", "label_names", "model_args", "pretrained_cfg")


def entries(obj):
    """(key, value) of every entry of a JSON document at any depth (list items keyed by their index)."""
    pairs = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in pairs:
        yield k, v
        yield from entries(v)


def assert_hub_layout(config: dict, size: int) -> None:
    assert all(k in config for k in TIMM_KEYS), sorted(config)
    assert config["num_classes"] == 2 and config["label_names"] == ["NORMAL", "PNEUMONIA"]
    assert config["model_args"]["in_chans"] == 1  # where timm's save_for_hf records the input channels
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [1, size, size] and cfg["num_classes"] == 2
    assert len(cfg["mean"]) == len(cfg["std"]) == 1 and cfg["crop_mode"] and cfg["interpolation"]
    assert config["data_fingerprint"] and "train_config" in config  # pneumo-edge's own keys
    assert not {"threshold", "temperature"} & {k for k, _ in entries(config)}  # the ONNX files own the rule
    strings = [v for _, v in entries(config) if isinstance(v, str)]
    machine = [s for s in strings if s.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", s)]
    assert not machine, machine


def assert_flat_keys(path: Path) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    info = session.get_modelmeta()
    props, meta = info.custom_metadata_map, read_meta(path)
    assert META_KEY in props and all(k in props for k in FLAT_KEYS), sorted(props)
    assert json.loads(props["labels"]) == list(meta.labels)
    assert json.loads(props["image_size"]) == [meta.preprocess.size] * 2
    assert float(props["threshold"]) == meta.threshold and float(props["temperature"]) == meta.temperature
    assert props["license"] == meta.license and props["date"] == meta.created
    doc = info.description  # the model's doc_string
    assert doc and "\n" not in doc and f"{meta.threshold:.4f}" in doc and "not a medical device" in doc


# ---------------------------------------------------------------- the shipped bundle

@pytest.mark.skipif(not (SHIPPED / "README.md").is_file(), reason="no shipped bundle")
def test_shipped_card_metadata_goes_through_huggingface_hub():
    from huggingface_hub import ModelCard

    card = ModelCard.load(SHIPPED / "README.md")
    data = card.data
    assert data.base_model == "timm/tf_efficientnet_lite0.in1k" and data.library_name == "timm"
    assert data.license == "apache-2.0" and data.pipeline_tag == "image-classification"
    assert data.datasets == ["hf-vision/chest-xray-pneumonia"] and "medical-imaging" in data.tags
    op = json.loads((SHIPPED / "results.json").read_text())["test"]["at_operating_point"]
    seeds = json.loads((SHIPPED / "seeds.json").read_text())["summary"]
    got = {(r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert got[("specificity", "Specificity")] == round(op["specificity"], 4)
    assert got[("recall", "Sensitivity")] == round(op["recall"], 4)
    assert got[("roc_auc", "ROC-AUC")] == round(op["roc_auc"], 4)
    assert got[("accuracy", "Accuracy")] == round(op["accuracy"], 4)
    assert round(seeds["specificity"]["mean"], 4) in [v for (t, _), v in got.items() if t == "specificity"]
    assert "## How to use" in card.text
    assert "pneumo-edge infer" in card.text and "pneumo-edge validate" in card.text
    assert 'pneumo_edge.load("model.int8.onnx")' in card.text and ".predict(" in card.text


@pytest.mark.skipif(not (SHIPPED / "README.md").is_file(), reason="no shipped bundle")
def test_shipped_card_header_is_what_report_renders():
    from huggingface_hub import ModelCard

    from pneumo_edge.bundle.report import model_card

    assert ModelCard(model_card(SHIPPED)).data.to_dict() == ModelCard.load(SHIPPED / "README.md").data.to_dict()


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no shipped bundle")
def test_shipped_config_is_timm_layout_without_machine_paths():
    from timm.models._hub import load_model_config_from_path

    config = json.loads((SHIPPED / "config.json").read_text())
    assert_hub_layout(config, 224)
    pretrained_cfg, name, model_args = load_model_config_from_path(SHIPPED)  # timm's own reader
    assert name == "tf_efficientnet_lite0" and model_args["in_chans"] == 1 and pretrained_cfg["num_classes"] == 2
    flat = read_config(SHIPPED)  # and ours: the same preprocessing as the ONNX file states
    assert flat["preprocess"] == read_meta(SHIPPED / "model.onnx").preprocess.to_dict()
    assert flat["train_config"]["seed"] == 42 and flat["model"] == name


@pytest.mark.skipif(not (SHIPPED / "model.onnx").is_file(), reason="no shipped bundle")
def test_shipped_onnx_files_carry_flat_keys_and_a_doc_string():
    for name in ("model.onnx", "model.int8.onnx"):
        assert_flat_keys(SHIPPED / name)


# ---------------------------------------------------------------- a freshly exported bundle

def test_export_writes_flat_keys_hub_config_and_card(tiny_bundle, tiny_checkpoint):
    from huggingface_hub import ModelCard

    for name in ("model.onnx", "model.int8.onnx"):
        assert_flat_keys(tiny_bundle / name)
    run = json.loads((tiny_checkpoint / "config.json").read_text())
    assert run["data"].startswith("/")  # the training run records where its data was; the bundle must not
    assert_hub_layout(json.loads((tiny_bundle / "config.json").read_text()), 64)
    card = ModelCard.load(tiny_bundle / "README.md")  # `pneumo-edge export` alone leaves a card for `push`
    assert card.data.base_model is None  # the tiny model was trained from scratch
    assert not card.data.eval_results and "not evaluated" in card.text


def test_card_takes_metrics_only_from_results_of_these_weights(tiny_bundle, tiny_eval, tmp_path):
    from huggingface_hub import ModelCard

    from pneumo_edge.bundle.hub import push
    from pneumo_edge.bundle.report import write_model_card

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    shutil.copy(tiny_eval / "results.json", b / "results.json")
    write_model_card(b)
    op = json.loads((b / "results.json").read_text())["test"]["at_operating_point"]
    got = {r.metric_type: r.metric_value for r in ModelCard.load(b / "README.md").data.eval_results}
    assert got == {k: round(op[k], 4) for k in ("roc_auc", "accuracy", "recall", "specificity")}
    assert b / "README.md" in push(b, "me/x", dry_run=True)
    res = json.loads((b / "results.json").read_text())
    (b / "results.json").write_text(json.dumps({**res, "weights_sha256": "0" * 64}))  # another model's results
    write_model_card(b)
    assert not ModelCard.load(b / "README.md").data.eval_results


def test_flat_key_disagreeing_with_the_json_is_refused(tiny_bundle, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    for p in proto.metadata_props:
        if p.key == "threshold":
            p.value = "0.01"
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    with pytest.raises(ModelError, match="'threshold'"):
        EdgeModel(tmp_path / "edited.onnx")


# ---------------------------------------------------------------- both config layouts load

def test_run_layout_and_hub_layout_load_the_same_twin(tiny_checkpoint, tmp_path):
    import torch

    model, flat = load_checkpoint(tiny_checkpoint)  # a training run's config.json: the flat layout
    assert "pretrained_cfg" not in json.loads((tiny_checkpoint / "config.json").read_text())
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copy(tiny_checkpoint / "model.safetensors", hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps(hub_config(flat, model)))
    twin, back = load_checkpoint(hub)
    for k in ("model", "labels", "preprocess", "data_fingerprint", "weights_sha256", "validation"):
        assert back[k] == flat[k], k
    assert {"threshold", "temperature", "data"}.isdisjoint(back)
    assert back["train_config"]["seed"] == flat["train_config"]["seed"]
    x = torch.zeros(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    assert hub_config(back, twin) == json.loads((hub / "config.json").read_text())  # converting twice changes nothing


def test_reexport_from_a_bundle_takes_the_rule_from_its_onnx_file(tiny_bundle):
    from pneumo_edge.bundle.export import operating_point

    meta = read_meta(tiny_bundle / "model.onnx")
    assert operating_point(tiny_bundle, read_config(tiny_bundle), None) == (meta.threshold, meta.temperature)
