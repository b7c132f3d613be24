"""Publish a bundle to the Hugging Face hub.

    push("export", repo_id="me/pneumo-edge-lite0", dry_run=True)   # lists what would go up

Only the bundle's own files go up (manifest.BUNDLE_FILES: what export and bundle wrote), each named explicitly
(no glob patterns, no symlinks); anything else in the folder stays. The repository is private unless `public`,
and files that show patients (the contact sheet) stay unless `include_patient_images`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pneumo_edge.bundle.manifest import BY_NAME, present, required_names
from pneumo_edge.edge.errors import HubError, ModelError
from pneumo_edge.edge.hub import REPO_ID, hub_offline


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed id before anything else (no network, no token needed)."""
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise HubError(f"'{repo_id}' is not a Hugging Face repo id (expected user/name, e.g. me/pneumo-edge-lite0)")


def bundle_files(bundle: str | Path, include_patient_images: bool = False) -> list[Path]:
    """The bundle's own files that are uploaded; a symlink anywhere in the folder is refused, never followed."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ModelError(f"bundle folder '{bundle}' does not exist")
    missing = [f for f in required_names() if not (bundle / f).is_file()]
    if missing:
        raise ModelError(f"bundle '{bundle}' is incomplete: missing {', '.join(missing)}")
    links = [p for p in bundle.rglob("*") if p.is_symlink()]
    if links:  # a link could point anywhere on this machine: upload nothing rather than its target
        raise ModelError(f"bundle '{bundle}' contains a symbolic link ({links[0].relative_to(bundle)}): "
                         "copy the file in instead")
    return [bundle / f.name for f in present(bundle) if include_patient_images or not f.patient_images]


def left_out(bundle: str | Path, include_patient_images: bool = False) -> list[tuple[Path, str]]:
    """(file, why) for each file in the bundle folder that is not uploaded."""
    bundle = Path(bundle)
    out = []
    for p in sorted(bundle.rglob("*")):
        if not p.is_file():
            continue
        entry = BY_NAME.get(p.relative_to(bundle).as_posix())
        if entry is None:
            out.append((p, "not one of the bundle's files"))
        elif entry.patient_images and not include_patient_images:
            out.append((p, "shows patients' films (--include-patient-images to upload it)"))
    return out


def push(bundle: str | Path, repo_id: str, dry_run: bool = False, public: bool = False,
         include_patient_images: bool = False, token: str | None = None) -> list[Path]:
    check_repo_id(repo_id)
    private = not public
    files = bundle_files(bundle, include_patient_images)
    if dry_run:
        return files
    from huggingface_hub import (  # huggingface_hub: slow to import, only when the hub is used
        CommitOperationAdd,
        HfApi,
        get_token,
    )

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
            raise HubError(f"'{repo_id}' exists and is public; a push is private unless --public, so nothing "
                           "was uploaded (make it private on the hub first, or push with --public)")
        # One explicit operation per file: names are paths, never glob patterns.
        ops = [CommitOperationAdd(path_in_repo=p.relative_to(Path(bundle)).as_posix(), path_or_fileobj=str(p))
               for p in files]
        api.create_commit(repo_id=repo_id, repo_type="model", operations=ops,
                          commit_message="Upload pneumo-edge bundle")
    except HubError:
        raise
    except Exception as e:
        raise HubError(f"upload to '{repo_id}' failed: {e.__class__.__name__}: {str(e)[:160]}") from None
    return files
