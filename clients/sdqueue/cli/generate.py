"""`sdqueue generate`, `img2img` and `inpaint`: send one request, follow its progress, save and list its images."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from sdqueue.cli._adapter_options import adapter_entries, add_adapter_options, parse_adapter_options
from sdqueue.cli.progress import follow_job
from sdqueue.client import SdqueueClient, UsageError, describe_saved_images, new_job_id, save_images
from sdqueue.config import load_settings
from sdqueue.contracts import SCHEMA_VERSION, GenerationRequest, HiresFix, InitImageData, InitImageKey, Mode

InputImage = InitImageKey | InitImageData


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `generate` (txt2img), `img2img` and `inpaint`."""
    generate = commands.add_parser("generate", parents=[_generation_options()], help="txt2img: prompt to image")
    generate.add_argument("prompt")
    generate.add_argument("--hires-scale", type=float, help="hires fix: upscale by this factor (1-4), then refine")
    generate.add_argument("--hires-steps", type=int, help="hires fix: steps of the refining pass (with --hires-scale)")
    generate.add_argument("--hires-strength", type=float, help="hires fix: how much the refining pass changes (0.5)")
    generate.set_defaults(handler=lambda args: asyncio.run(generate_images(args, mode="txt2img")))
    img2img = commands.add_parser("img2img", parents=[_image_options()], help="img2img: image + prompt to image")
    img2img.add_argument("init", type=Path, help="init image (PNG, JPEG or WebP)")
    img2img.add_argument("prompt")
    img2img.add_argument("--strength", type=float, default=0.75)
    img2img.set_defaults(handler=lambda args: asyncio.run(generate_images(args, mode="img2img")))
    inpaint = commands.add_parser("inpaint", parents=[_image_options()], help="inpaint: repaint an image's masked part")
    inpaint.add_argument("init", type=Path, help="init image (PNG, JPEG or WebP)")
    inpaint.add_argument("mask", type=Path, help="mask, the init image's size: white is repainted, black is kept")
    inpaint.add_argument("prompt")
    inpaint.add_argument("--strength", type=float, help="how much the masked part changes (default: 1.0)")
    inpaint.add_argument("--mask-blur", type=int, help="pixels to soften the mask's edge by (0-64, default: 0)")
    inpaint.set_defaults(handler=lambda args: asyncio.run(generate_images(args, mode="inpaint")))


def _image_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False, parents=[_generation_options()])
    options.add_argument("--inline", action="store_true", help="send the images in the request instead of the bucket")
    return options


def _generation_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-o", "--output", type=Path, help="where to write the image (default: <job_id>.<ext>)")
    options.add_argument("--model", default="default", help="model alias (default: default)")
    # Left unset, these come from the model's defaults on the worker (else the contract's: 512x512, 25, 7.5).
    options.add_argument("--negative", help="negative prompt")
    options.add_argument("--width", type=int)
    options.add_argument("--height", type=int)
    options.add_argument("--steps", type=int)
    options.add_argument("--guidance", type=float, help="guidance scale")
    options.add_argument("--seed", type=int, help="seed (default: derived from the job id)")
    options.add_argument("--num-images", type=int, default=1)
    options.add_argument("--scheduler", help="scheduler name, e.g. euler, dpmpp_2m")
    options.add_argument("--format", dest="output_format", choices=("png", "webp", "jpeg"), default="png")
    options.add_argument("--job-id", help="job id (default: a fresh one)")
    options.add_argument("--subject", default=getpass.getuser(), help="token subject (default: your user name)")
    options.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    options.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="draw a progress bar on stderr (default: only when stderr is a terminal)",
    )
    options.add_argument("--previews", action="store_true", help="ask the worker for live previews while it runs")
    options.add_argument("--preview-file", type=Path, help="with --previews: keep the latest preview (WebP) here")
    add_adapter_options(options)
    return options


async def generate_images(args: argparse.Namespace, *, mode: Mode) -> int:
    """Submit the request, draw its progress on stderr, save its images and print where they are on stdout.

    Raises:
        UsageError: the options do not make a valid request.
        JobFailed, WaitTimeout, UnroutableRequest, RequestRefused, BrokerUnavailable, StorageUnavailable.
    """
    if args.preview_file is not None and not args.previews:
        raise UsageError("--preview-file needs --previews")
    adapter_options = parse_adapter_options(args)
    settings = load_settings()
    job_id = args.job_id or new_job_id()
    console = Console(stderr=True)
    is_shown = console.is_terminal if args.progress is None else args.progress
    async with SdqueueClient(settings, subject=args.subject) as client:
        images = await _input_images(client, args, job_id=job_id)
        adapters = await adapter_entries(client, adapter_options, model=args.model)
        await client.submit(request_from_args(args, job_id=job_id, mode=mode, images=images, adapters=adapters))
        event = await follow_job(
            client.events(job_id, timeout_s=args.timeout),
            console=console,
            is_shown=is_shown,
            preview_file=args.preview_file,
        )
        paths = await save_images(client, event, output=args.output)
    print(describe_saved_images(event, paths))
    return 0


def request_from_args(
    args: argparse.Namespace,
    *,
    job_id: str,
    mode: Mode,
    images: dict[str, InputImage],
    adapters: list[dict[str, object]] | None = None,
) -> GenerationRequest:
    """Build the wire request from command-line options; options not given are left out of the body.

    Raises:
        UsageError: the options do not make a valid request (naming the first problem).
    """
    fields = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "mode": mode,
        "model": args.model,
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "num_images": args.num_images,
        "scheduler": args.scheduler,
        "strength": getattr(args, "strength", None),
        "mask_blur": getattr(args, "mask_blur", None),
        "hires": _hires(args),
        "previews": args.previews or None,
        "output_format": args.output_format,
        "adapters": adapters or None,
        **images,
    }
    try:
        return GenerationRequest.model_validate({name: value for name, value in fields.items() if value is not None})
    except ValidationError as exc:
        raise UsageError(f"invalid request: {_first_problem(exc)}") from exc


def _hires(args: argparse.Namespace) -> HiresFix | None:
    scale, steps, strength = (getattr(args, name, None) for name in ("hires_scale", "hires_steps", "hires_strength"))
    if scale is None and steps is None and strength is None:
        return None
    if scale is None or steps is None:
        raise UsageError("the hires fix needs both --hires-scale and --hires-steps")
    try:
        return HiresFix.model_validate(
            {"scale": scale, "steps": steps} | ({} if strength is None else {"strength": strength})
        )
    except ValidationError as exc:
        raise UsageError(f"invalid hires fix: {_first_problem(exc)}") from exc


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


async def _input_images(client: SdqueueClient, args: argparse.Namespace, *, job_id: str) -> dict[str, InputImage]:
    """The request's `init_image` and `mask_image` (those the command takes), uploaded unless `--inline`."""
    images: dict[str, InputImage] = {}
    for field, path in (("init_image", getattr(args, "init", None)), ("mask_image", getattr(args, "mask", None))):
        if path is not None:
            images[field] = await _input_image(client, path, field=field, job_id=job_id, inline=args.inline)
    return images


async def _input_image(client: SdqueueClient, path: Path, *, field: str, job_id: str, inline: bool) -> InputImage:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if inline:
        return InitImageData(data=base64.b64encode(data).decode("ascii"))
    extension = path.suffix.lstrip(".").lower() or "png"
    upload = client.upload_mask_image if field == "mask_image" else client.upload_init_image
    return await upload(job_id, data, extension=extension)
