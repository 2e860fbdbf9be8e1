"""Distillation (``ssdxl distill``): an SSD-1B- or Vega-style student of any SDXL-architecture model.

``layout`` (which blocks remain; ``layouts.json`` holds SSD-1B and Vega as keep fractions) ->
``student`` (which teacher unit and layer each student part comes from; the student's weights) ->
``selection`` (measured layer importance) -> ``features`` (matched feature pairs, forward hooks) ->
``losses`` (task + output KD + feature KD) -> ``loop`` (one stage's training) -> ``run`` (stages,
student folder, report). ``docs/distillation-method.md`` explains the method.
"""

from ssdxl.distill.config import DistillConfig, Stage
from ssdxl.distill.layout import Layout, Rule, resolve_layout
from ssdxl.distill.run import distill, preview_plan
from ssdxl.distill.student import Plan, build_student, make_plan

__all__ = [
    "DistillConfig",
    "Layout",
    "Plan",
    "Rule",
    "Stage",
    "build_student",
    "distill",
    "make_plan",
    "preview_plan",
    "resolve_layout",
]
