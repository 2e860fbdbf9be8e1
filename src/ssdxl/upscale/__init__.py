"""Making images and latents larger: pixel upscalers (``spandrel`` models, Lanczos, nearest), tiled
for bounded memory, and the latent upscale modes of A1111's hires fix.

spandrel is imported only when a model file is loaded, so importing this package stays cheap.
"""

from ssdxl.upscale.image import MAX_UPSCALE_SIDE, upscale_image
from ssdxl.upscale.latent import LATENT_MODES, is_latent_mode, upscale_latents
from ssdxl.upscale.models import UpscaleModel, load_upscaler
from ssdxl.upscale.registry import BUILTIN_FILTERS, Upscaler, list_upscalers, resolve_upscaler

__all__ = [
    "BUILTIN_FILTERS",
    "LATENT_MODES",
    "MAX_UPSCALE_SIDE",
    "UpscaleModel",
    "Upscaler",
    "is_latent_mode",
    "list_upscalers",
    "load_upscaler",
    "resolve_upscaler",
    "upscale_image",
    "upscale_latents",
]
