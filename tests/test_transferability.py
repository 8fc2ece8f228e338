"""Transferability scores, checked independently: LogME's closed form is the log density of the target under the
model's marginal Gaussian (scipy), its fixed-point iteration ends at a maximum of the evidence, and features that carry
the labels score higher than random ones (also for the k-NN probe)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from tlexp.transferability import evidence, knn_accuracy, logme, maximise_evidence


@pytest.mark.parametrize("n, dim", [(6, 3), (4, 7)])  # more samples than features, and fewer
@pytest.mark.parametrize("alpha, beta", [(0.5, 2.0), (3.0, 0.7)])
def test_the_evidence_is_the_log_density_of_the_marginal_gaussian(n, dim, alpha, beta):
    rng = np.random.default_rng(n * dim)
    features, target = rng.normal(size=(n, dim)), rng.normal(size=n)
    marginal = multivariate_normal(np.zeros(n), np.eye(n) / beta + features @ features.T / alpha)
    assert evidence(features, target, alpha, beta) == pytest.approx(marginal.logpdf(target) / n, rel=1e-10)


@pytest.mark.parametrize("n, dim, noise", [(50, 4, 0.3), (30, 8, 1.0)])
def test_the_fixed_point_iteration_ends_at_a_maximum_of_the_evidence(n, dim, noise):
    # more samples than features: with fewer, the features can fit the target exactly and the maximum is at beta = inf
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n, dim))
    target = features @ rng.normal(size=dim) + noise * rng.normal(size=n)
    best, alpha, beta = maximise_evidence(features, target)
    assert 1e-3 < alpha < 1e3 and 1e-3 < beta < 1e3  # an interior point, where a stationary point means something
    assert best == pytest.approx(evidence(features, target, alpha, beta), rel=1e-12)
    for step in (1e-2, 1e-4):
        for a, b in ((step, 0), (-step, 0), (0, step), (0, -step), (step, step), (step, -step)):
            assert evidence(features, target, alpha * np.exp(a), beta * np.exp(b)) <= best + 1e-12
    grid = np.exp(np.linspace(-5, 5, 21))
    assert max(evidence(features, target, alpha * a, beta * b) for a in grid for b in grid) <= best + 1e-12


def test_features_that_carry_the_labels_score_higher_than_random_features():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    carrying = np.hstack([np.eye(4)[labels] + 0.5 * rng.normal(size=(300, 4)), rng.normal(size=(300, 16))])
    random = rng.normal(size=(300, 20))
    assert logme(carrying, labels) > logme(random, labels)
    assert logme(carrying * 100, labels) == pytest.approx(logme(carrying, labels), rel=1e-6)  # alpha absorbs the scale
    train, val = slice(0, 200), slice(200, 300)
    assert knn_accuracy((carrying[train], labels[train]), (carrying[val], labels[val])) > 0.5  # 4 classes: chance 0.25
    assert knn_accuracy((random[train], labels[train]), (random[val], labels[val])) < 0.4
