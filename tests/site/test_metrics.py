import numpy as np
import pytest

from pneumo_edge.site.metrics import (binary_metrics, bootstrap_ci, expected_calibration_error, fit_temperature,
                                 prob_from_logits, threshold_for_sensitivity)


def test_binary_metrics_hand_checked():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.95, 0.55])
    m = binary_metrics(y, p, 0.5)
    # TN=3 (0.1, 0.2, 0.3), FP=1 (0.6), FN=1 (0.4), TP=5
    assert m["confusion_matrix"] == [[3, 1], [1, 5]]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["recall"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(5 / 6)
    # AUROC: 24 positive-negative pairs, the negative 0.6 beats positives 0.4 and 0.55; 0.4 loses to 0.6 only
    # pairs won = 24 - (0.4 < 0.6) - (0.55 < 0.6) = 22
    assert m["roc_auc"] == pytest.approx(22 / 24)


def test_threshold_for_sensitivity_is_highest_that_meets_target():
    y = np.array([1] * 20 + [0] * 5)
    p = np.concatenate([np.linspace(0.05, 1.0, 20), np.full(5, 0.5)])
    t = threshold_for_sensitivity(y, p, 0.95)
    sens = ((p >= t) & (y == 1)).sum() / 20
    assert sens >= 0.95
    higher = np.sort(p[y == 1])[np.sort(p[y == 1]) > t][0]
    assert ((p >= higher) & (y == 1)).sum() / 20 < 0.95  # any higher threshold misses the target


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros_like(z), 3.0 * z], 1)  # three times too confident
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(y, prob_from_logits(logits, t)) < expected_calibration_error(
        y, prob_from_logits(logits))


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.6 + rng.random(300) * 0.5, 0, 1)
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n=200)
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi and hi - lo < 0.3, k


def test_temperature_is_applied_only_when_it_helps_held_out_validation(monkeypatch):
    import pneumo_edge.site.metrics as metrics

    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = np.stack([np.zeros_like(z), 4 * z], 1)  # true temperature 4
    cal = metrics.calibrate(overconfident, y)
    assert cal["temperature_check"]["applied"] and cal["temperature"] == pytest.approx(4, rel=0.15)
    monkeypatch.setattr(metrics, "fit_temperature", lambda logits, y: 0.1)  # a temperature that hurts
    cal = metrics.calibrate(overconfident, y)
    assert not cal["temperature_check"]["applied"] and cal["temperature"] == 1.0


def test_bootstrap_ci_by_patient_is_wider_when_a_patient_has_many_films():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(20) % 2, 10)  # 20 patients, 10 near-identical films each
    p = np.clip(np.repeat(0.3 + 0.4 * (np.arange(20) % 2) + rng.normal(0, 0.25, 20), 10), 0, 1)
    width = lambda ci: ci["accuracy"][1] - ci["accuracy"][0]  # noqa: E731
    by_image = bootstrap_ci(y, p, 0.5, n=300)
    by_patient = bootstrap_ci(y, p, 0.5, n=300, groups=np.repeat(np.arange(20), 10))
    assert width(by_patient) > 2 * width(by_image)


def test_numpy_roc_auc_and_average_precision_equal_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pneumo_edge.edge.stats import average_precision, roc_auc

    rng = np.random.default_rng(0)
    for n, levels in ((40, None), (200, None), (60, 5)):  # levels: heavy ties
        y = rng.integers(0, 2, n)
        p = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels
        p = np.where(y == 1, p + 0.2 * rng.random(n), p)
        assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
