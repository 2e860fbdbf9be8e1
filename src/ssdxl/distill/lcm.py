"""``ssdxl distill lcm``: latent consistency distillation of an LCM-LoRA for any SDXL-family teacher
(the LCM-LoRA paper's recipe, what made Segmind's VegaRT from Vega).

A LoRA on the teacher's own UNet learns to jump from any point of the teacher's schedule straight to
the end of it. Per sample: a DDIM timestep ``t_n`` of the schedule cut into ``ddim_steps``; the
teacher (the UNet with the LoRA off) takes one classifier-free-guided DDIM step from ``t_n`` to
``t_{n-k}`` at a guidance scale drawn from a range (the LoRA has no guidance input, so it learns the
range's average, as LCM-LoRA does); the student's consistency output at ``t_n`` must match the
target network's at ``t_{n-k}`` (an EMA of the LoRA, under a pseudo-Huber loss on each sample's RMS
error, or L2). Both outputs use
the boundary scalings ``LCMScheduler`` samples with, so the file works with it as it is.

It runs in the fine-tuning loop (``ssdxl.finetune.loop``): same data, checkpoints, exact resume,
accelerate, validation images; only the objective differs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from ssdxl.errors import UserError
from ssdxl.finetune.config import FinetuneConfig
from ssdxl.finetune.loop import finetune
from ssdxl.finetune.objective import Losses, encode_latents
from ssdxl.finetune.trainees import LoraTrainee, Trainee
from ssdxl.models.components import Components
from ssdxl.training.data import Batch
from ssdxl.training.denoiser import TextConditioner

TARGET = "target"  # the peft adapter holding the EMA target weights
SIGMA_DATA = 0.5  # LCMScheduler's boundary condition constants
TIMESTEP_SCALING = 10.0


def distill_lcm(cfg: FinetuneConfig, resume: bool = False) -> Path:
    """Distil ``cfg.model`` (the teacher) into an LCM-LoRA at ``cfg.out``."""
    cfg.mode = "lcm"
    return finetune(cfg, resume, make_objective=ConsistencyObjective)


def guidance_range(cfg: FinetuneConfig, parts: Components) -> tuple[float, float]:
    """The CFG scales drawn per sample: the given range, else 3/4 to 3/2 of the teacher's default scale."""
    default = float(parts.defaults.get("guidance_scale", 5.0))
    low = cfg.guidance_min if cfg.guidance_min is not None else max(1.0, 0.75 * default)
    high = cfg.guidance_max if cfg.guidance_max is not None else max(low, 1.5 * default)
    return low, high


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at timesteps ``t``, exactly as ``LCMScheduler`` computes them when sampling."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


class DDIMSolver:
    """The teacher's training schedule cut into ``steps`` evenly spaced timesteps, and one DDIM step
    from each to the one before it (skipping ``skip`` training timesteps)."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int) -> None:
        total = len(alphas_cumprod)
        self.skip = total // steps
        self.timesteps = torch.arange(1, steps + 1) * self.skip - 1
        self.alphas = alphas_cumprod
        previous = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])
        self.alpha_prev = previous

    def to(self, device: torch.device) -> DDIMSolver:
        self.timesteps, self.alphas, self.alpha_prev = (x.to(device) for x in (self.timesteps, self.alphas,
                                                                              self.alpha_prev))  # fmt: skip
        return self

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        a = self.alpha_prev[index].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def x0_and_eps(pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor, kind: str):
    """(predicted clean latents, predicted noise) from a UNet output of either prediction type."""
    a = alphas[t].view(-1, 1, 1, 1)
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * pred, a.sqrt() * pred + (1 - a).sqrt() * x
    return (x - (1 - a).sqrt() * pred) / a.sqrt(), pred


class ConsistencyObjective:
    """``objective(batch) -> {"total": consistency loss}``; holds the target adapter and its EMA."""

    def __init__(
        self, cfg: FinetuneConfig, parts: Components, trainee: Trainee, text: TextConditioner, device: torch.device
    ) -> None:
        assert isinstance(trainee, LoraTrainee)
        self.parts, self.text, self.device, self.trainee = parts, text, device, trainee
        self.unet: UNet2DConditionModel = parts.unet  # the loop swaps in accelerate's wrapper
        self.noise = DDPMScheduler.from_config(parts.scheduler_config)
        self.kind = self.noise.config.prediction_type
        if self.kind not in ("epsilon", "v_prediction"):
            raise UserError(f"LCM distillation needs an epsilon or v-prediction teacher, not {self.kind!r}")
        if not 2 <= cfg.ddim_steps <= self.noise.config.num_train_timesteps:
            raise UserError(f"--ddim-steps must be at most the teacher's {self.noise.config.num_train_timesteps} "
                            "training timesteps")  # fmt: skip
        self.alphas = self.noise.alphas_cumprod.to(device)
        self.solver = DDIMSolver(self.noise.alphas_cumprod, cfg.ddim_steps).to(device)
        self.guidance = guidance_range(cfg, parts)
        self.huber_c = cfg.huber_c
        self.target_ema = cfg.target_ema
        if self.target_ema > 0:
            from ssdxl.finetune.trainees import LCM_LORA_TARGETS, add_lora

            add_lora(parts, cfg.rank, cfg.alpha or cfg.rank, text=False, adapter=TARGET, unet_targets=LCM_LORA_TARGETS)
            parts.unet.set_adapter(trainee.adapter)
            for param in self._adapter_params(TARGET).values():
                param.data = param.data.float()  # peft made it in the frozen UNet's dtype; it averages float32
            self.sync_target(1.0)

    @torch.no_grad()
    def sync_target(self, share: float) -> None:
        """Move the target adapter ``share`` of the way to the online one (1.0: copy)."""
        online, target = self._adapter_params(self.trainee.adapter), self._adapter_params(TARGET)
        for name, param in target.items():
            param.lerp_(online[name.replace(f".{TARGET}.", f".{self.trainee.adapter}.")], share)

    def _adapter_params(self, adapter: str) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.parts.unet.named_parameters() if f".{adapter}." in n}

    def after_step(self) -> None:
        if self.target_ema > 0:
            self.sync_target(1.0 - self.target_ema)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self._adapter_params(TARGET).items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, param in self._adapter_params(TARGET).items():
            param.copy_(state[name])

    def __call__(self, batch: Batch) -> Losses:
        n, device = len(batch.captions), self.device
        latents = encode_latents(self.parts, batch.pixels, device)
        noise = torch.randn(latents.shape).to(device)
        index = torch.randint(0, len(self.solver.timesteps), (n,)).to(device)
        low, high = self.guidance
        scale = (low + (high - low) * torch.rand(n)).to(device).view(-1, 1, 1, 1)
        start = self.solver.timesteps[index]
        end = (start - self.solver.skip).clamp(min=0)
        noisy = self.noise.add_noise(latents, noise, start)
        with torch.no_grad():
            keep = torch.ones(n, device=device)
            embeds, added = self.text.conditioning(batch.captions, batch.time_ids.to(device), keep)

        # The student: its consistency output at t_n.
        pred = self.unet(noisy, start, embeds, added_cond_kwargs=added).sample
        c_skip, c_out = boundary_scalings(start)
        student = c_skip * noisy + c_out * x0_and_eps(pred.float(), noisy, start, self.alphas, self.kind)[0]

        with torch.no_grad():
            # The teacher: one guided DDIM step t_n -> t_{n-k}, conditional and unconditional in one call.
            unet = self.parts.unet
            unet.disable_adapters()
            try:
                both = unet(torch.cat([noisy, noisy]), torch.cat([start, start]),
                            torch.cat([embeds, torch.zeros_like(embeds)]),
                            added_cond_kwargs=_with_unconditional(added)).sample.float()  # fmt: skip
            finally:
                unet.enable_adapters()
                unet.set_adapter(self.trainee.adapter)
            x0, eps = x0_and_eps(both, torch.cat([noisy, noisy]), torch.cat([start, start]), self.alphas, self.kind)
            (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)
            previous = self.solver.step(x0_u + scale * (x0_c - x0_u), eps_u + scale * (eps_c - eps_u), index)

            # The target: the EMA network's consistency output at t_{n-k}.
            if self.target_ema > 0:
                unet.set_adapter(TARGET)
            try:
                pred = unet(previous.to(noisy.dtype), end, embeds, added_cond_kwargs=added).sample.float()
            finally:
                unet.set_adapter(self.trainee.adapter)
            c_skip, c_out = boundary_scalings(end)
            target = c_skip * previous + c_out * x0_and_eps(pred, previous, end, self.alphas, self.kind)[0]

        diff = (student.float() - target).pow(2)
        if self.huber_c > 0:
            loss = (torch.sqrt(diff.mean(dim=(1, 2, 3)) + self.huber_c**2) - self.huber_c).mean()
        else:
            loss = diff.mean()
        return {"total": loss}


def _with_unconditional(added: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """SDXL's extra conditioning for [conditional; unconditional]: zero pooled text, same size ids (SD: none)."""
    if added is None:
        return None
    return {"text_embeds": torch.cat([added["text_embeds"], torch.zeros_like(added["text_embeds"])]),
            "time_ids": torch.cat([added["time_ids"], added["time_ids"]])}  # fmt: skip
