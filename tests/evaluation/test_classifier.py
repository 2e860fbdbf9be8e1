"""The shipped shape classifier must be small, accurate on real renders, and reproducibly trainable."""

import torch

from ssdxl.evaluation.classifier import (
    WEIGHTS,
    accuracy,
    load_shape_classifier,
    per_class_accuracy,
    real_crops,
    train_shape_classifier,
)


def test_shipped_weights_are_small_and_accurate():
    assert WEIGHTS.stat().st_size < 1_000_000
    model = load_shape_classifier()
    for degrade in (False, True):
        x, y = real_crops(seed=777, n_images=150, degrade=degrade)
        assert accuracy(model, x, y) >= 0.98
        per_class = per_class_accuracy(model, x, y)
        assert "heart" in per_class and min(per_class.values()) >= 0.95, per_class


def test_training_is_deterministic():
    a = train_shape_classifier(seed=3, n_images=100, epochs=1, batch=32).state_dict()
    b = train_shape_classifier(seed=3, n_images=100, epochs=1, batch=32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
