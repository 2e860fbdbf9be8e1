"""Stage 2: the denoiser -- UNet and both CLIP text towers trained jointly (or the UNet alone), the VAE frozen.

Everything is SDXL's recipe at toy size, so the result loads and samples in stock diffusers:

* conditioning: penultimate hidden states of both towers concatenated (``cross_attention_dim``),
  the second tower's pooled projection as ``text_embeds``, and ``time_ids`` = (original size,
  crop top-left, target size) from each image's real size;
* caption dropout: a dropped caption gets all-zero embeddings, which is exactly what the
  pipeline feeds for an empty negative prompt (``force_zeros_for_empty_prompt``), so
  classifier-free guidance works out of the box;
* epsilon prediction on the scaled-linear schedule (0.00085..0.012, 1000 steps), min-SNR-gamma
  loss weighting, AdamW + cosine, EMA weights (the exported ones), bf16 autocast.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from ssdxl.conditioning.prompt import TOKENIZERS, tower_states
from ssdxl.models.components import Components
from ssdxl.models.vae import to_unet
from ssdxl.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ssdxl.training.config import TrainConfig
from ssdxl.training.data import Batch, BucketBatches, open_source
from ssdxl.training.export import export_model, preview_grid, preview_prompts
from ssdxl.training.optim import adamw, autocast, cosine_with_warmup, optimizer_step
from ssdxl.training.progress import Progress

STAGE = "denoiser"
TRAINED = ("unet", "text_encoder", "text_encoder_2")


def zero_init_residual_branches(unet: UNet2DConditionModel) -> None:
    """Start every residual branch of a fresh UNet at zero, as latent diffusion's own code does
    (``zero_module`` on each resnet's last convolution and each transformer's ``proj_out``): each
    block begins as the identity, so a deep stack of them trains like a shallow one at first.
    diffusers leaves this out because it loads trained weights."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, ResnetBlock2D):
                last = module.conv2
            elif isinstance(module, Transformer2DModel):
                last = module.proj_out
            else:
                continue
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()


def train_denoiser(cfg: TrainConfig, parts: Components, buckets: list[tuple[int, int]]) -> Components:
    """Train ``parts``' UNet and text towers for ``cfg.steps`` steps (resuming a checkpoint if there
    is one); returns the parts with the EMA weights, as exported to ``<run>/model``."""
    run = cfg.run_dir
    source = open_source(cfg.data, cfg.seed, cfg.two_object_fraction, sizes=buckets)
    batches = BucketBatches(source, buckets, cfg.batch_size, seed=cfg.seed + 1)
    prompts = preview_prompts(cfg.data, source)

    # Model: the trained modules, a frozen VAE, and the attention kernels that are fastest for
    # tiny models on CPU (plain attention: SDPA's backward costs ~1.5x more at this size).
    models = {name: getattr(parts, name) for name in TRAINED if cfg.train_text or name == "unet"}
    parts.unet.set_attn_processor(AttnProcessor())
    for tower in parts.family.towers:
        getattr(parts, tower).set_attn_implementation("eager")
    parts.vae.requires_grad_(False).eval()
    for name in set(TRAINED) - set(models):
        getattr(parts, name).requires_grad_(False).eval()
    text = TextConditioner(parts)
    noise = NoiseSchedule.from_config(parts.scheduler_config)
    ema = EMA(models, cfg.ema_decay)

    # Optimiser.
    named = [(f"{m}.{n}", p) for m, module in models.items() for n, p in module.named_parameters()]
    optimizer = adamw(named, cfg.lr, cfg.weight_decay)
    schedule = cosine_with_warmup(optimizer, warmup=min(cfg.warmup_steps, cfg.steps // 10), total=cfg.steps)
    trainable = [p for _, p in named]

    # Resume, or start the residual branches at zero.
    if cfg.zero_init:
        zero_init_residual_branches(parts.unet)
    step = 0
    ckpt = checkpoint_path(run, STAGE)
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        for name, module in models.items():
            module.load_state_dict(state["models"][name])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.load_state_dict(state["data"])
        step = state["step"]

    # Loop.
    for module in models.values():
        module.train()
    progress = Progress(STAGE, step, cfg.steps, run / "log.jsonl", cfg.log_every)
    while step < cfg.steps:
        batch = next(batches)
        loss = denoising_loss(cfg, batch, parts.vae, parts.unet, text, noise)
        optimizer_step(loss, trainable, optimizer, schedule)
        ema.update(models, step)
        step += 1
        progress.step(step, loss.item(), lr=schedule.get_last_lr()[0])

        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            state = {"models": {n: m.state_dict() for n, m in models.items()}, "ema": ema.state_dict()}
            state |= {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
            state |= {"data": batches.state_dict(), "step": step}
            save_checkpoint(ckpt, state)
            final = ema.apply_to(parts)
            folder = export_model(final, run / "model", cfg.save_dtype)
            grid = preview_grid(final, prompts, run / "previews" / f"step_{step:06d}.png", seed=cfg.seed)
            progress.note(step=step, checkpoint=str(ckpt), model=str(folder), preview=str(grid))
    progress.close()
    return ema.apply_to(parts)


def denoising_loss(
    cfg: TrainConfig,
    batch: Batch,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text: TextConditioner,
    noise: NoiseSchedule,
) -> torch.Tensor:
    """Min-SNR-weighted epsilon loss of one batch, captions dropped (zeroed) at ``cfg.caption_dropout``,
    plus the contrastive-caption hinge (:func:`contrast_hinge`) when ``cfg.contrast_weight`` is set."""
    n = len(batch.captions)
    with torch.no_grad(), autocast(cfg.bf16):
        latents = to_unet(vae, vae.encode(batch.pixels).latent_dist.sample().float())
    eps = torch.randn_like(latents)
    t = torch.randint(0, noise.steps, (n,))
    keep = caption_keep_mask(n, cfg.caption_dropout)
    noisy = noise.add(latents, eps, t)
    with autocast(cfg.bf16):
        prompt_embeds, conditions = text.conditioning(batch.captions, batch.time_ids, keep)
        pred = unet(noisy, t, prompt_embeds, added_cond_kwargs=conditions).sample
    per_sample = (pred.float() - eps).pow(2).mean(dim=(1, 2, 3))
    snr = noise.snr(t)
    weight = snr.clamp(max=cfg.snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
    loss = (per_sample * weight).mean()
    # Contrast captions, where the layout is still undecided in the noisy latents (noisiest half).
    rows = [
        i
        for i, c in enumerate(batch.contrasts or [])
        if cfg.contrast_weight > 0 and c is not None and keep[i] > 0 and int(t[i]) >= noise.steps // 2
    ]
    if rows:
        index = torch.tensor(rows)
        contrasts = [batch.contrasts[i] for i in rows]  # type: ignore[index]
        with autocast(cfg.bf16):
            embeds, conditions = text.conditioning(contrasts, batch.time_ids[index], torch.ones(len(rows)))
            wrong = unet(noisy[index], t[index], embeds, added_cond_kwargs=conditions).sample
        hinge = contrast_hinge(per_sample[index], (wrong.float() - eps[index]).pow(2).mean(dim=(1, 2, 3)), cfg)
        loss = loss + cfg.contrast_weight * (hinge * weight[index]).sum() / n
    return loss


def contrast_hinge(fit: torch.Tensor, wrong: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """How far each true caption's loss ``fit`` misses beating its contrast caption's loss
    ``wrong`` by the relative margin ``cfg.contrast_margin`` (0 where it already does).

    Why: in the noisiest timesteps the caption is the only place the model can read which object
    goes where, yet the plain loss barely rewards reading it (reversing every relation moved
    ``shapes``' loss by < 0.1%), so the model learns to ignore the relation. The hinge makes
    ignoring it cost, and stops pushing once the true caption fits clearly better.
    """
    return torch.relu((1 + cfg.contrast_margin) * fit - wrong)


def caption_keep_mask(n: int, dropout: float) -> torch.Tensor:
    """1.0 for captions kept, 0.0 for the ``dropout`` share that trains the unconditional model."""
    return (torch.rand(n) >= dropout).float()


@dataclass
class NoiseSchedule:
    """The DDPM forward process of the exported scheduler config (so training and sampling agree)."""

    alphas_cumprod: torch.Tensor

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        if config.get("beta_schedule") != "scaled_linear":
            raise ValueError("training implements the scaled_linear beta schedule only")
        start, end, steps = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0).float())

    @property
    def steps(self) -> int:
        return len(self.alphas_cumprod)

    def add(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t]
        return a / (1 - a)


class TextConditioner:
    """Captions -> (prompt_embeds, pooled or None) exactly as the family's diffusers pipeline encodes a prompt that
    fits in 77 tokens (``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline.encode_prompt``).

    Token ids are cached per caption: a synthetic world repeats captions, and BPE is slow.
    """

    def __init__(self, parts: Components) -> None:
        self.family = parts.family
        self.pairs = tuple((getattr(parts, TOKENIZERS[slot]), getattr(parts, slot)) for slot in self.family.towers)
        self.cache: dict[str, tuple[torch.Tensor, ...]] = {}

    def ids(self, caption: str) -> tuple[torch.Tensor, ...]:
        if caption not in self.cache:
            self.cache[caption] = tuple(
                tok(caption, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids[0]
                for tok, _ in self.pairs
            )  # fmt: skip
        return self.cache[caption]

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds (B, 77, the towers' hidden widths summed), pooled ``text_embeds`` (B, P) or None)."""
        ids = [self.ids(c) for c in captions]
        hidden = []
        pooled = None
        for slot, (_, encoder) in enumerate(self.pairs):
            states, pooled = tower_states(encoder, torch.stack([i[slot] for i in ids]), self.family)
            hidden.append(states)
        return torch.cat(hidden, dim=-1), pooled

    def conditioning(
        self, captions: list[str], time_ids: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """The UNet's ``encoder_hidden_states`` and ``added_cond_kwargs`` (None for SD 1.x / 2.x); rows with ``keep``
        0 get all-zero text conditioning (size conditioning stays, as in the SDXL pipeline's negative branch)."""
        prompt_embeds, pooled = self(captions)
        prompt_embeds = prompt_embeds * keep[:, None, None]
        if pooled is None:
            return prompt_embeds, None
        return prompt_embeds, {"text_embeds": pooled * keep[:, None], "time_ids": time_ids}


class DeviceTextConditioner(TextConditioner):
    """The trainer's conditioner (token ids cached per caption), with the ids kept on the towers' device."""

    def __init__(self, parts: Components, device: torch.device) -> None:
        super().__init__(parts)
        self.device = device

    def ids(self, caption: str) -> tuple[torch.Tensor, ...]:
        if caption not in self.cache:
            self.cache[caption] = tuple(ids.to(self.device) for ids in super().ids(caption))
        return self.cache[caption]


class EMA:
    """Exponential moving average of the trained modules' weights (with the usual warm-up)."""

    def __init__(self, models: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.copies = {n: copy.deepcopy(m).eval().requires_grad_(False) for n, m in models.items()}

    @torch.no_grad()
    def update(self, models: dict[str, torch.nn.Module], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, module in models.items():
            ema = list(self.copies[name].parameters())
            torch._foreach_lerp_(ema, [p.detach() for p in module.parameters()], 1.0 - decay)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: m.state_dict() for n, m in self.copies.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, module in self.copies.items():
            module.load_state_dict(state[name])

    def apply_to(self, parts: Components) -> Components:
        """``parts`` with the averaged modules in place of the live ones (shared, not copied)."""
        return dataclasses.replace(parts, **self.copies)
