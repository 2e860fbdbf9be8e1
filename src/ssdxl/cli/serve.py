"""``ssdxl serve``, ``ssdxl worker`` and ``ssdxl keys``: the HTTP server, its scale-out workers, its API keys.

Imported when the CLI starts, so the server's own imports (FastAPI, uvicorn, RQ) wait until a
command runs.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from ssdxl.errors import UserError
from ssdxl.sampling.limits import MAX_SAMPLES, MAX_SIDE, MAX_STEPS
from ssdxl.server import PREVIEW_EVERY

DataOption = Annotated[
    Path | None, typer.Option("--data", help="Job store and images folder (default ~/.local/share/ssdxl/server).")
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="SSDXL_STORE",
        help="postgresql://USER:PASSWORD@HOST/DB: jobs, keys and images in PostgreSQL, shared by servers and workers "
        "on any machine (default: SQLite in --data). Also read from $SSDXL_STORE.",
    ),
]
ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="NAME=PATH (folder, .safetensors or repo id); repeatable. Built-ins are added."),
]
RefinerOption = Annotated[
    list[str] | None, typer.Option("--refiner", help="NAME=PATH: a refiner for the registered model NAME; repeatable.")
]
LoraDirOption = Annotated[
    list[Path] | None,
    typer.Option("--lora-dir", help="Folder of LoRAs clients may name (loras field, <lora:name:w>); repeatable."),
]
EmbeddingDirOption = Annotated[
    list[Path] | None,
    typer.Option("--embedding-dir", help="Folder of embeddings prompts may name; repeatable."),
]
ControlnetDirOption = Annotated[
    list[Path] | None,
    typer.Option("--controlnet-dir", help="Folder of ControlNets / T2I-Adapters clients may name; repeatable."),
]
UpscalerDirOption = Annotated[
    list[Path] | None,
    typer.Option("--upscaler-dir", help="Folder of upscaler models (hires fix, extras) clients may name; repeatable."),
]
IpAdapterDirOption = Annotated[
    list[Path] | None,
    typer.Option("--ip-adapter-dir", help="Folder of IP-Adapter files (image encoder beside them); repeatable."),
]
StylesFileOption = Annotated[
    list[Path] | None,
    typer.Option("--styles-file", help="A1111 styles.csv (or JSON) adding prompt styles clients may name; repeatable."),
]
ModelVaeOption = Annotated[
    list[str] | None,
    typer.Option("--model-vae", help="NAME=PATH: the VAE (folder or file) model NAME decodes with; repeatable."),
]
ModelTinyVaeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model-tiny-vae",
        help="NAME=PATH: a tiny VAE (TAESD / TAESDXL folder or file) for model NAME's previews and fast_decode "
        "requests; built-in models have their own; repeatable.",
    ),
]
MaxBatchOption = Annotated[int, typer.Option("--max-batch", help="Images per UNet batch.")]
PreviewEveryOption = Annotated[
    int,
    typer.Option(
        "--preview-every", min=0, help="Steps between a running job's latent previews (and its last step); 0: never."
    ),
]
MaxLoadedOption = Annotated[
    int | None,
    typer.Option(
        "--max-loaded-models",
        min=1,
        help="Models kept loaded at once; the least recently used is unloaded first (default: no limit).",
    ),
]
ModelLoraOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model-lora",
        help="NAME=PATH[:WEIGHT]: a LoRA every job for model NAME gets (e.g. an LCM LoRA); repeatable.",
    ),
]


def _config(
    data: Path | None,
    model: list[str] | None,
    refiner: list[str] | None,
    lora_dir: list[Path] | None = None,
    embedding_dir: list[Path] | None = None,
    model_lora: list[str] | None = None,
    controlnet_dir: list[Path] | None = None,
    upscaler_dir: list[Path] | None = None,
    ip_adapter_dir: list[Path] | None = None,
    styles_file: list[Path] | None = None,
    model_vae: list[str] | None = None,
    model_tiny_vae: list[str] | None = None,
    **settings,
):
    from ssdxl.server.config import ServerConfig, default_data_dir, parse_model_loras, parse_specs

    return ServerConfig(
        data_dir=data or default_data_dir(),
        models=parse_specs(model or [], "--model"),
        refiners=parse_specs(refiner or [], "--refiner"),
        lora_dirs=list(lora_dir or []),
        embedding_dirs=list(embedding_dir or []),
        model_loras=parse_model_loras(model_lora or []),
        controlnet_dirs=list(controlnet_dir or []),
        upscaler_dirs=list(upscaler_dir or []),
        ip_adapter_dirs=list(ip_adapter_dir or []),
        styles_files=list(styles_file or []),
        model_vaes=parse_specs(model_vae or [], "--model-vae"),
        model_tiny_vaes=parse_specs(model_tiny_vae or [], "--model-tiny-vae"),
        **settings,
    )


def serve(
    model: ModelOption = None,
    refiner: RefinerOption = None,
    lora_dir: LoraDirOption = None,
    embedding_dir: EmbeddingDirOption = None,
    model_lora: ModelLoraOption = None,
    controlnet_dir: ControlnetDirOption = None,
    upscaler_dir: UpscalerDirOption = None,
    ip_adapter_dir: IpAdapterDirOption = None,
    styles_file: StylesFileOption = None,
    model_vae: ModelVaeOption = None,
    model_tiny_vae: ModelTinyVaeOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    data: DataOption = None,
    store: StoreOption = None,
    redis: Annotated[
        str | None, typer.Option("--redis", help="redis://HOST:PORT: jobs run in `ssdxl worker` processes.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for the engine.")] = None,
    max_batch: MaxBatchOption = MAX_SAMPLES,
    preview_every: PreviewEveryOption = PREVIEW_EVERY,
    max_loaded_models: MaxLoadedOption = None,
    max_side: Annotated[
        int, typer.Option("--max-side", help="Largest image side a request may ask for (only lowers the limit).")
    ] = MAX_SIDE,
    max_steps: Annotated[
        int, typer.Option("--max-steps", help="Most steps a request may ask for (only lowers the limit).")
    ] = MAX_STEPS,
    max_samples: Annotated[
        int, typer.Option("--max-samples", help="Most images one request may ask for (only lowers the limit).")
    ] = MAX_SAMPLES,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body accepted.")] = 20.0,
    public_url: Annotated[
        str | None, typer.Option("--public-url", help="Base of links handed out (behind a proxy).")
    ] = None,
    reset_store: Annotated[
        bool,
        typer.Option(
            "--reset-store",
            help="If the job store is damaged, move it aside (ssdxl.db.broken-<timestamp>) and start an empty one; "
            "a healthy store is kept.",
        ),
    ] = False,
) -> None:
    """Serve the Segmind, AUTOMATIC1111 (with sd-webui-controlnet's) and OpenAI APIs, the jobs API and a web page;
    LoRAs, embeddings, ControlNets, upscalers and IP-Adapters from --lora-dir / --embedding-dir / --controlnet-dir /
    --upscaler-dir / --ip-adapter-dir by name; prompt styles, built-in and from --styles-file."""
    import uvicorn

    from ssdxl.sampling.limits import RequestLimits
    from ssdxl.server.app import create_app

    config = _config(
        data,
        model,
        refiner,
        lora_dir,
        embedding_dir,
        model_lora,
        controlnet_dir,
        upscaler_dir,
        ip_adapter_dir,
        styles_file,
        model_vae,
        model_tiny_vae,
        redis_url=redis,
        device=device,
        dtype=dtype,
        threads=threads,
        max_batch=max_batch,
        preview_every=preview_every,
        max_loaded_models=max_loaded_models,
        limits=RequestLimits(max_side, max_steps, max_samples),
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        public_url=public_url,
        reset_store=reset_store,
        store=store,
    )
    app = create_app(config)  # a damaged store: StoreDamaged, one line and exit code 2
    typer.echo(f"ssdxl serving {', '.join(app.state.service.registry.names())} on http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def worker(
    redis: Annotated[str, typer.Option("--redis", help="redis://HOST:PORT, as given to `ssdxl serve --redis`.")],
    model: ModelOption = None,
    refiner: RefinerOption = None,
    lora_dir: LoraDirOption = None,
    embedding_dir: EmbeddingDirOption = None,
    model_lora: ModelLoraOption = None,
    controlnet_dir: ControlnetDirOption = None,
    upscaler_dir: UpscalerDirOption = None,
    ip_adapter_dir: IpAdapterDirOption = None,
    model_vae: ModelVaeOption = None,
    model_tiny_vae: ModelTinyVaeOption = None,
    data: DataOption = None,
    store: StoreOption = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    max_batch: MaxBatchOption = MAX_SAMPLES,
    preview_every: PreviewEveryOption = PREVIEW_EVERY,
    max_loaded_models: MaxLoadedOption = None,
    max_side: Annotated[
        int, typer.Option("--max-side", help="As given to `ssdxl serve --max-side` (hires and outpaint sizes).")
    ] = MAX_SIDE,
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queue is empty.")] = False,
) -> None:
    """Run jobs for a server started with --redis; --store must be the server's PostgreSQL (or --data its shared
    folder), and --model, --refiner, --model-lora, --model-vae, --model-tiny-vae, --lora-dir, --embedding-dir,
    --controlnet-dir, --upscaler-dir and --ip-adapter-dir should name what the server's do."""
    from ssdxl.sampling.limits import RequestLimits
    from ssdxl.server.dispatch import RedisNotifier, run_worker
    from ssdxl.server.registry import ModelRegistry
    from ssdxl.server.runner import Runner
    from ssdxl.server.storage import open_data

    config = _config(
        data,
        model,
        refiner,
        lora_dir,
        embedding_dir,
        model_lora,
        controlnet_dir,
        upscaler_dir,
        ip_adapter_dir,
        model_vae=model_vae,
        model_tiny_vae=model_tiny_vae,
        device=device,
        dtype=dtype,
        threads=threads,
        max_batch=max_batch,
        max_loaded_models=max_loaded_models,
        limits=RequestLimits(max_side=max_side),
        store=store,
    )
    jobs, storage = open_data(config)
    registry = ModelRegistry.from_config(config)
    runner = Runner(
        jobs,
        storage,
        registry,
        max_batch=max_batch,
        lease=config.lease,
        threads=threads,
        preview_every=preview_every,
        notifier=RedisNotifier(redis),  # wakes the servers' requests waiting on this worker's jobs
    )
    typer.echo(f"ssdxl worker {runner.worker} serving {', '.join(registry.names())}", err=True)
    run_worker(runner, redis, burst=burst)


keys = typer.Typer(
    help="API keys: once one was added, every request but /health needs one (until `ssdxl keys open`).",
    no_args_is_help=True,
)


def _key_store(data: Path | None, store: str | None):
    from ssdxl.server.auth import KeyStore
    from ssdxl.server.config import default_data_dir
    from ssdxl.server.storage import open_database

    return KeyStore(open_database(data or default_data_dir(), url=store))  # a damaged store is refused, never re-made


@keys.command("add")
def keys_add(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")] = "default",
    rate: Annotated[str | None, typer.Option("--rate", help="Jobs a minute, e.g. 60/min or 2/s.")] = None,
    data: DataOption = None,
    store: StoreOption = None,
) -> None:
    """Make a key and print it (only now: the store keeps its hash)."""
    from ssdxl.server.auth import parse_burst, parse_rate

    limits = (parse_rate(rate), parse_burst(rate)) if rate is not None else (None, None)
    key, token = _key_store(data, store).add(name, *limits)
    typer.echo(token)
    typer.echo(f"key {key.id} ({name}) added; store it now, it cannot be shown again", err=True)


@keys.command("list")
def keys_list(data: DataOption = None, store: StoreOption = None) -> None:
    """Keys by id, name, rate limit and creation time (never the keys themselves)."""
    for key in _key_store(data, store).list():
        rate = f"{key.rate_per_min:g}/min" if key.rate_per_min else "unlimited"
        created = datetime.datetime.fromtimestamp(key.created).isoformat(timespec="seconds")
        typer.echo(f"{key.id}\t{key.name}\t{rate}\t{created}")


@keys.command("remove")
def keys_remove(
    key: Annotated[str, typer.Argument(help="A key id, or a name (removes every key of that name).")],
    data: DataOption = None,
    store: StoreOption = None,
) -> None:
    """Remove a key; requests using it are refused from then on."""
    key_store = _key_store(data, store)
    removed = key_store.remove(key)
    if not removed:
        raise UserError(f"no key {key!r}")
    typer.echo(f"removed {removed} key(s)")
    if not key_store.any():
        typer.echo("no key is left: the server refuses every request until `ssdxl keys add` (or `ssdxl keys open`)")


@keys.command("open")
def keys_open(data: DataOption = None, store: StoreOption = None) -> None:
    """Let the server answer without keys again (only once every key is removed)."""
    _key_store(data, store).open_up()
    typer.echo("keys are no longer required: every request is answered without one")
