"""Fréchet distance between two feature sets, made usable at small sample counts.

An adherence suite yields tens to a few hundred objects, fewer than is comfortable for a
64x64 covariance: the plain sample covariance is then noisy and rank-deficient. Both
covariances are therefore estimated with Ledoit-Wolf shrinkage towards a scaled identity
(the analytically optimal blend for the sample size), which keeps them well-conditioned and
lowers the variance of the distance. The matrix square root uses symmetric
eigendecompositions, which stay real and stable for positive semi-definite inputs.
FIDs are only comparable between runs with the same suite (same sample count).
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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets ``a`` (n, d) and ``b`` (m, d): Gaussian fits with shrunk covariances."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least two feature vectors per set")
    ca, cb = shrunk_covariance(a), shrunk_covariance(b)
    root_a = _psd_sqrt(ca)
    # tr sqrt(Ca Cb) = tr sqrt(sqrt(Ca) Cb sqrt(Ca)), and the latter is symmetric PSD.
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cb @ root_a), 0, None)))
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(max(diff @ diff + np.trace(ca) + np.trace(cb) - 2 * cross, 0.0))
