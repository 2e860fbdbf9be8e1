"""Fréchet distance between two feature sets, made usable at small sample counts.

An adherence suite yields tens to a few hundred objects, fewer than is comfortable for a
64x64 covariance: the plain sample covariance is then noisy and rank-deficient. Both
covariances are therefore estimated with Ledoit-Wolf shrinkage towards a scaled identity
(the analytically optimal blend for the sample size), which keeps them well-conditioned and
lowers the variance of the distance. The matrix square root uses symmetric
eigendecompositions, which stay real and stable for positive semi-definite inputs.
FIDs are only comparable between runs with the same suite (same sample count).
``gaussian_frechet_distance`` is the distance alone; the Inception FID of ``ssdxl.evaluation.metrics``
gives it plain sample covariances, as torch-fidelity and torchmetrics do.
"""

from __future__ import annotations

import numpy as np


def shrunk_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance of rows of ``x`` (n, d), shrunk towards ``mean(var) * I``."""
    n, d = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    target_gap = float(np.sum((s - mu * np.eye(d)) ** 2))
    if target_gap == 0.0:
        return s
    sq = np.sum(xc**2, axis=1)
    # sum_k ||x_k x_k^T - S||_F^2, expanded so no (n, d, d) tensor is built.
    spread = float(np.sum(sq**2) - 2 * np.sum((xc @ s) * xc) + n * np.sum(s**2)) / n**2
    shrink = min(spread, target_gap) / target_gap
    return shrink * mu * np.eye(d) + (1 - shrink) * s


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def covariance_factor(x: np.ndarray) -> np.ndarray:
    """F with F F^T the unbiased sample covariance of rows of ``x`` (n, d): the centred rows themselves
    when there are no more of them than dimensions, so few samples in many dimensions stay cheap."""
    n, d = x.shape
    xc = (x - x.mean(axis=0)) / np.sqrt(n - 1)
    return xc.T if n <= d else _psd_sqrt(xc.T @ xc)


def gaussian_frechet_distance(
    mean_a: np.ndarray, factor_a: np.ndarray, mean_b: np.ndarray, factor_b: np.ndarray
) -> float:
    """||mu_a - mu_b||^2 + tr(Ca + Cb - 2 sqrt(Ca Cb)) for covariances given as factors, C = F F^T.

    The nonzero eigenvalues of Ca Cb are the squared singular values of Fa^T Fb, so tr sqrt(Ca Cb)
    is its nuclear norm: exact, and no d x d square root when the factors are thin.
    """
    cross = np.linalg.svd(factor_a.T @ factor_b, compute_uv=False).sum()
    diff = mean_a - mean_b
    return float(max(diff @ diff + np.sum(factor_a**2) + np.sum(factor_b**2) - 2 * cross, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets ``a`` (n, d) and ``b`` (m, d): Gaussian fits with shrunk covariances."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least two feature vectors per set")
    root_a, root_b = _psd_sqrt(shrunk_covariance(a)), _psd_sqrt(shrunk_covariance(b))
    return gaussian_frechet_distance(a.mean(axis=0), root_a, b.mean(axis=0), root_b)
