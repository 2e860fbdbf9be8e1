"""SD 1.x / 2.x LoRAs and embeddings through the adapter seam, equal to stock diffusers' ``StableDiffusionPipeline``
with the same files (``load_lora_weights`` + ``set_adapters``, ``load_textual_inversion``), and refused by name
on a model of another family."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from adapterkit import with_loras
from safetensors.torch import load_file, save_file
from test_lora import SETTINGS, assert_same_image, ours

from ssdxl.adapters.embeddings import read_embedding
from ssdxl.adapters.export import save_lora
from ssdxl.adapters.lora import inspect_lora
from ssdxl.adapters.synthetic import TE_TARGETS, UNET_TARGETS, make_embedding, make_lora
from ssdxl.errors import UserError
from ssdxl.finetune.trainees import LCM_LORA_TARGETS
from ssdxl.models.loading import load_components
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

# what sd-scripts' LoRA patches in an SD 1.x UNet's transformers: attention, the 1x1-conv proj_in/out, feed-forward
SD_SCRIPTS_TARGETS = (*UNET_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")


def stock(folder, loras: list[tuple[str, float]], prompt: str = "a red circle", prepare=None, **call) -> np.ndarray:
    """Stock diffusers' StableDiffusionPipeline on ``folder`` with ``loras`` (``load_lora_weights`` + ``set_adapters``)
    and whatever ``prepare(pipe)`` adds; ``call`` overrides the sampling settings."""
    from diffusers import StableDiffusionPipeline

    pipe = with_loras(StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32), loras, prepare)
    settings = {"num_inference_steps": SETTINGS["steps"], "guidance_scale": SETTINGS["guidance_scale"], **call}
    generator = torch.Generator("cpu").manual_seed(SETTINGS["seed"])
    out = pipe(prompt, height=SETTINGS["height"], width=SETTINGS["width"], generator=generator, **settings)
    return np.asarray(out.images[0], dtype=np.int16)


def one_line_error(engine: Engine, message: str, **request) -> None:
    """Resolving ``request`` fails with a one-line UserError matching ``message``."""
    with pytest.raises(UserError, match=message) as caught:
        engine.resolve(GenerationRequest("x", **request))
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def sd15(tiny_dir, tmp_path_factory) -> SimpleNamespace:
    """A tiny SD 1.5, its engine, its plain image, and adapter files made for it in the layouts users have."""
    folder = tiny_dir("sd15")
    components = load_components(folder)
    root = tmp_path_factory.mktemp("sd15-adapters")
    files = {
        "kohya": make_lora(
            components, root / "kohya.safetensors", fmt="kohya", alpha=2.0, seed=2, unet_targets=SD_SCRIPTS_TARGETS
        ),
        "diffusers": make_lora(components, root / "peft.safetensors", seed=1),
        "lcm": make_lora(
            components,
            root / "lcm-lora-sdv1-5.safetensors",
            fmt="kohya",
            seed=4,
            scale=0.05,
            text_encoders=False,
            unet_targets=LCM_LORA_TARGETS,
        ),
        "embedding": make_embedding(components, root / "mytok.safetensors", vectors=2, seed=6),
    }
    engine = Engine.load(folder, device="cpu", dtype="float32")
    return SimpleNamespace(folder=folder, components=components, files=files, engine=engine, base=ours(engine))


def test_sd_lora_files_are_told_apart_by_layout_and_architecture(sd15):
    kohya = inspect_lora(sd15.files["kohya"])
    assert (kohya.format, kohya.parts, kohya.architecture) == ("kohya", ("unet", "text_encoder"), "SD 1.x")
    assert any(k.startswith("lora_te_text_model_encoder_layers_0") for k in load_file(sd15.files["kohya"]))
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_proj_in") for k in load_file(sd15.files["kohya"]))
    lcm = inspect_lora(sd15.files["lcm"])
    assert (lcm.parts, lcm.few_step) == (("unet",), "LCM")


@pytest.mark.parametrize(("layout", "weight"), [("kohya", 0.7), ("diffusers", 1.0)])
def test_sd15_loras_match_stock_diffusers(sd15, layout, weight):
    loras = [(str(sd15.files[layout]), weight)]
    image = ours(sd15.engine, loras=loras)
    assert not np.array_equal(image, sd15.base)  # the LoRA does something
    assert_same_image(image, stock(sd15.folder, loras))


def test_two_sd15_loras_fused_or_not_and_the_model_is_restored_bit_for_bit(sd15):
    loras = [(str(sd15.files["kohya"]), 0.8), (str(sd15.files["diffusers"]), -0.5)]
    unfused = ours(sd15.engine, loras=loras)
    assert_same_image(unfused, stock(sd15.folder, loras))
    sd15.engine.fuse_loras = True
    try:
        assert_same_image(ours(sd15.engine, loras=loras), unfused)
    finally:
        sd15.engine.fuse_loras = False
    assert np.array_equal(sd15.base, ours(sd15.engine))


def test_sd15_lcm_lora_runs_four_steps_without_guidance_as_diffusers_does(sd15):
    from diffusers import LCMScheduler

    lcm = [(str(sd15.files["lcm"]), 1.0)]
    resolved = sd15.engine.resolve(GenerationRequest("x", loras=lcm))
    assert (resolved.scheduler, resolved.steps, resolved.guidance_scale) == ("LCM", 4, 1.0)
    image = ours(sd15.engine, loras=lcm, scheduler=None, steps=None, guidance_scale=None)

    def lcm_sampler(pipe) -> None:
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)

    assert_same_image(image, stock(sd15.folder, lcm, prepare=lcm_sampler, num_inference_steps=4, guidance_scale=1.0))


def test_sd1_embedding_files_read_alike_and_match_stock_diffusers(sd15, tmp_path):
    file = sd15.files["embedding"]
    vectors = load_file(file)["emb_params"]
    save_file({"<learned>": vectors}, tmp_path / "learned_embeds.safetensors")  # diffusers' layout
    torch.save({"string_to_param": {"*": torch.nn.Parameter(vectors)}, "name": "x"}, tmp_path / "a1111.pt")
    for other in (tmp_path / "learned_embeds.safetensors", tmp_path / "a1111.pt"):
        assert torch.equal(read_embedding(other, allow_pickle=True).vectors["any"], vectors)
    with pytest.raises(UserError, match="allow-pickle"):
        read_embedding(tmp_path / "a1111.pt")
    table = sd15.components.text_encoder.get_input_embeddings().weight
    image = ours(sd15.engine, "a mytok circle", embeddings=[str(file)])
    assert not np.array_equal(image, ours(sd15.engine, "a mytok circle"))

    def load(pipe) -> None:
        pipe.load_textual_inversion(str(file), token="<mytok>")

    assert_same_image(image, stock(sd15.folder, [], "a <mytok> circle", prepare=load))
    encoder = sd15.engine.base.components.text_encoder
    assert torch.equal(encoder.get_input_embeddings().weight, table)  # the vocabulary is as it was


def test_sd21_lora_and_embedding_together_match_stock_diffusers(tiny_dir, tmp_path):
    folder = tiny_dir("sd21")  # v-prediction, OpenCLIP's tower
    components = load_components(folder)
    lora = make_lora(components, tmp_path / "style.safetensors", fmt="kohya", alpha=8.0, rank=8, seed=3, scale=0.1)
    embedding = make_embedding(components, tmp_path / "sd2tok.safetensors", vectors=3, seed=4)
    assert any(k.startswith("lora_te_") for k in load_file(lora))
    engine = Engine.load(folder, device="cpu", dtype="float32")
    patched, skipped = engine.patcher.load(engine.adapters.lora(str(lora)))
    assert patched > 0 and skipped == 0
    image = ours(engine, "a sd2tok square", loras=[(str(lora), 0.9)], embeddings=[str(embedding)])

    def load(pipe) -> None:
        pipe.load_textual_inversion(str(embedding), token="<sd2tok>")

    assert_same_image(image, stock(folder, [(lora, 0.9)], "a <sd2tok> square", prepare=load))


def test_adapters_for_another_family_are_one_line_errors_naming_both(sd15, engine, tiny_dir, tmp_path):
    sdxl = load_components(tiny_dir("sdxl-base"))
    sdxl_lora = make_lora(sdxl, tmp_path / "xl.safetensors")
    one_line_error(sd15.engine, "LoRA xl was made for SDXL; this model is SD 1.x", loras=[(str(sdxl_lora), 1.0)])
    unet_only = make_lora(sdxl, tmp_path / "xl_unet.safetensors", text_encoders=False)
    save_file(load_file(unet_only), tmp_path / "bare.safetensors")  # no metadata, widths of no known family
    one_line_error(
        sd15.engine, r"LoRA bare does not fit this model \(SD 1.x", loras=[(str(tmp_path / "bare.safetensors"), 1.0)]
    )
    sd1_lora = str(sd15.files["diffusers"])
    one_line_error(engine, "LoRA peft was made for SD 1.x; this model is SDXL", loras=[(sd1_lora, 1.0)])
    sd21 = Engine.load(tiny_dir("sd21"), device="cpu", dtype="float32")  # the same tiny widths: its metadata tells
    one_line_error(sd21, "LoRA peft was made for SD 1.x; this model is SD 2.x", loras=[(sd1_lora, 1.0)])

    xl_embedding = make_embedding(sdxl, tmp_path / "xltok.safetensors")
    message = r"xltok \(made for SDXL: clip_g 64 wide, clip_l 32 wide\) has no vectors .*\(SD 1.x\)"
    one_line_error(sd15.engine, message, embeddings=[str(xl_embedding)])
    sd1_embedding = str(sd15.files["embedding"])
    one_line_error(
        engine, r"mytok .* has no vectors for this model's 64-wide .*\(SDXL base\)", embeddings=[sd1_embedding]
    )
    save_file({"emb_params": torch.zeros(2, 1024)}, tmp_path / "sd2neg.safetensors")
    one_line_error(
        sd15.engine, r"sd2neg \(made for SD 2.x: 1024 wide\)", embeddings=[str(tmp_path / "sd2neg.safetensors")]
    )


@pytest.mark.parametrize(
    ("width", "prefix", "architecture"),
    [
        (768, "lora_unet_", "SD 1.x"),
        (1024, "lora_unet_", "SD 2.x"),
        (2048, "unet.", "SDXL"),
        (1280, "unet.", "SDXL refiner"),
    ],
)
def test_a_real_size_lora_tells_its_architecture_by_its_cross_attention_width(tmp_path, width, prefix, architecture):
    """Files without metadata: what the keys and values of the UNet's cross-attention read tells."""
    sep = "_" if prefix.startswith("lora_") else "."
    down = "lora_down.weight" if prefix.startswith("lora_") else "lora_A.weight"
    key = sep.join(["down_blocks", "1", "attentions", "0", "transformer_blocks", "0", "attn2", "to_k"])
    save_file({f"{prefix}{key}.{down}": torch.zeros(4, width)}, tmp_path / "l.safetensors")
    assert inspect_lora(tmp_path / "l.safetensors").architecture == architecture


def test_exported_sd_loras_use_sd_scripts_names_and_load_whole(sd15, tmp_path):
    """What ``ssdxl finetune`` writes for an SD 1.x model: ``lora_te_`` and diffusers block names in kohya layout."""
    from peft import LoraConfig

    components = load_components(sd15.folder)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=[*UNET_TARGETS, *TE_TARGETS])
    components.unet.add_adapter(config)
    components.text_encoder.add_adapter(config)
    for fmt in ("kohya", "diffusers"):
        file = save_lora(components, tmp_path / f"{fmt}.safetensors", fmt=fmt)
        keys = load_file(file)
        assert any(k.startswith(("lora_te_", "text_encoder.text_model.")) for k in keys)
        assert not any(k.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks")) for k in keys)
        patched, skipped = sd15.engine.patcher.load(inspect_lora(file))
        assert skipped == 0 and patched == len(keys) // (3 if fmt == "kohya" else 2)
