"""ssdxl: text-to-image for the SDXL family (SDXL, SSD-1B, Segmind-Vega)."""

__version__ = "0.1.0"
