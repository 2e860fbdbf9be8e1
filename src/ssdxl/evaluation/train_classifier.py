"""Regenerate ``shape_classifier.safetensors``: ``python -m ssdxl.evaluation.train_classifier``.

A separate module so running it does not re-import the package's classifier module.
"""

import torch
from safetensors.torch import save_file

from ssdxl.evaluation.classifier import WEIGHTS, accuracy, real_crops, train_shape_classifier


def main() -> None:
    """Retrain the shipped weights and report accuracy on unseen real renders."""
    torch.set_num_threads(1)  # bit-identical regeneration regardless of core count
    model = train_shape_classifier()
    for degrade in (False, True):
        x, y = real_crops(seed=12345, n_images=2000, degrade=degrade)
        kind = "degraded" if degrade else "clean"
        print(f"accuracy on {len(y)} {kind} held-out real crops: {accuracy(model, x, y):.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS))
    print(f"saved {WEIGHTS} ({WEIGHTS.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
