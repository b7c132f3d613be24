"""Publish a bundle to the Hugging Face hub.

    push("export", repo_id="me/pneumo-edge-lite0", dry_run=True)   # lists what would go up

Only regular files inside the bundle go up, each named explicitly (no glob patterns, no symlinks).
"""

from __future__ import annotations

import os
from pathlib import Path

from .edge.errors import HubError, ModelError
from .edge.hub import REPO_ID, hub_offline

BUNDLE_REQUIRED = ("model.onnx", "model.int8.onnx", "model.safetensors", "config.json", "README.md",
                   "results.json", "parity.json")
UPLOAD_SUFFIXES = {".onnx", ".safetensors", ".json", ".md", ".png"}


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed id before anything else (no network, no token needed)."""
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise HubError(f"'{repo_id}' is not a Hugging Face repo id (expected user/name, e.g. me/pneumo-edge-lite0)")


def bundle_files(bundle: str | Path) -> list[Path]:
    """The regular files of a bundle that are uploaded; symlinks are refused, never followed."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ModelError(f"bundle folder '{bundle}' does not exist")
    missing = [f for f in BUNDLE_REQUIRED if not (bundle / f).is_file()]
    if missing:
        raise ModelError(f"bundle '{bundle}' is incomplete: missing {', '.join(missing)}")
    links = [p for p in bundle.rglob("*") if p.is_symlink()]
    if links:  # a link could point anywhere on this machine: upload nothing rather than its target
        raise ModelError(f"bundle '{bundle}' contains a symbolic link ({links[0].relative_to(bundle)}): "
                         "copy the file in instead")
    return sorted(p for p in bundle.rglob("*") if p.is_file() and p.suffix in UPLOAD_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(bundle).parts))


def push(bundle: str | Path, repo_id: str, dry_run: bool = False, private: bool = False,
         token: str | None = None) -> list[Path]:
    check_repo_id(repo_id)
    files = bundle_files(bundle)
    if dry_run:
        return files
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

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
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise HubError(f"'{repo_id}' exists and is public; --private will not upload into it "
                           "(make it private on the hub first, or push without --private)")
        # One explicit operation per file: names are paths, never glob patterns.
        ops = [CommitOperationAdd(path_in_repo=p.relative_to(bundle).as_posix(), path_or_fileobj=str(p))
               for p in files]
        api.create_commit(repo_id=repo_id, repo_type="model", operations=ops,
                          commit_message="Upload pneumo-edge bundle")
    except HubError:
        raise
    except Exception as e:
        raise HubError(f"upload to '{repo_id}' failed: {e.__class__.__name__}: {str(e)[:160]}") from None
    return files
