"""Fold fits in worker processes (nirs/parallel.py): the same numbers as a fit in this
process, errors that keep their type and context, and a dead worker that fails its fit
rather than hang it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from nirs.config import expand
from nirs.datasets import load_tablet
from nirs.parallel import _TOKENS, fold_pool
from nirs.training import fit_fold, plan_folds

PIPELINE = ["SNV", "StandardScaler",
            {"split": {"class": "KFold", "params": {"n_splits": 3, "shuffle": True, "random_state": 0}}},
            {"model": {"class": "PLSRegression", "params": {"n_components": 6}}}]


@pytest.fixture(scope="module")
def tablet():
    return load_tablet(instrument=1)


def test_a_fold_fitted_in_a_worker_equals_the_same_fold_fitted_here(tablet):
    train, test = tablet
    pipeline = expand(PIPELINE)[0]
    pool = fold_pool(2)
    for plan in plan_folds(train, pipeline):
        there, here = pool.fit(train, pipeline, plan, test=test), fit_fold(train, pipeline, plan, test=test)
        assert [(r.partition, r.fold_id) for r in there.predictions] == [(r.partition, r.fold_id) for r in here.predictions]
        for a, b in zip(there.predictions, here.predictions):
            np.testing.assert_array_equal(a.y_pred, b.y_pred)
            np.testing.assert_array_equal(a.sample_indices, b.sample_indices)
        model = there.fitted[-1]
        np.testing.assert_array_equal(model.coef_, here.fitted[-1].coef_)


def test_an_error_in_a_worker_keeps_its_type_and_what_was_being_fitted(tablet):
    train, test = tablet
    bad = expand(["SNV", {"split": {"class": "KFold", "params": {"n_splits": 3}}},
                  {"model": {"class": "PLSRegression", "params": {"n_components": 700}}}])[0]
    plan = plan_folds(train, bad)[0]
    with pytest.raises(ValueError) as here:
        fit_fold(train, bad, plan, test=test)
    with pytest.raises(ValueError) as there:
        fold_pool(2).fit(train, bad, plan, test=test)
    assert str(there.value) == str(here.value)
    assert any("fold_0" in note for note in getattr(there.value, "__notes__", [])), there.value


def test_a_worker_that_dies_fails_its_fit_and_the_pool_recovers(tablet):
    train, test = tablet
    pipeline = expand(PIPELINE)[0]
    plan = plan_folds(train, pipeline)[0]
    pool = fold_pool(2)
    pool.fit(train, pipeline, plan, test=test)  # workers up
    slow = expand(["SNV", {"split": {"class": "KFold", "params": {"n_splits": 3}}},
                   {"model": {"class": "sklearn.ensemble.RandomForestRegressor",
                              "params": {"n_estimators": 400, "random_state": 0}}}])[0]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as thread:
        future = thread.submit(pool.fit, train, slow, plan_folds(train, slow)[0], test)
        time.sleep(1.0)
        for pid in list(pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception, match="(?i)terminated|killed|abruptly"):
            future.result(timeout=60)
    again = fold_pool(2).fit(train, pipeline, plan, test=test)  # a fresh worker takes over
    np.testing.assert_array_equal(again.predictions[0].y_pred,
                                  fit_fold(train, pipeline, plan, test=test).predictions[0].y_pred)


def test_dataset_tokens_are_dropped_with_their_dataset(tablet):
    train, _ = tablet
    copy = type(train)(X=train.X.copy(), wavelengths=train.wavelengths, sample_ids=train.sample_ids, y=train.y,
                       name="copy")
    pipeline = expand(PIPELINE)[0]
    fold_pool(1).fit(copy, pipeline, plan_folds(copy, pipeline)[0])
    key = id(copy)
    assert key in _TOKENS
    del copy
    assert key not in _TOKENS
