"""Regenerate ``shape_classifier.safetensors``: ``python -m ssdxl.evaluation.train_classifier``.

A separate module so running it does not re-import the package's classifier module.
"""

import torch
from safetensors.torch import save_file

from ssdxl.evaluation.classifier import (
    NOVEL_FRACTION,
    WEIGHTS,
    accuracy,
    per_class_accuracy,
    real_crops,
    train_shape_classifier,
)


def main() -> None:
    """Retrain the shipped weights and report accuracy on unseen real renders, per shape too."""
    torch.set_num_threads(1)  # bit-identical regeneration regardless of core count
    model = train_shape_classifier()
    # With and without the novel shapes: the base-only figures stay comparable with older weights.
    for novel_fraction in (NOVEL_FRACTION, 0.0):
        for degrade in (False, True):
            x, y = real_crops(seed=12345, n_images=2000, degrade=degrade, novel_fraction=novel_fraction)
            kind = ("degraded" if degrade else "clean") + ("" if novel_fraction else ", base shapes only")
            per_class = ", ".join(f"{k} {v:.4f}" for k, v in per_class_accuracy(model, x, y).items())
            print(f"accuracy on {len(y)} {kind} held-out real crops: {accuracy(model, x, y):.4f} ({per_class})")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS))
    print(f"saved {WEIGHTS} ({WEIGHTS.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
