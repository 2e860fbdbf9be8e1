"""Another VAE for a loaded model (A1111's "SD VAE", ComfyUI's VAELoader): a fine-tuned decoder such as
SD 1.5's ``vae-ft-mse`` or SDXL's fp16-fix, from a diffusers folder or a single file.

A single file may hold the LDM layout (``encoder.down.0.block.0…``, with or without ``first_stage_model.``, as
A1111's ``*.vae.safetensors``) or diffusers names; either way it takes the model's own VAE config, so the latent
format (scale, shift) stays the model's, as A1111 does. A folder brings its own config (the fp16-fix VAE's
``force_upcast: false`` is what lets it decode in float16). A VAE of another latent space (channels or
downscale) is refused: it would decode garbage. A folder's own ``scaling_factor`` is replaced by the model's, so the
UNet's latents are scaled as it was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL

from ssdxl.errors import UserError, first_line
from ssdxl.models.loading import from_pretrained, read_state_dict

DIFFUSERS_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.")
PREFIXES = ("vae.", "first_stage_model.")


def load_vae(
    source: str | Path, like: AutoencoderKL, *, dtype: torch.dtype, allow_pickle: bool = False
) -> AutoencoderKL:
    """The VAE at ``source`` (folder or single file), checked to share ``like``'s latent space."""
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise UserError(f"--vae {path}: not a VAE folder (no config.json, no vae/config.json)")
        try:
            vae = from_pretrained(AutoencoderKL, folder, dtype, allow_pickle)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"could not load the VAE in {folder}: {first_line(exc)}") from None
    elif path.is_file():
        state, _ = read_state_dict(path, allow_pickle=allow_pickle)
        vae = _from_state_dict(state, like, path)
    else:
        raise UserError(f"--vae {path} does not exist")
    if latent_space(vae, scale=False) != latent_space(like, scale=False):
        raise UserError(
            f"{path.name} is a VAE for other latents ({latent_space(vae, scale=False)}; this model's: "
            f"{latent_space(like, scale=False)}): it cannot decode this model's latents"
        )
    # the model's latent format stays, as A1111 keeps it: a folder's own scale would mis-scale the UNet's latents
    vae.register_to_config(scaling_factor=like.config.scaling_factor, shift_factor=like.config.get("shift_factor"))
    return vae.to(dtype)


def vae_weights(source: str | Path) -> Path | None:
    """The file whose hash names a VAE: the single file, or the folder's weights."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    folder = path / "vae" if (path / "vae").is_dir() else path
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return files[0] if files else None


def _from_state_dict(state: dict[str, torch.Tensor], like: AutoencoderKL, path: Path) -> AutoencoderKL:
    named = {k.removeprefix(PREFIXES[0]): v for k, v in state.items()}
    if any(k.startswith(DIFFUSERS_MARKERS) for k in named):
        state = named
    else:  # LDM names, bare or under first_stage_model.
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, dict(like.config))
    with init_empty_weights():
        vae = AutoencoderKL.from_config(like.config)
    expected = set(vae.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(
            f"{path.name} is not a VAE of this model's shape: {len(missing)} tensors missing ({missing[0]}, …)"
        )
    try:
        vae.load_state_dict({k: state[k] for k in expected}, assign=True, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path.name} does not fit this model's VAE: {first_line(exc)}") from None
    return vae


def to_unet(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents in the UNet's latent space: shifted and scaled by the VAE config's ``shift_factor`` /
    ``scaling_factor`` (the model's latent format; every encoder of pixels for a UNet goes through here)."""
    return (latents - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor


def to_vae(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_unet``: what the VAE's decoder reads."""
    return latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)


def latent_space(vae: AutoencoderKL, scale: bool = True) -> str:
    """What two VAEs must share to read each other's latents (a swap, a base and its refiner), in words."""
    config = vae.config
    downscale = 2 ** (len(config.block_out_channels) - 1)
    return space_text(downscale, config.latent_channels, config.scaling_factor if scale else None)


def space_text(downscale: int, channels: int, scale: float | None = None) -> str:
    """``latent_space``'s words for a latent space given by its numbers (a tiny VAE has no scale of its own)."""
    text = f"VAE ÷{downscale}, {channels} latent channels"
    return f"{text}, latent scale {scale:g}" if scale is not None else text
