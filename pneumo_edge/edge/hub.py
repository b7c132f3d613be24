"""Fetch a bundle's ONNX file from the Hugging Face hub, failing fast when the hub cannot be reached.

    path = download_model("me/pneumo-edge-lite0", "model.int8.onnx")   # cached after the first call
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import HubError
from .targets import FP32

HUB_TIMEOUT_S = 8.0  # one short probe: no network costs seconds, not minutes of retries
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


# A model argument with one of these endings names a file, never a hub repository.
FILE_SUFFIXES = (".onnx", ".ort", ".safetensors", ".pt", ".pth", ".bin", ".json")
PATH_STARTS = ("../", "./", "/", "~", "..\\", ".\\")


def path_reason(text: str) -> str | None:
    """Why `text` can only be a path, not a hub id; None when it could be either."""
    start = next((p for p in PATH_STARTS if text.startswith(p)), None)
    if start or text in (".", ".."):
        return f"it starts with '{start or text}'"
    if "\\" in text:
        return "it holds a '\\'"
    if text.count("/") > 1:
        return "it has more than one '/'"
    suffix = next((s for s in FILE_SUFFIXES if text.lower().endswith(s)), None)
    return f"it ends in {suffix}" if suffix else None


def is_repo_id(text: str) -> bool:
    """The documented hub form 'user/repo', and nothing that could be meant as a path."""
    return bool(REPO_ID.fullmatch(text)) and path_reason(text) is None and not Path(text).exists()


def download_model(repo_id: str, filename: str = FP32.file) -> Path:
    """The cached file if present; otherwise one short probe, then the download."""
    # huggingface_hub loads only when a hub id is given: it costs every local run a third of a second.
    from huggingface_hub import (  # huggingface_hub: slow to import, only when the hub is used
        HfApi,
        hf_hub_download,
    )
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,  # huggingface_hub: slow to import, only when the hub is used
    )

    def fail(why: str) -> HubError:
        return HubError(f"no file or folder '{repo_id}' here, so it was tried as a hub repo id: cannot get "
                        f"'{filename}' from it ({why}); pass a local bundle folder or .onnx file to --model "
                        "instead, e.g. --model export/model.int8.onnx")

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except LocalEntryNotFoundError:  # not cached yet: the network decides
        if hub_offline():
            raise fail("HF_HUB_OFFLINE is set and no cached copy exists") from None
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
        return Path(hf_hub_download(repo_id, filename, etag_timeout=HUB_TIMEOUT_S))
    except Exception as e:
        raise fail(e.__class__.__name__) from None
