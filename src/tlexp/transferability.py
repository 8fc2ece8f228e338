"""Transferability scores on pooled features, no training: LogME and a k-NN probe (``tlexp-advise``'s evidence).

LogME (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021):
for features ``F`` (n x D) and one target column ``y`` (n; here a class's one-hot column), the Bayesian linear
model ``y = F w + e`` with prior ``w ~ N(0, I / alpha)`` and noise ``e ~ N(0, I / beta)`` has the marginal
``y ~ N(0, I / beta + F F^T / alpha)``, whose log density is the evidence

    L(alpha, beta) = n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log |A|

with ``A = alpha I + beta F^T F`` and the posterior mean ``m = beta A^-1 F^T y``. Through the SVD ``F = U diag(s) V^T``
(``sigma = s^2``, ``z = U^T y``, ``r = ||y||^2 - ||z||^2`` the part of ``y`` outside F's columns; missing
eigenvalues count as 0):

    ||m||^2 = sum beta^2 sigma z^2 / (alpha + beta sigma)^2,   ||F m - y||^2 = sum alpha^2 z^2 / (alpha + beta sigma)^2 + r,
    log |A| = sum log(alpha + beta sigma) + (D - k) log alpha     (k = min(n, D) singular values)

alpha and beta are maximised by the paper's fixed-point iteration (MacKay's): ``gamma = sum beta sigma / (alpha + beta
sigma)``, ``alpha <- gamma / ||m||^2``, ``beta <- (n - gamma) / ||F m - y||^2``, from alpha = beta = 1, here run until
alpha and beta change by less than ``tol`` (relative) rather than the paper's code's 11 steps, so it ends at a stationary
point. LogME is ``L / n`` at the maximum, averaged over the classes' columns. Higher means the features predict the
labels better with a linear model; it is a log density per sample (either sign, any magnitude), comparable
between models or features on the same data and labels, not an accuracy. Scaling all features by one factor leaves it
unchanged (alpha absorbs it); the features are used as they are, as in the paper.
"""

from __future__ import annotations

import numpy as np

KNN_NEIGHBOURS = 5
"""The k-NN probe's k (capped by the training set's size): a small fixed k, as in the usual k-NN feature evaluations."""


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, sigma): F's left singular vectors and squared singular values (float64)."""
    u, s, _ = np.linalg.svd(np.asarray(features, dtype=np.float64), full_matrices=False)
    return u, s ** 2


def _evidence(alpha, beta, sigma, z, residual, n, dim) -> tuple[float, float, float, float]:
    """(L / n, gamma, ||m||^2, ||F m - y||^2) at (alpha, beta) in the SVD's basis."""
    denominator = alpha + beta * sigma
    gamma = float(np.sum(beta * sigma / denominator))
    weight_norm = float(np.sum(beta ** 2 * sigma * z ** 2 / denominator ** 2))
    error = float(np.sum(alpha ** 2 * z ** 2 / denominator ** 2) + residual)
    log_det = float(np.sum(np.log(denominator)) + (dim - len(sigma)) * np.log(alpha))
    evidence = (n * np.log(beta) + dim * np.log(alpha) - n * np.log(2 * np.pi) - beta * error - alpha * weight_norm
                - log_det) / 2
    return float(evidence) / n, gamma, weight_norm, error


def evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence per sample ``L(alpha, beta) / n`` of one target column at fixed alpha and beta."""
    u, sigma = _spectrum(features)
    target = np.asarray(target, dtype=np.float64)
    z = u.T @ target
    return _evidence(alpha, beta, sigma, z, max(float(target @ target - z @ z), 0.0), *np.shape(features))[0]


def maximise_evidence(features: np.ndarray, target: np.ndarray, tol: float = 1e-10,
                      max_steps: int = 10_000) -> tuple[float, float, float]:
    """(L / n, alpha, beta) at the fixed point of the paper's iteration for one target column."""
    u, sigma = _spectrum(features)
    target = np.asarray(target, dtype=np.float64)
    return _maximise(sigma, u.T @ target, float(target @ target), *np.shape(features), tol, max_steps)


def _maximise(sigma, z, total, n, dim, tol=1e-10, max_steps=10_000) -> tuple[float, float, float]:
    residual = max(total - float(z @ z), 0.0)
    floor = 1e-12 * max(total, 1e-300)  # a target the features fit exactly: finite beta rather than a division by 0
    alpha = beta = 1.0
    for _ in range(max_steps):
        _, gamma, weight_norm, error = _evidence(alpha, beta, sigma, z, residual, n, dim)
        new_alpha = gamma / max(weight_norm, floor)
        new_beta = (n - gamma) / max(error, floor)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence(alpha, beta, sigma, z, residual, n, dim)[0], alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the maximised log evidence per sample of each class's one-hot column on ``features``, averaged over
    the classes present in ``labels`` (one SVD for all of them)."""
    labels = np.asarray(labels)
    u, sigma = _spectrum(features)
    scores = []
    for c in np.unique(labels):
        target = (labels == c).astype(np.float64)
        scores.append(_maximise(sigma, u.T @ target, float(target @ target), *np.shape(features))[0])
    return float(np.mean(scores))


def knn_accuracy(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 neighbours: int = KNN_NEIGHBOURS) -> float:
    """Validation accuracy of a k-NN classifier (Euclidean, uniform vote) on features standardised on the training set."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(neighbours, len(train[1]))))
    probe.fit(np.asarray(train[0]), np.asarray(train[1]))
    return float(probe.score(np.asarray(val[0]), np.asarray(val[1])))
