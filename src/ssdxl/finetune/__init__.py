"""Fine-tuning a trained model (``ssdxl finetune``): LoRA, DreamBooth, textual inversion, full; and the loop
``ssdxl distill lcm`` runs in.

``config`` (what a run is) -> ``data`` (buckets, class images) -> ``trainees`` (what trains, what is
written) -> ``objective`` (the loss) -> ``loop.finetune`` (the run).
"""

from ssdxl.finetune.config import FinetuneConfig
from ssdxl.finetune.loop import finetune

__all__ = ["FinetuneConfig", "finetune"]
