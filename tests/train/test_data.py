import shutil

import pytest

from conftest import REAL, make_dataset, needs_real
from pneumo_edge.train.data import (Sample, carve_validation, decode_all, fingerprint, load_splits, patient_id)
from pneumo_edge.edge.errors import DataError


@pytest.mark.parametrize("name,pid", [
    ("person1946_bacteria_4874.jpeg", "PERSON1946"),
    ("person12_virus_6.jpeg", "PERSON12"),
    ("IM-0117-0001.jpeg", "IM-0117"),
    ("NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL2-IM-0587"),
    ("scan.png", None),
])
def test_patient_id(name, pid):
    assert patient_id(name) == pid


def test_patient_split_has_no_overlap_and_is_stratified(tiny_data):
    splits = load_splits(str(tiny_data))
    train, val, info = carve_validation(splits.train_pool, 0.25, seed=0)
    assert {patient_id(s.name) for s in train}.isdisjoint({patient_id(s.name) for s in val})
    assert len(train) + len(val) == len(splits.train_pool)
    assert info.grouping == "patient" and info.n_val == len(val)
    assert all(v > 0 for v in info.val_class_counts.values())


@needs_real
def test_real_patient_split_has_no_overlap():
    splits = load_splits(str(REAL))
    assert len(splits.train_pool) == 5232 and len(splits.test) == 624
    train, val, info = carve_validation(splits.train_pool, 0.1, seed=42)
    assert {patient_id(s.name) for s in train}.isdisjoint({patient_id(s.name) for s in val})
    assert 0.08 < info.n_val / len(splits.train_pool) < 0.12
    ratio = info.val_class_counts["PNEUMONIA"] / info.n_val
    assert abs(ratio - 4273 / 5856) < 0.05  # stratified


def test_no_patient_ids_falls_back_to_hash_groups():
    pool = [Sample(name=f"img{i}.png", label=i % 2, data=bytes([i % 7]) * 10) for i in range(40)]
    with pytest.warns(UserWarning, match="image hash"):
        train, val, info = carve_validation(pool, 0.25, seed=0)
    assert info.grouping == "image-hash"
    assert {s.data for s in train}.isdisjoint({s.data for s in val})  # duplicates stay together


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="missing .*train"):
        load_splits(str(tmp_path / "flat"))
    root = make_dataset(tmp_path / "d", n_train=2, n_val=1, n_test=2)
    for f in (root / "test" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="is empty"):
        load_splits(str(root))
    shutil.rmtree(root / "test" / "NORMAL")
    with pytest.raises(DataError, match="missing class folder"):
        load_splits(str(root))


def test_offline_hub_fails_fast(monkeypatch):
    import time

    from pneumo_edge.edge.errors import HubError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(HubError, match="--data"):
        load_splits("nobody/not-a-dataset-xyz")
    assert time.time() - t < 30


def test_corrupt_training_image_is_skipped_and_named(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=3, n_val=1, n_test=2)
    bad = root / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    bad.write_bytes(b"not a jpeg")
    samples = load_splits(str(root)).train_pool
    with pytest.warns(UserWarning, match="IM-9999-0001.jpeg"):
        images, labels, skipped = decode_all(samples, 32, progress=False)
    assert len(images) == len(samples) - 1 and images.shape[1:] == (32, 32)
    assert [n for n, _ in skipped] == ["IM-9999-0001.jpeg"]


def test_fingerprint_is_order_independent(tiny_data):
    pool = load_splits(str(tiny_data)).train_pool
    assert fingerprint(pool) == fingerprint(pool[::-1])
    assert fingerprint(pool) != fingerprint(pool[1:])
