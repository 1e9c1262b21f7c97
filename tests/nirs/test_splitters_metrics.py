import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nirs import metrics
from nirs.datasets import load_coffee, load_tablet
from nirs.splitters import SPXY, KennardStone


def _reference_maximin(D, n_train):
    """Textbook Kennard-Stone on a full distance matrix."""
    i, j = np.unravel_index(np.argmax(D), D.shape)
    chosen = [int(i), int(j)]
    while len(chosen) < n_train:
        rest = [k for k in range(len(D)) if k not in chosen]
        k = rest[int(np.argmax(D[np.ix_(rest, chosen)].min(axis=1)))]
        chosen.append(k)
    return sorted(chosen)


def test_kennard_stone_matches_the_textbook_algorithm():
    X = np.random.default_rng(1).normal(size=(40, 6))
    ks = KennardStone(test_size=10)
    assert ks.get_n_splits() == 1
    (train, val), = list(ks.split(X))
    assert train.tolist() == _reference_maximin(cdist(X, X), 30)
    assert sorted(train.tolist() + val.tolist()) == list(range(40))
    (train2, _), = list(KennardStone(test_size=10).split(X))
    np.testing.assert_array_equal(train, train2)  # deterministic


def test_spxy_matches_the_textbook_algorithm_and_needs_numeric_y():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    Dx, Dy = cdist(X, X), cdist(y[:, None], y[:, None])
    (train, val), = list(SPXY(test_size=0.2).split(X, y))
    assert train.tolist() == _reference_maximin(Dx / Dx.max() + Dy / Dy.max(), 24)
    assert len(val) == 6
    with pytest.raises(ValueError, match="needs the targets"):
        next(SPXY().split(X))
    with pytest.raises(ValueError, match="numeric targets"):
        next(SPXY().split(X, np.array(["a", "b"] * 15)))
    with pytest.raises(ValueError, match="test_size=29 leaves 1 training"):
        next(KennardStone(test_size=29).split(X))


def test_tablet_kennard_stone_keeps_the_extremes_in_calibration():
    cal, _ = load_tablet()
    (train, val), = list(KennardStone(0.25).split(cal.X))
    assert len(train) == 300 and len(val) == 100
    d = np.linalg.norm(cal.X - cal.X.mean(axis=0), axis=1)
    assert int(np.argmax(d)) in set(train.tolist())


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.5, 2.5, 4.5])
    s = metrics.score_all("regression", y, p)
    resid = p - y
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean(resid**2)))
    assert s["mae"] == pytest.approx(0.5)
    assert s["bias"] == pytest.approx(0.25)
    assert s["sep"] == pytest.approx(np.std(resid, ddof=1))
    assert s["rpd"] == pytest.approx(np.std(y, ddof=1) / np.std(resid, ddof=1))
    assert s["r2"] == pytest.approx(1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2))
    assert metrics.rmse(y, p) == s["rmse"]


def test_missing_scores_are_none_not_zero():
    one = metrics.score_all("regression", [1.0], [1.0])
    assert one["rmse"] == 0.0 and one["r2"] is None and one["sep"] is None and one["rpd"] is None
    assert all(v is None for v in metrics.score_all("regression", [], []).values())
    perfect = metrics.score_all("regression", [1.0, 2.0], [1.0, 2.0])
    assert perfect["rpd"] is None  # sep is 0: RPD is undefined, not infinite
    cls = metrics.score_all("classification", ["a", "b"], ["a", "a"])
    assert cls["log_loss"] is None and cls["accuracy"] == 0.5
    assert set(metrics.METRIC_DIRECTION) >= set(cls) | set(one)
    assert metrics.DEFAULT_METRIC == {"regression": "rmse", "classification": "accuracy"}


def test_classification_metrics_with_string_labels():
    y = np.array(["x", "y", "z", "x"], dtype=object)
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.6, 0.2, 0.2]])
    pred = np.array(["x", "y", "x", "x"], dtype=object)
    s = metrics.score_all("classification", y, pred, proba, classes=["x", "y", "z"])
    assert s["accuracy"] == 0.75
    assert s["balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3)
    assert s["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.3, 0.6])))
    unseen = metrics.score_all("classification", ["w"], ["x"], proba[:1], classes=["x", "y", "z"])
    assert unseen["log_loss"] is None


def test_coffee_loads_with_string_labels():
    coffee = load_coffee()
    assert coffee.X.shape == (60, 1841) and coffee.task_type == "classification"
    assert sorted(set(coffee.y)) == ["Brasil", "Ethiopia", "Vietnam"]


def test_scores_are_named_as_a_chemometrician_names_them():
    assert metrics.score_name("rmse", "val") == "RMSECV" and metrics.score_name("rmse", "test") == "RMSEP"
    assert metrics.score_name("accuracy", "val") == "accuracy (CV)"
    assert metrics.score_name("r2", "test") == "R² (test)"


def test_slope_and_summary_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.slope(y, 2 * y + 1) == pytest.approx(2.0)
    assert metrics.slope([1.0, 1.0], [1.0, 2.0]) is None  # no range: no line
    p = np.array([1.5, 2.5, 2.5, 4.5])
    summary = metrics.regression_summary(y, p)
    assert summary["n"] == 4 and summary["slope"] == pytest.approx(np.polyfit(y, p, 1)[0])
    assert summary["rpd"] == metrics.rpd(y, p) and summary["bias"] == pytest.approx(0.25)
