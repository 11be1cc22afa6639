"""Small-sample statistics shared by the score terms and the calibration (numpy only)."""

from __future__ import annotations

import numpy as np

MIN_SAMPLES = 2  # one sample has no spread: a standardisation or a covariance from it would be meaningless


def ledoit_wolf_covariance(samples) -> np.ndarray:
    """Ledoit & Wolf (2004) shrinkage towards a scaled identity, for few samples of a few terms.

    S is the sample covariance (1/n), m = tr(S)/p; the shrinkage b²/d² weighs how noisy S is (b², the spread
    of the per-sample outer products around S) against how far S is from m·I (d²), both in the p-normalised
    Frobenius norm.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = x - x.mean(axis=0)
    n, p = x.shape
    sample_cov = x.T @ x / n
    scale = np.trace(sample_cov) / p
    distance = np.sum(np.square(sample_cov - scale * np.eye(p))) / p
    noise = (np.sum(np.sum(np.square(x), axis=1) ** 2) - n * np.sum(np.square(sample_cov))) / (n * n * p)
    shrinkage = 0.0 if distance == 0 else min(noise, distance) / distance
    return shrinkage * scale * np.eye(p) + (1.0 - shrinkage) * sample_cov


def whitening_matrix(samples) -> np.ndarray:
    """Symmetric inverse square root of the shrunk covariance of `samples` (N, p) (ZCA whitening)."""
    covariance = ledoit_wolf_covariance(samples)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, 1e-6 * max(float(eigenvalues.max()), 1e-12))
    return (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
