"""The ``ssdxl`` command. Each subcommand is a thin layer over the Python API.

Every user error (bad option, missing file, unusable model) prints one line and exits with
code 2; no tracebacks for things the user can fix.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ssdxl.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Text-to-image for the SDXL family: SDXL, SSD-1B, Segmind-Vega.",
)
F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    """``ssdxl --version``: the installed distribution's version (what pip installed), then exit."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("ssdxl")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from ssdxl import __version__ as text
        typer.echo(f"ssdxl {text}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Options of ``ssdxl`` itself, given before a command (the app's help text is the Typer's)."""


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(func: F) -> F:
    """Turn UserError (and unreadable input files) into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted")

    return wrapper  # type: ignore[return-value]


def quiet_libraries() -> None:
    """diffusers/transformers chatter (load bars, dtype notes) is noise on a CLI."""
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def check_output(path: Path) -> Path:
    """An image file name ssdxl can write, or a one-line error: a known suffix, not a folder, and the folder it goes
    in writable (or missing, to be made inside a writable one). Called before any work, so a bad path costs nothing."""
    import os

    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UserError(f"unsupported output format {path.suffix!r}; use .png, .jpg or .webp")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name such as {path / 'out.png'}")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # where files get made
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {path}: permission denied")
    return path


def save_images(result, paths: list[Path]) -> list[Path]:
    """Each image saved; a write that fails anyway (disk full, the folder removed meanwhile) is one line."""
    from ssdxl.output.files import save_image

    try:
        return [save_image(g, p) for g, p in zip(result.images, paths, strict=True)]
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or paths[0]}: {exc.strerror or exc}") from None


def open_image(path: Path | None, option: str):
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise UserError(f"{option}: no such file {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{option}: {path} is not a readable image ({exc})") from None


@app.command()
@user_errors
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Built-in name, folder, .safetensors or repo id.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Image file (.png/.jpg/.webp); -N is added per sample.")
    ] = Path("out.png"),
    negative: Annotated[str, typer.Option("--negative", "-n", help="Negative prompt.")] = "",
    style: Annotated[
        list[str] | None, typer.Option("--style", help="Prompt style by name (ssdxl styles); repeatable, in order.")
    ] = None,
    styles_file: Annotated[
        list[Path] | None, typer.Option("--styles-file", help="A1111 styles.csv (or JSON) adding styles; repeatable.")
    ] = None,
    width: Annotated[int | None, typer.Option("--width", "-W")] = None,
    height: Annotated[int | None, typer.Option("--height", "-H")] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", "--cfg", help="Classifier-free guidance scale.")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", "-s", help="e.g. Euler, 'Euler a', 'DPM++ 2M Karras', LCM.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="-1 picks a random seed (it is reported).")] = -1,
    samples: Annotated[int, typer.Option("--samples", help="Images with seeds seed, seed+1, ...")] = 1,
    init_image: Annotated[Path | None, typer.Option("--init-image", "-i", help="img2img / inpaint source.")] = None,
    mask: Annotated[Path | None, typer.Option("--mask", help="Inpainting mask: white = repaint.")] = None,
    strength: Annotated[
        float | None, typer.Option("--strength", help="How much of the init image to re-noise (0-1].")
    ] = None,
    refiner: Annotated[str | None, typer.Option("--refiner", help="Refiner model to finish the schedule.")] = None,
    high_noise_fraction: Annotated[
        float, typer.Option("--high-noise-fraction", help="Where the base hands over to the refiner.")
    ] = 0.8,
    original_size: Annotated[str | None, typer.Option("--original-size", help="SDXL size conditioning, WxH.")] = None,
    target_size: Annotated[
        str | None, typer.Option("--target-size", help="SDXL target-size conditioning, WxH.")
    ] = None,
    crop: Annotated[str | None, typer.Option("--crop", help="SDXL crop conditioning TOP,LEFT.")] = None,
    aesthetic_score: Annotated[float, typer.Option("--aesthetic-score", help="Refiner conditioning.")] = 6.0,
    negative_aesthetic_score: Annotated[
        float, typer.Option("--negative-aesthetic-score", help="Refiner conditioning of the negative branch.")
    ] = 2.5,
    guidance_cutoff: Annotated[
        float, typer.Option("--guidance-cutoff", help="Fraction of steps that use guidance.")
    ] = 1.0,
    cache_interval: Annotated[
        int, typer.Option("--cache-interval", help="DeepCache: full UNet every N steps, cheap ones between (1 = off).")
    ] = 1,
    clip_skip: Annotated[
        int, typer.Option("--clip-skip", help="A1111's clip skip: 2 reads the text encoder's layer before the usual.")
    ] = 1,
    guidance_rescale: Annotated[
        float, typer.Option("--guidance-rescale", help="Rescale guided predictions (zero-terminal-SNR models: 0.7).")
    ] = 0.0,
    vae: Annotated[
        str | None, typer.Option("--vae", help="Another VAE: a diffusers vae/ folder or a single .safetensors file.")
    ] = None,
    fast_decode: Annotated[
        bool,
        typer.Option("--fast-decode", help="Decode with a tiny VAE (TAESD-style): several times faster, a little "
                     "less exact. Built-in models ship theirs; others need --tiny-vae."),
    ] = False,
    tiny_vae: Annotated[
        str | None,
        typer.Option("--tiny-vae", help="Tiny VAE for --fast-decode: an AutoencoderTiny folder or repo id "
                     "(madebyollin/taesdxl; ssdxl train tiny-vae) or a TAESD/TAESDXL *_decoder.safetensors."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="auto (OpenVINO on a CPU for full-size bfloat16 models, exported on first use; else PyTorch), "
            "torch or openvino. Default: $SSDXL_BACKEND, else auto.",
        ),
    ] = None,
    optimize: Annotated[
        bool, typer.Option("--optimize/--no-optimize", help="The measured CPU settings (channels-last).")
    ] = True,
    tiled_vae: Annotated[
        bool, typer.Option("--tiled-vae", help="Decode in tiles: bounded memory for large images, faint seams.")
    ] = False,
    lora: Annotated[
        list[str] | None, typer.Option("--lora", help="LoRA file or name, optionally :WEIGHT (repeatable).")
    ] = None,
    lora_dir: Annotated[
        list[Path] | None, typer.Option("--lora-dir", help="Folder of LoRAs that <lora:name:w> in the prompt names.")
    ] = None,
    embedding: Annotated[
        list[str] | None, typer.Option("--embedding", help="Textual-inversion file; its name in a prompt uses it.")
    ] = None,
    embedding_dir: Annotated[
        list[Path] | None, typer.Option("--embedding-dir", help="Folder of embeddings, used where prompts name them.")
    ] = None,
    prompt_syntax: Annotated[
        str, typer.Option("--prompt-syntax", help="Prompt weighting: a1111 '(word:1.2)' or compel 'word++'.")
    ] = "a1111",
    fuse_loras: Annotated[
        bool, typer.Option("--fuse-loras", help="Merge LoRAs into the weights for the run (no per-step cost).")
    ] = False,
    controlnet: Annotated[
        list[str] | None,
        typer.Option(
            "--controlnet", help="ControlNet / T2I-Adapter unit: MODEL[:IMAGE][:SCALE][:key=value] (repeatable)."
        ),
    ] = None,
    control_image: Annotated[
        Path | None, typer.Option("--control-image", help="Control map of units that name none.")
    ] = None,
    control_scale: Annotated[float, typer.Option("--control-scale", help="Conditioning scale of units.")] = 1.0,
    control_preprocessor: Annotated[
        str, typer.Option("--control-preprocessor", help="Turn the control image into a map first (canny, ...).")
    ] = "none",
    control_start: Annotated[float, typer.Option("--control-start", help="Fraction of steps before units act.")] = 0.0,
    control_end: Annotated[float, typer.Option("--control-end", help="Fraction of steps after which they stop.")] = 1.0,
    guess_mode: Annotated[bool, typer.Option("--guess-mode", help="Control on the prompt branch only.")] = False,
    control_resize: Annotated[
        str, typer.Option("--control-resize", help="A map of another size: resize, crop or fill.")
    ] = "resize",
    control_type: Annotated[
        str | None, typer.Option("--control-type", help="Union ControlNets: canny, depth, ...")
    ] = None,
    controlnet_dir: Annotated[
        list[Path] | None, typer.Option("--controlnet-dir", help="Folder of ControlNets that units may name.")
    ] = None,
    ip_adapter: Annotated[
        list[str] | None,
        typer.Option("--ip-adapter", help="IP-Adapter file or folder, optionally :SCALE (repeatable)."),
    ] = None,
    image_prompt: Annotated[
        list[Path] | None, typer.Option("--image-prompt", help="Picture the IP-Adapters read (repeatable).")
    ] = None,
    ip_adapter_dir: Annotated[
        list[Path] | None, typer.Option("--ip-adapter-dir", help="Folder of IP-Adapter files --ip-adapter may name.")
    ] = None,
    ip_scale: Annotated[float, typer.Option("--ip-scale", help="Image prompt scale.")] = 1.0,
    outpaint: Annotated[
        str | None, typer.Option("--outpaint", help="Grow --init-image: left=256,right=256 (or x=, y=, all=).")
    ] = None,
    hires: Annotated[str | None, typer.Option("--hires", help="Hires fix to a scale (2x) or size (1536x1536).")] = None,
    hires_steps: Annotated[
        int | None, typer.Option("--hires-steps", help="Second-pass steps (default: --steps).")
    ] = None,
    hires_strength: Annotated[float, typer.Option("--hires-strength", help="Second-pass denoising strength.")] = 0.7,
    upscaler: Annotated[
        str, typer.Option("--upscaler", help="Hires upscaler: Latent modes, Lanczos, or an upscaler model file/name.")
    ] = "Latent",
    upscaler_dir: Annotated[
        list[Path] | None, typer.Option("--upscaler-dir", help="Folder of upscaler models --upscaler may name.")
    ] = None,
    from_png: Annotated[Path | None, typer.Option("--from-png", help="Re-create the image whose PNG is given.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = "auto",
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickled checkpoints (can run code).")
    ] = False,
    prediction: Annotated[
        str | None, typer.Option("--prediction", help="What the model predicts, if its file says wrong: v or eps.")
    ] = None,
    zero_snr: Annotated[
        bool, typer.Option("--zero-snr", help="Zero-terminal-SNR schedule with trailing steps (for models so trained).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print paths, seeds and timings as JSON.")] = False,
) -> None:
    """Generate images: txt2img, img2img (--init-image), inpainting (--mask), outpainting (--outpaint), base +
    refiner, LoRAs, embeddings, ControlNets (--controlnet), IP-Adapters (--ip-adapter), hires fix (--hires), a fast
    final decode by a tiny VAE (--fast-decode)."""
    from ssdxl.adapters.library import split_weight
    from ssdxl.cli import control_options
    from ssdxl.control.outpaint import parse_sides
    from ssdxl.output.files import output_paths, request_from_png
    from ssdxl.sampling.engine import Engine
    from ssdxl.sampling.limits import check_request, parse_size
    from ssdxl.sampling.request import GenerationRequest

    check_output(output)
    stored: dict[str, Any] = {}  # what a --from-png PNG recorded
    if from_png is not None:
        request, stored = request_from_png(from_png)
        check_adapter_hashes(request, stored)
        model = model or stored.get("model")
        refiner = refiner or stored.get("refiner_model")
        if dtype == "auto" and stored.get("dtype"):
            dtype = stored["dtype"]
        prediction = prediction or stored.get("prediction")
        zero_snr = zero_snr or bool(stored.get("zero_snr"))
        if stored.get("vae_hash") and vae is None:
            raise UserError(f"the image was decoded with the VAE {stored.get('vae')}: pass it again with --vae")
        if prompt is not None:
            request.prompt = prompt
        request.fast_decode = request.fast_decode or fast_decode
        if style:
            raise UserError("--style cannot be used with --from-png: the PNG's prompts already hold their styles")
    elif prompt is None:
        raise UserError("give a PROMPT (or --from-png FILE)")
    else:
        crop_tl = (0, 0)
        if crop is not None:
            try:
                crop_tl = tuple(int(v) for v in crop.split(","))  # type: ignore[assignment]
            except ValueError:
                raise UserError(f"--crop must look like TOP,LEFT; got {crop!r}") from None
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance,
            scheduler=scheduler,
            seed=seed,
            samples=samples,
            strength=strength,
            refiner=refiner is not None,
            high_noise_fraction=high_noise_fraction,
            original_size=parse_size(original_size, "--original-size") if original_size else None,
            target_size=parse_size(target_size, "--target-size") if target_size else None,
            crop_top_left=crop_tl,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
            guidance_cutoff=guidance_cutoff,
            cache_interval=cache_interval,
            clip_skip=clip_skip,
            guidance_rescale=guidance_rescale,
            loras=[split_weight(text) for text in lora or []],
            embeddings=list(embedding or []),
            prompt_syntax=prompt_syntax,
            styles=list(style or []),
            fast_decode=fast_decode,
        )
    request.init_image = open_image(init_image, "--init-image")
    request.mask_image = open_image(mask, "--mask")
    unit_defaults = {
        "image": control_image,
        "scale": control_scale,
        "preprocessor": control_preprocessor,
        "start": control_start,
        "end": control_end,
        "guess_mode": guess_mode,
        "resize_mode": control_resize,
        "control_type": control_type,
    }
    request.controls = control_options.control_units(list(controlnet or []), unit_defaults)
    request.image_prompts = control_options.image_prompts(list(ip_adapter or []), list(image_prompt or []), ip_scale)
    request.outpaint = parse_sides(outpaint) if outpaint else None
    request.hires = control_options.hires(hires, steps=hires_steps, strength=hires_strength, upscaler=upscaler)
    if from_png is not None and request.strength is not None and request.init_image is None:
        raise UserError(f"{from_png} was made from an init image: pass it again with --init-image")
    if from_png is not None:
        check_recorded_mask(from_png, stored, request)
    check_request(request)  # what Engine.resolve checks first, before the model loads

    engine = Engine.load(
        model,
        refiner=refiner,
        device=device,
        dtype=dtype,
        allow_pickle=allow_pickle,
        backend=backend,
        optimize=optimize,
        lora_dirs=tuple(lora_dir or ()),
        embedding_dirs=tuple(embedding_dir or ()),
        fuse_loras=fuse_loras,
        controlnet_dirs=tuple(controlnet_dir or ()),
        upscaler_dirs=tuple(upscaler_dir or ()),
        ip_adapter_dirs=tuple(ip_adapter_dir or ()),
        styles_files=tuple(styles_file or ()),
        vae=vae,
        prediction=prediction,
        zero_snr=zero_snr,
        tiny_vae=tiny_vae,
        progress=True,
    )
    if tiled_vae:
        engine.enable_tiled_vae()
    if from_png is not None and stored.get("vae_hash") and engine.base.vae_hash != stored["vae_hash"]:
        raise UserError(f"{vae} is not the VAE the image was made with (hash {engine.base.vae_hash}, "
                        f"recorded {stored['vae_hash']})")  # fmt: skip
    if from_png is not None and request.fast_decode:
        check_recorded_tiny_vae(engine, stored)
    if stored.get("infotext_from") == "other" and engine.base.components.family.is_sdxl and request.clip_skip > 1:
        # A1111 records its clip-skip setting on SDXL images too, where it does not apply it
        typer.echo(f"note: ignoring the PNG's 'Clip skip: {request.clip_skip}' (AUTOMATIC1111 does not apply it to "
                   "SDXL models)", err=True)  # fmt: skip
        request.clip_skip = 1
    resolved = engine.resolve(request)
    paths = [check_output(path) for path in output_paths(output, resolved.samples)]
    for note in engine.warnings(resolved):
        typer.echo(f"warning: {note}", err=True)
    result = _run_with_progress(engine, resolved, quiet or as_json)
    saved = save_images(result, paths)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": result.model,
                    "images": [{"path": str(p), "seed": g.seed} for p, g in zip(saved, result.images, strict=True)],
                    "timings": {k: round(v, 4) for k, v in result.timings.items()},
                    "device": engine.device.type,
                    "dtype": str(engine.dtype).removeprefix("torch."),
                    "warnings": result.warnings,
                },
                indent=2,
            )
        )
    elif not quiet:
        for path, g in zip(saved, result.images, strict=True):
            typer.echo(f"{path}  seed {g.seed}")
        for name, layers in result.images[0].params.get("lora_layers", {}).items():
            if layers["skipped"]:
                typer.echo(
                    f"note: LoRA {name} patched {layers['patched']} layers; {layers['skipped']} of the layers it "
                    "names are not in this model (made for a larger one, e.g. SDXL on SSD-1B/Vega)",
                    err=True,
                )


def check_recorded_tiny_vae(engine, stored: dict[str, Any]) -> None:
    """--from-png of a fast-decoded image: the very tiny VAE it was decoded with (a built-in model brings its own)."""
    recorded = stored.get("tiny_vae_hash")
    if not recorded:
        return
    if engine.tiny_vae is None:
        raise UserError(f"the image was decoded with the tiny VAE {stored.get('tiny_vae')}: pass it again with "
                        "--tiny-vae")  # fmt: skip
    if engine.tiny_vae.hash != recorded:
        raise UserError(f"{engine.tiny_vae.name} is not the tiny VAE the image was decoded with (hash "
                        f"{engine.tiny_vae.hash}, recorded {recorded})")  # fmt: skip


def check_recorded_mask(png: Path, stored: dict[str, Any], request) -> None:
    """--from-png re-creates an inpainted image only with its mask, which the PNG records by hash, not as pixels:
    without --mask it would silently be img2img."""
    from ssdxl.sampling.request import image_hash

    if stored.get("kind") != "inpaint" or request.outpaint is not None:  # outpainting makes its own mask
        return
    if request.mask_image is None:
        raise UserError(f"{png} was inpainted: pass its init image and its mask again with --init-image and --mask")
    recorded = stored.get("mask_hash")
    given = image_hash(request.mask_image)
    if recorded and given != recorded:
        raise UserError(f"--mask is not the mask {png} was made with (hash {given}, recorded {recorded})")


def check_adapter_hashes(request, stored: dict[str, Any]) -> None:
    """--from-png re-creates an image only with the very adapter files it was made with."""
    from ssdxl.adapters.library import AdapterLibrary

    library = AdapterLibrary()
    recorded = {**stored.get("lora_hashes", {}), **stored.get("embedding_hashes", {})}
    files = [(path, library.lora) for path, _ in request.loras] + [
        (path, library.embedding) for path in request.embeddings
    ]
    for path, read in files:
        if not Path(path).is_file():
            raise UserError(f"the image was made with {path}, which is not there; pass --lora/--embedding again")
        adapter = read(path)
        if recorded.get(adapter.name, adapter.hash) != adapter.hash:
            raise UserError(
                f"{path} is not the file the image was made with "
                f"(hash {adapter.hash}, recorded {recorded[adapter.name]})"
            )


def _run_with_progress(engine, request, quiet: bool):
    if quiet:
        return engine.generate(request)
    from tqdm import tqdm

    with tqdm(unit="step", file=sys.stderr, desc="sampling", dynamic_ncols=True) as bar:

        def on_step(done: int, total: int, _latents) -> None:
            if done == 1:  # a new sample, or the refiner's part of one
                bar.reset(total=total)
            bar.update(1)

        return engine.generate(request, callback=on_step)


@app.command()
@user_errors
def models() -> None:
    """List architecture presets (with UNet parameter counts) and built-in models."""
    from ssdxl.models import builtin
    from ssdxl.models.peek import peek_family
    from ssdxl.models.presets import get_preset, preset_names, unet_stats

    typer.echo(f"{'preset':<14}{'family':<14}{'UNet params':>16}{'transformer blocks':>20}  description")
    for name in preset_names():
        preset = get_preset(name)
        params, blocks = unet_stats(preset.unet)
        typer.echo(f"{name:<14}{preset.family.name:<14}{params:>16,}{blocks:>20}  {preset.description}")
    names = [f"{n} ({getattr(peek_family(n), 'name', '?')})" for n in builtin.names()]
    typer.echo("\nbuilt-in models: " + (", ".join(names) if names else "(none in this install)"))


@app.command()
@user_errors
def schedulers() -> None:
    """List scheduler names (Segmind, AUTOMATIC1111 and ComfyUI spellings are accepted too)."""
    from ssdxl.sampling.schedulers import scheduler_names

    for name in scheduler_names():
        typer.echo(name)


@app.command()
@user_errors
def styles(
    styles_file: Annotated[
        list[Path] | None, typer.Option("--styles-file", help="A1111 styles.csv (or JSON) adding styles; repeatable.")
    ] = None,
) -> None:
    """List prompt styles (built-in, then --styles-file ones): name, prompt template, negative prompt."""
    from ssdxl.conditioning.styles import load_styles

    listed = load_styles(styles_file or ()).values()
    width = max(len("name"), *(len(s.name) for s in listed)) + 2
    typer.echo(f"{'name':<{width}}prompt  |  negative prompt")
    for s in listed:
        typer.echo(f"{s.name:<{width}}{s.prompt}  |  {s.negative_prompt or '-'}")


@app.command("init-random")
@user_errors
def init_random(
    preset: Annotated[str, typer.Argument(help="sdxl-base, ssd-1b, vega, sd15, sd21, ... (ssdxl models).")],
    folder: Annotated[Path, typer.Argument(help="Where to write the diffusers folder.")],
    scale: Annotated[str, typer.Option("--scale", help="full, or tiny (same structure, toy widths).")] = "full",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype: float32, float16 or bfloat16.")] = "float32",
) -> None:
    """Write a complete pipeline folder with random weights, for tests and speed benchmarks."""
    from ssdxl.models.components import build_components
    from ssdxl.models.presets import get_preset
    from ssdxl.sampling.precision import DTYPES

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not empty")
    components = build_components(get_preset(preset, scale), seed=seed)
    components.save(folder, dtype=DTYPES[dtype])
    typer.echo(f"wrote {preset} ({scale}) to {folder}")


@app.command()
@user_errors
def convert(
    source: Annotated[str, typer.Argument(help="Folder, single file, built-in name or repo id.")],
    destination: Annotated[Path, typer.Argument(help="A .safetensors file (LDM / SGM layout) or a folder.")],
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype of the result.")] = "float32",
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
) -> None:
    """Convert between a diffusers folder and one single file in the original layout (what ComfyUI and A1111 load)."""
    from ssdxl.models.convert import convert_model

    convert_model(source, destination, dtype=dtype, allow_pickle=allow_pickle)
    typer.echo(f"wrote {destination}")


# Subcommands that live in their own modules, as "name": "module:attribute". The attribute is a
# command function (its ``command_class`` attribute, if any, is the click command class) or a typer.Typer
# group. Imported when the CLI starts, so they stay cheap to import.
SUBCOMMANDS = {
    "train": "ssdxl.cli.train:train",
    "serve": "ssdxl.cli.serve:serve",
    "worker": "ssdxl.cli.serve:worker",
    "keys": "ssdxl.cli.serve:keys",
    "eval": "ssdxl.cli.evaluate:app",
    "distill": "ssdxl.cli.distill:app",
    "finetune": "ssdxl.cli.finetune:app",
    "bench": "ssdxl.cli.bench:bench",
    "loras": "ssdxl.cli.adapters:loras",
    "embeddings": "ssdxl.cli.adapters:embeddings",
    "export": "ssdxl.cli.bench:export_app",
    "upscale": "ssdxl.cli.upscale:upscale",
    "preprocess": "ssdxl.cli.preprocess:preprocess",
    "compare": "ssdxl.cli.compare:compare",
}


def register_subcommands() -> None:
    import importlib

    for name, target in SUBCOMMANDS.items():
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        if isinstance(command, typer.Typer):
            for info in command.registered_commands:
                info.callback = user_errors(info.callback)
            app.add_typer(command, name=name)
        else:
            app.command(name, cls=getattr(command, "command_class", None))(user_errors(command))


register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
