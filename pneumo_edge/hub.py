"""Publish a bundle to the Hugging Face hub.

    push("export", repo_id="me/pneumo-edge-lite0", dry_run=True)   # lists what would go up
"""

from __future__ import annotations

import os
from pathlib import Path

from .edge.errors import HubError, ModelError
from .edge.hub import hub_offline

BUNDLE_REQUIRED = ("model.onnx", "model.int8.onnx", "model.safetensors", "config.json", "README.md",
                   "results.json", "parity.json")
UPLOAD_SUFFIXES = {".onnx", ".safetensors", ".json", ".md", ".png"}


def bundle_files(bundle: str | Path) -> list[Path]:
    """The files of a bundle that are uploaded; refuses a bundle with a required file missing."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ModelError(f"bundle folder '{bundle}' does not exist")
    missing = [f for f in BUNDLE_REQUIRED if not (bundle / f).is_file()]
    if missing:
        raise ModelError(f"bundle '{bundle}' is incomplete: missing {', '.join(missing)}")
    return sorted(p for p in bundle.rglob("*") if p.is_file() and p.suffix in UPLOAD_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(bundle).parts))


def push(bundle: str | Path, repo_id: str, dry_run: bool = False, private: bool = False,
         token: str | None = None) -> list[Path]:
    files = bundle_files(bundle)
    if dry_run:
        return files
    from huggingface_hub import HfApi, get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubError("no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN")
    if hub_offline():
        raise HubError("HF_HUB_OFFLINE is set: cannot upload")
    api = HfApi(token=token)
    try:  # a short probe first, so that no network fails in seconds
        api.whoami()
    except Exception as e:
        raise HubError(f"cannot reach the Hugging Face hub or the token is invalid ({e.__class__.__name__})") from None
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(bundle), repo_type="model",
                          allow_patterns=[str(p.relative_to(bundle)) for p in files],
                          commit_message="Upload pneumo-edge bundle")
    except Exception as e:
        raise HubError(f"upload to '{repo_id}' failed: {e.__class__.__name__}: {str(e)[:160]}") from None
    return files
