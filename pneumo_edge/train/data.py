"""Chest X-ray data: find the samples, carve a patient-level validation set, pre-decode.

A local folder laid out as `{train,val,test}/{NORMAL,PNEUMONIA}/` is read through
`datasets`' imagefolder builder; anything else is taken as a hub dataset id.

    ds = load_splits("../shared/data/chest_xray")
    train, val, info = carve_validation(ds.train_pool, fraction=0.1, seed=42)
    images, labels, bad = decode_all(train, size=224)
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo_edge.edge.errors import DataError, HubError, ImageError, ModelError
from pneumo_edge.edge.hub import HUB_TIMEOUT_S, hub_offline
from pneumo_edge.edge.imaging import IMAGE_SUFFIXES, load_gray, resize_gray
from pneumo_edge.edge.meta import LABELS  # noqa: F401 - the class order, one owner; also data's public name
from pneumo_edge.edge.patients import patient_id  # noqa: F401 - also data's public name
from pneumo_edge.edge.progress import track
from pneumo_edge.edge.targets import DEFAULT_DATA

DEFAULT_HUB_DATASET = DEFAULT_DATA


@dataclass(frozen=True)
class Sample:
    name: str  # file name, carries the patient id
    label: int  # index into LABELS
    path: str | None = None
    data: bytes | None = None  # hub copies may hold bytes only

    def source(self) -> str | bytes:
        return self.path if self.path is not None else self.data


@dataclass
class Splits:
    train_pool: list[Sample]  # official train + official val: validation is carved from it
    test: list[Sample]
    origin: str
    official_val: list[Sample] = field(default_factory=list)


def _check_layout(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"'{root}' is not laid out as {{train,val,test}}/{{NORMAL,PNEUMONIA}}/: "
                f"missing '{root / split}'"
            )
        for label in LABELS:
            folder = root / split / label
            if not folder.is_dir():
                raise DataError(f"missing class folder '{folder}'")
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
                raise DataError(f"class folder '{folder}' is empty (no image files)")


def _from_imagefolder(root: Path) -> dict[str, list[Sample]]:
    import datasets  # the [train] extra, only for hub data

    datasets.disable_progress_bars()
    dd = datasets.load_dataset("imagefolder", data_dir=str(root))
    out: dict[str, list[Sample]] = {}
    for split, ds in dd.items():
        names = ds.features["label"].names
        ds = ds.cast_column("image", datasets.Image(decode=False))
        samples = []
        for row in ds:
            path = row["image"]["path"]
            label = LABELS.index(names[row["label"]].upper())
            samples.append(Sample(name=Path(path).name, label=label, path=path))
        out[split] = samples
    return out


def _from_hub(repo_id: str) -> dict[str, list[Sample]]:
    import datasets  # the [train] extra, only for hub data
    from huggingface_hub import (  # huggingface_hub: slow to import, only when the hub is used
        HfApi,
        snapshot_download,
    )

    def fail(why: str) -> HubError:
        return HubError(f"could not load dataset '{repo_id}' from the Hugging Face hub ({why}). Point --data at "
                        "a local copy laid out as {train,val,test}/{NORMAL,PNEUMONIA}/, "
                        "e.g. --data ../shared/data/chest_xray")

    offline = hub_offline()
    try:  # a cached copy needs no network at all
        local = snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except Exception:
        local = None
        if offline:
            raise fail("HF_HUB_OFFLINE is set and no cached copy exists") from None
        try:  # one short probe, so that no network costs seconds, not minutes of retries
            HfApi().dataset_info(repo_id, timeout=HUB_TIMEOUT_S)
        except Exception as e:
            raise fail(e.__class__.__name__) from None
    try:
        dd = datasets.load_dataset(local or repo_id)
    except Exception as e:
        raise fail(f"{e.__class__.__name__}: {str(e)[:120]}") from None
    out: dict[str, list[Sample]] = {}
    for split, ds in dd.items():
        names = ds.features["label"].names
        ds = ds.cast_column("image", datasets.Image(decode=False))
        samples = []
        for i, row in enumerate(ds):
            img = row["image"]
            name = Path(img.get("path") or f"{split}-{i:05d}").name
            label = LABELS.index(names[row["label"]].upper())
            samples.append(Sample(name=name, label=label, data=img["bytes"], path=None))
        out[split] = samples
    return out


def load_splits(data: str) -> Splits:
    """Resolve `data` (local folder or hub id) into train pool and test samples."""
    root = Path(data).expanduser()
    is_hub_id = bool(re.fullmatch(r"[\w-]+/[\w.-]+", data)) and not data.startswith(".")
    if root.exists() or not is_hub_id:
        _check_layout(root)
        by_split = _from_imagefolder(root)
        origin = str(root.resolve())
    else:
        by_split = _from_hub(data)
        origin = f"hf://datasets/{data}"
    val = by_split.get("validation", [])
    if "train" not in by_split or "test" not in by_split:
        raise DataError(f"'{data}' has no train and test splits (found {sorted(by_split)})")
    return Splits(train_pool=by_split["train"] + val, test=by_split["test"], origin=origin,
                  official_val=val)


def _content_hash(s: Sample) -> str:
    data = s.data if s.data is not None else Path(s.path).read_bytes()
    return hashlib.sha256(data).hexdigest()


@dataclass
class SplitInfo:
    grouping: str  # "patient" or "image-hash"
    n_train: int
    n_val: int
    n_groups_train: int
    n_groups_val: int
    val_class_counts: dict[str, int]

    def describe(self) -> str:
        return (f"validation: {self.n_val} images from {self.n_groups_val} {self.grouping} groups "
                f"({', '.join(f'{k} {v}' for k, v in self.val_class_counts.items())}); "
                f"training: {self.n_train} images from {self.n_groups_train} groups")


def carve_validation(pool: list[Sample], fraction: float = 0.1, seed: int = 42
                     ) -> tuple[list[Sample], list[Sample], SplitInfo]:
    """Stratified split grouped by patient, so no patient sits on both sides.

    Sources without patient ids in their names fall back to grouping by image
    hash, which still keeps byte-identical duplicates together.
    """
    from sklearn.model_selection import (
        StratifiedGroupKFold,  # scikit-learn: an extra, only when this runs
    )

    if not 0.0 < fraction < 0.5:
        raise DataError(f"validation fraction must be in (0, 0.5), got {fraction}")
    ids = [patient_id(s.name) for s in pool]
    if all(ids):
        grouping = "patient"
    else:
        grouping = "image-hash"
        warnings.warn("file names carry no patient id: validation is grouped by image hash instead", stacklevel=2)
        ids = [_content_hash(s) for s in pool]
    labels = np.array([s.label for s in pool])
    if min(Counter(labels.tolist()).get(k, 0) for k in range(len(LABELS))) < 2:
        raise DataError("each class needs at least 2 training images to carve a validation set")
    n_splits = max(2, round(1.0 / fraction))
    n_groups = len(set(ids))
    if n_groups < n_splits:
        raise DataError(f"only {n_groups} patients: too few to carve a {fraction:.0%} validation set")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    tr_idx, va_idx = next(sgkf.split(np.zeros(len(pool)), labels, groups=ids))
    train = [pool[i] for i in tr_idx]
    val = [pool[i] for i in va_idx]
    info = SplitInfo(
        grouping=grouping, n_train=len(train), n_val=len(val),
        n_groups_train=len({ids[i] for i in tr_idx}), n_groups_val=len({ids[i] for i in va_idx}),
        val_class_counts={LABELS[k]: int((labels[va_idx] == k).sum()) for k in range(len(LABELS))},
    )
    return train, val, info


def rebuild_split(config: dict, data: str) -> tuple[Splits, list[Sample], list[Sample], SplitInfo]:
    """The training and validation samples a checkpoint was trained on, carved again from its config."""
    tcfg = config.get("train_config")
    if not isinstance(tcfg, dict):
        raise ModelError("checkpoint config has no 'train_config': cannot rebuild its validation split")
    for key in ("val_fraction", "seed"):
        if key not in tcfg:
            raise ModelError(f"checkpoint config is missing 'train_config.{key}': cannot rebuild its validation split")
    splits = load_splits(data)
    fp = fingerprint(splits.train_pool)
    if config.get("data_fingerprint") and fp != config["data_fingerprint"]:
        warnings.warn(f"training data fingerprint {fp} differs from the checkpoint's {config['data_fingerprint']}: "
                      "validation is carved from different data", stacklevel=2)
    train, val, info = carve_validation(splits.train_pool, tcfg["val_fraction"], split_seed(tcfg))
    return splits, train, val, info


def split_seed(train_config: dict) -> int:
    """The seed that carved a run's validation split: its own `split_seed`, else its training seed."""
    s = train_config.get("split_seed")
    return int(train_config["seed"] if s is None else s)


def same_validation(a: dict, b: dict) -> bool:
    """Whether two runs' train_configs carve the same validation split (the data itself is checked apart).
    `max_train_images` does not matter: training is subsampled after validation is carved."""
    return split_seed(a) == split_seed(b) and a.get("val_fraction") == b.get("val_fraction")


def check_same_split(config: dict, ref: dict, keys: tuple[str, ...], who: str, than: str, fix: str) -> None:
    """Refuse a saved run that differs from `ref` in `keys` or was validated on another split: a soup
    member or a teacher that trained on `ref`'s validation images would leak them into its scores."""
    for key in keys:
        if config.get(key) != ref.get(key):
            raise ModelError(f"{who} differs in '{key}' from {than}")
    if not isinstance(config.get("train_config"), dict):
        raise ModelError(f"{who} has no train_config: its validation split is unknown")
    if not same_validation(config["train_config"], ref["train_config"]):
        raise ModelError(f"{who} was validated on another split than {than}: {fix}")


def fingerprint(samples: list[Sample]) -> str:
    """Short, order-independent digest of names, labels and sizes."""
    h = hashlib.sha256()
    for line in sorted(f"{s.label}/{s.name}:{len(s.data) if s.data is not None else os.path.getsize(s.path)}"
                       for s in samples):
        h.update(line.encode())
    return h.hexdigest()[:16]


def decode_all(samples: list[Sample], size: int, workers: int | None = None, progress: bool = True,
               rule: str | None = "center-crop-bilinear"
               ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray, list[tuple[str, str]]]:
    """Decode and resize every sample once, in parallel (Pillow releases the GIL).

    Returns uint8 images (N, size, size), int64 labels (N,) and the (name, reason)
    of every file that could not be decoded; those are skipped, not fatal.
    With `rule=None` the images keep their whole frame (a list of (H, W) arrays,
    JPEGs decoded at no less than `size`), for augmentation that picks its own crop.
    """
    workers = workers or min(4, os.cpu_count() or 1)

    def work(s: Sample):
        try:
            gray = load_gray(s.source(), size=size)
            return (gray if rule is None else resize_gray(gray, size, rule)), None
        except ImageError as e:
            return None, str(e)

    images, labels, bad = [], [], []
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(work, samples, chunksize=32)
        for s, (img, err) in track(zip(samples, it), len(samples), f"decode {size}px", enabled=progress):
            if err is None:
                images.append(img)
                labels.append(s.label)
            else:
                bad.append((s.name, err))
    if bad:
        shown = "; ".join(f"{n}: {r}" for n, r in bad[:5])
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {shown}" + (" ..." if len(bad) > 5 else ""), stacklevel=2)
    if not images:
        raise DataError("no readable images")
    return (images if rule is None else np.stack(images)), np.asarray(labels, np.int64), bad
