"""`sdqueue adapters`: build tiny random adapters offline, upload adapter files to the bucket, and list the workers'
named adapters."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from sdqueue.cli._output import format_table, print_error
from sdqueue.cli.fleet import print_heard
from sdqueue.client.storage import upload_adapter
from sdqueue.config import load_settings
from sdqueue.contracts import WorkerHeartbeat
from sdqueue.storage import make_s3_client


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `adapters tiny`, `adapters put` and `adapters list`."""
    adapters = commands.add_parser("adapters", help="LoRA and embedding files").add_subparsers(
        required=True, metavar="ACTION"
    )
    tiny = adapters.add_parser("tiny", help="build a random adapter for a tiny model (`sdqueue model tiny`)")
    tiny.add_argument("out", type=Path, metavar="OUT.safetensors")
    tiny.add_argument("--model", type=Path, required=True, help="the tiny model's folder (sd1 or sdxl)")
    tiny.add_argument("--kind", choices=("lora", "embedding"), default="lora")
    tiny.add_argument("--format", choices=("peft", "kohya"), default="peft", help="LoRA key layout (default: peft)")
    tiny.add_argument("--rank", type=int, default=4, help="LoRA rank: a larger file (default: 4)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--text-encoder", action="store_true", help="LoRA: also the text encoders' attention projections")
    tiny.add_argument("--no-unet", action="store_true", help="LoRA: no UNet layers (a text-encoder-only LoRA)")
    tiny.set_defaults(handler=build_tiny_adapter)
    put = adapters.add_parser("put", help="upload a safetensors file to adapters/<sha256>.safetensors")
    put.add_argument("file", type=Path)
    put.set_defaults(handler=lambda args: asyncio.run(put_adapter(args.file)))
    listing = adapters.add_parser("list", help="the workers' named adapters, from their heartbeats")
    listing.add_argument("--listen", type=float, default=12.0, help="seconds to listen (default: 12)")
    listing.set_defaults(handler=lambda args: asyncio.run(list_adapters(listen_s=args.listen)))


def build_tiny_adapter(args: argparse.Namespace) -> int:
    """Write a random LoRA or embedding that fits the model at `args.model`, and print its path."""
    from sdqueue.worker.generate.tiny_adapters import build_tiny_embedding, build_tiny_lora

    if args.no_unet and not args.text_encoder:
        return print_error("--no-unet needs --text-encoder: a LoRA needs some layers")
    if args.kind == "embedding":
        print(build_tiny_embedding(args.model, args.out, seed=args.seed))
    else:
        lora = build_tiny_lora(
            args.model,
            args.out,
            seed=args.seed,
            fmt=args.format,
            rank=args.rank,
            unet=not args.no_unet,
            text_encoder=args.text_encoder,
        )
        print(lora)
    return 0


async def put_adapter(file: Path) -> int:
    """Upload one adapter file and print its key and sha256, the two fields a request's adapter entry needs."""
    if file.suffix != ".safetensors":
        return print_error("only .safetensors files are served as adapters")
    s3 = load_settings().s3
    stored = await upload_adapter(make_s3_client(s3), s3=s3, data=await asyncio.to_thread(file.read_bytes))
    print(f"key {stored.key}\nsha256 {stored.sha256}")
    return 0


async def list_adapters(*, listen_s: float) -> int:
    """Print the named adapters live workers announce; exit status 1 when no worker was heard from."""
    return await print_heard(format_adapters, listen_s=listen_s)


def format_adapters(fleet: Sequence[WorkerHeartbeat]) -> str:
    """A table of named adapters: name, kind, size, sha256 (what `--lora NAME@SHA256` pins) and who holds it."""
    if not fleet:
        return "no worker heard from"
    named = sorted({adapter for heartbeat in fleet for adapter in heartbeat.adapters}, key=lambda a: (a.name, a.sha256))
    if not named:
        return "no worker holds named adapters"
    rows = [["NAME", "KIND", "BYTES", "SHA256", "HELD BY"]] + [
        [
            adapter.name,
            adapter.kind,
            str(adapter.bytes),
            adapter.sha256,
            ",".join(h.worker for h in fleet if adapter in h.adapters),
        ]
        for adapter in named
    ]
    return format_table(rows)
