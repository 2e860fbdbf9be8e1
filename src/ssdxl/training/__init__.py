"""Training an SDXL-architecture text-to-image model from scratch (``ssdxl train``).

``config`` (what a run is) -> ``data`` (bucketed batches) -> ``autoencoder`` (stage 1) ->
``denoiser`` (stage 2) -> ``export`` (the diffusers folder); ``run.train`` chains them.
"""

from ssdxl.training.config import TrainConfig
from ssdxl.training.run import train

__all__ = ["TrainConfig", "train"]
