"""Unit tests for the training parts: augmentation, learning-rate schedule, EMA, perturbations, study rule."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pneumo_edge.train.augment import AugmentConfig, augment, center_box, crop_batch, random_box
from pneumo_edge.train.perturb import PERTURBATIONS, perturbed_views
from pneumo_edge.studies.recipes import TIE_MARGIN, pick
from pneumo_edge.train.fit import EMA, TrainConfig, lr_at

OFF = AugmentConfig(crop_scale=None, flip=False, max_rot=0.0, scale=0.0, shift=0.0, jitter=0.0, gamma=0.0,
                    blur_p=0.0, noise_p=0.0)


def test_augment_keeps_shape_and_range():
    x = torch.rand(6, 1, 32, 32)
    cfg = AugmentConfig(jitter=0.3, gamma=0.5, blur_p=1.0, noise_p=1.0, noise_std=0.2)
    y = augment(x.clone(), torch.Generator().manual_seed(0), cfg)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert not torch.allclose(y, x)


def test_augment_at_zero_strength_is_identity():
    x = torch.rand(4, 1, 32, 32)
    y = augment(x.clone(), torch.Generator().manual_seed(0), OFF)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_augment_is_reproducible_from_the_generator():
    x = torch.rand(4, 1, 32, 32)
    cfg = AugmentConfig(gamma=0.4, blur_p=0.5, noise_p=0.5)
    a = augment(x.clone(), torch.Generator().manual_seed(3), cfg)
    b = augment(x.clone(), torch.Generator().manual_seed(3), cfg)
    assert torch.equal(a, b)


def test_random_boxes_stay_inside_the_film_and_cover_the_declared_area():
    rng = np.random.default_rng(0)
    h, w = 200, 300
    areas = []
    for _ in range(300):
        left, top, right, bottom = random_box(h, w, rng, (0.35, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        areas.append((right - left) * (bottom - top) / (h * w))
    assert min(areas) >= 0.35 - 1e-9 and max(areas) <= 1.0 + 1e-9
    assert np.std(areas) > 0.05  # the framing really varies


def test_crop_batch_without_random_framing_is_the_inference_center_crop():
    from pneumo_edge.edge.imaging import resize_gray, to_unit

    rng = np.random.default_rng(0)
    films = [rng.integers(0, 256, (40, 70), dtype=np.uint8), rng.integers(0, 256, (64, 48), dtype=np.uint8)]
    x = crop_batch(films, np.array([0, 1]), 32, rng, AugmentConfig(crop_scale=None))
    for i, f in enumerate(films):
        np.testing.assert_array_equal(x[i, 0].numpy(), to_unit(resize_gray(f, 32, "center-crop-bilinear")))
    assert center_box(40, 70) == (15, 0, 55, 40)


def test_lr_schedule_warms_up_peaks_and_decays():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine falls
    assert lrs[-1] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 89 / 90))))
    probe = TrainConfig(lr=1e-3, warmup_steps=10, probe_lr=5e-3)
    assert lr_at(3, 100, probe, probe_steps=20) == 5e-3
    assert lr_at(20, 100, probe, probe_steps=20) == pytest.approx(1e-4)  # fine-tune warm-up restarts


def test_ema_tracks_weights_and_copies_integer_buffers():
    model = nn.BatchNorm1d(3)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model, step=1000)  # past the warm-up: decay 0.9
    assert torch.allclose(ema.state["weight"], torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    assert int(ema.state["num_batches_tracked"]) == 7
    ema2 = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema2.update(model, step=0)  # warm-up: decay min(0.999, 1/10) lets the first steps count
    assert torch.allclose(ema2.state["weight"], torch.full((3,), 0.1 * 2.0 + 0.9 * 4.0))


def test_perturbed_views_cover_the_declared_set_and_change_pixels():
    rng = np.random.default_rng(1)
    films = [rng.integers(20, 235, (60, 90), dtype=np.uint8) for _ in range(3)]
    views = perturbed_views(films, 32)
    assert list(views) == list(PERTURBATIONS)
    for name, v in views.items():
        assert v.shape == (3, 32, 32) and v.dtype == np.uint8
        if name != "clean":
            assert not np.array_equal(v, views["clean"]), name


def _score(spec_t, nll, minutes=10.0):
    return {"mean": {"specificity_at_target": spec_t, "nll": nll}, "train_minutes": minutes}


def test_study_rule_prefers_specificity_then_nll_within_the_margin():
    assert pick({"a": _score(0.90, 0.1), "b": _score(0.95, 0.3)})[0] == "b"
    close = 0.95 - TIE_MARGIN / 2
    assert pick({"a": _score(close, 0.1), "b": _score(0.95, 0.3)})[0] == "a"  # tie on specificity: lower NLL
    assert pick({"a": _score(0.95, 0.1, 30), "b": _score(0.95, 0.1, 12)})[0] == "b"  # then shorter training
