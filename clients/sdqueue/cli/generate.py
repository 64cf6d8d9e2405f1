"""`sdqueue generate` and `sdqueue img2img`: send one request, follow its progress, save and list its images."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
from pathlib import Path

from rich.console import Console

from sdqueue.cli.progress import follow_job
from sdqueue.client import SdqueueClient, describe_saved_images, new_job_id, save_images
from sdqueue.config import load_settings
from sdqueue.contracts import SCHEMA_VERSION, GenerationRequest, InitImageData, InitImageKey


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `generate` (txt2img) and `img2img`."""
    generate = commands.add_parser("generate", parents=[_generation_options()], help="txt2img: prompt to image")
    generate.add_argument("prompt")
    generate.set_defaults(handler=lambda args: asyncio.run(generate_images(args, init_path=None)))
    img2img = commands.add_parser("img2img", parents=[_generation_options()], help="img2img: image + prompt to image")
    img2img.add_argument("init", type=Path, help="init image (PNG, JPEG or WebP)")
    img2img.add_argument("prompt")
    img2img.add_argument("--strength", type=float, default=0.75)
    img2img.add_argument("--inline", action="store_true", help="send the image in the request instead of the bucket")
    img2img.set_defaults(handler=lambda args: asyncio.run(generate_images(args, init_path=args.init)))


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
    return options


async def generate_images(args: argparse.Namespace, *, init_path: Path | None) -> int:
    """Submit the request, draw its progress on stderr, save its images and print where they are on stdout.

    Raises:
        JobFailed, WaitTimeout, UnroutableRequest, RequestRefused, BrokerUnavailable, StorageUnavailable.
    """
    settings = load_settings()
    job_id = args.job_id or new_job_id()
    console = Console(stderr=True)
    is_shown = console.is_terminal if args.progress is None else args.progress
    async with SdqueueClient(settings, subject=args.subject) as client:
        init = await _init_image(client, init_path, job_id=job_id, inline=getattr(args, "inline", False))
        await client.submit(request_from_args(args, job_id=job_id, init=init))
        event = await follow_job(client.events(job_id, timeout_s=args.timeout), console=console, is_shown=is_shown)
        paths = await save_images(client, event, output=args.output)
    print(describe_saved_images(event, paths))
    return 0


def request_from_args(
    args: argparse.Namespace, *, job_id: str, init: InitImageKey | InitImageData | None
) -> GenerationRequest:
    """Build the wire request from command-line options; options not given are left out of the body."""
    fields = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "mode": "img2img" if init is not None else "txt2img",
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
        "strength": args.strength if init is not None else None,
        "init_image": init,
        "output_format": args.output_format,
    }
    return GenerationRequest.model_validate({name: value for name, value in fields.items() if value is not None})


async def _init_image(
    client: SdqueueClient, path: Path | None, *, job_id: str, inline: bool
) -> InitImageKey | InitImageData | None:
    if path is None:
        return None
    data = await asyncio.to_thread(path.read_bytes)
    if inline:
        return InitImageData(data=base64.b64encode(data).decode("ascii"))
    extension = path.suffix.lstrip(".").lower() or "png"
    return await client.upload_init_image(job_id, data, extension=extension)
