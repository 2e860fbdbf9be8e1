"""The shrunk-covariance FID must agree with the textbook formula where samples are plentiful."""

import numpy as np
import pytest
import scipy.linalg

from ssdxl.evaluation.fid import frechet_distance, shrunk_covariance


def _textbook(a, b):
    ca, cb = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    diff = a.mean(0) - b.mean(0)
    return diff @ diff + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)


def test_matches_textbook_fid_with_many_samples():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 6))
    b = rng.normal(size=(4000, 6)) * np.linspace(0.5, 2.0, 6) + 0.3
    assert frechet_distance(a, b) == pytest.approx(_textbook(a, b), rel=0.01)


def test_identical_sets_are_at_zero_and_few_samples_stay_finite():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 64))  # fewer samples than dimensions
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(frechet_distance(a, rng.normal(size=(20, 64))))
    assert np.linalg.matrix_rank(shrunk_covariance(a)) == 64
    with pytest.raises(ValueError):
        frechet_distance(a[:1], a)
