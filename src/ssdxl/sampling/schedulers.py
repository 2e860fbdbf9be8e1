"""Schedulers by the names users already know: Segmind's, AUTOMATIC1111's and ComfyUI's.

A name is a base sampler plus an optional sigma-schedule suffix (``Karras`` or ``Exponential``),
so ``DPM++ 2M Karras``, ``dpmpp_2m_karras`` and Segmind's ``DPM2 Karras`` all resolve. Each
resolves to a diffusers scheduler class and config overrides, built from the model's own
scheduler config (betas, spacing) so every sampler sees the noise schedule the model was
trained with.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from ssdxl.errors import UserError


@dataclass(frozen=True)
class Sampler:
    name: str  # canonical display name, written into PNG infotexts
    cls: str  # diffusers class name
    overrides: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS = (
    Sampler("Euler", "EulerDiscreteScheduler", aliases=("euler",)),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", aliases=("euler ancestral", "euler_ancestral")),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("LMS", "LMSDiscreteScheduler"),
    Sampler("DPM2", "KDPM2DiscreteScheduler", aliases=("dpm 2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("dpm 2 ancestral", "dpm2 ancestral")),
    Sampler(
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        aliases=("dpm multi", "dpmpp 2m", "dpm++ multistep"),
    ),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        aliases=("dpmpp 2m sde",),
    ),
    Sampler(
        "DPM Single",
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "dpmsolver++"},
        aliases=("dpm++ singlestep", "dpmpp 2s"),
    ),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, aliases=("pndm",)),
    Sampler("DDPM", "DDPMScheduler"),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("uni pc",)),
    Sampler("DEIS", "DEISMultistepScheduler"),
    Sampler("LCM", "LCMScheduler"),
    Sampler("TCD", "TCDScheduler"),
)
SIGMA_SUFFIXES = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas"}
_BY_KEY = {_key: s for s in SAMPLERS for _key in (s.name.lower(), *s.aliases)}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass(frozen=True)
class SchedulerChoice:
    sampler: Sampler
    sigmas: str | None  # "karras", "exponential" or None

    @property
    def name(self) -> str:
        return self.sampler.name + (f" {self.sigmas.capitalize()}" if self.sigmas else "")

    def build(self, model_config: dict[str, Any]) -> SchedulerMixin:
        cls = getattr(diffusers, self.sampler.cls)
        overrides = dict(self.sampler.overrides)
        if self.sigmas:
            overrides[SIGMA_SUFFIXES[self.sigmas]] = True
        config = {k: v for k, v in model_config.items() if not k.startswith("_")}
        return cls.from_config({**config, **overrides})


def resolve_scheduler(name: str) -> SchedulerChoice:
    """Parse a scheduler name in any of the supported spellings; unknown names raise UserError."""
    key = _normalise(name)
    sigmas = None
    for suffix in SIGMA_SUFFIXES:
        if key.endswith(" " + suffix):
            key, sigmas = key[: -len(suffix) - 1], suffix
    sampler = _BY_KEY.get(key)
    if sampler is None:
        raise UserError(f"unknown scheduler {name!r}; choose one of: {', '.join(scheduler_names())}")
    cls = getattr(diffusers, sampler.cls)
    if sigmas and SIGMA_SUFFIXES[sigmas] not in _init_params(cls):
        raise UserError(f"scheduler {sampler.name!r} has no {sigmas.capitalize()} sigma schedule")
    return SchedulerChoice(sampler, sigmas)


def _init_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def scheduler_names() -> list[str]:
    """Every canonical name, with the Karras variants users ask for most."""
    names = []
    for sampler in SAMPLERS:
        names.append(sampler.name)
        if "use_karras_sigmas" in _init_params(getattr(diffusers, sampler.cls)):
            names.append(f"{sampler.name} Karras")
    return names
