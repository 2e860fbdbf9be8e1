"""Prompt-adherence measurement: judge images against intended shapes-world scenes, plus FID."""

from ssdxl.evaluation.adherence import AdherenceReport, adherence_suite, evaluate, novel_suite
from ssdxl.evaluation.fid import frechet_distance
from ssdxl.evaluation.judge import Judge, SceneReading

__all__ = [
    "AdherenceReport",
    "Judge",
    "SceneReading",
    "adherence_suite",
    "evaluate",
    "frechet_distance",
    "novel_suite",
]
