"""Models side by side: one prompt (or several) and seed(s) through each model, with varied settings, as a
labelled grid, the cells' PNGs, and per-model timings, memory, size and quality (``ssdxl compare``).

``plan_comparison`` lays out the cells, ``run_comparison`` generates them one model at a time,
``write_comparison`` writes the grid, cells, Markdown and JSON.
"""

from ssdxl.compare.plan import ModelSpec, Plan, Vary, parse_model, parse_vary, plan_comparison
from ssdxl.compare.report import write_comparison
from ssdxl.compare.run import Comparison, GroupResult, run_comparison

__all__ = [
    "Comparison",
    "GroupResult",
    "ModelSpec",
    "Plan",
    "Vary",
    "parse_model",
    "parse_vary",
    "plan_comparison",
    "run_comparison",
    "write_comparison",
]
